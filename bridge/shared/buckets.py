"""Token buckets in Redis (SPEC 10): every instance counts a key in one bucket.

The bucket is `bridge.policy.buckets`' GCRA number, the moment the bucket is full again, kept
under ``bridge:rl:<key>`` in integer microseconds. One Lua script reads it, decides and
writes it back, so a take is one atomic round trip however many instances ask at once, and
"exactly burst, then rate a second" holds across all of them. The script reads the time from
Redis (``TIME``), not from the caller, so instances whose clocks disagree still agree on the
bucket; and it stores the number with ``PX`` set to the moment the bucket is full again, so a
key expires with its bucket (a full bucket and a missing key mean the same).

While the link is down (`bridge.shared.link`), takes are answered by this instance's own
`MemoryBuckets`: with N instances, a key may then pass up to N times its limit. The outage is
logged once by the link, never per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from redis.exceptions import NoScriptError

from bridge.policy.buckets import Decision, MemoryBuckets
from bridge.shared.link import FAILURES, RedisLink

PREFIX: Final = "bridge:rl:"
_US: Final = 1_000_000

# KEYS[1]: the bucket; ARGV[1]: microseconds per token; ARGV[2]: burst.
# Returns {1, backlog} when allowed, {0, backlog, retry}, in microseconds: backlog is how long
# until the bucket is full again, retry how long until the next token. Lua numbers are doubles:
# exact for integers below 2^53 (Unix time in microseconds is about 2^51), but tostring would
# print them with 14 digits, so the number is written with %d.
_TAKE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local when = tonumber(redis.call('GET', KEYS[1]) or 0)
local backlog = 0
if when > now then backlog = when - now end
local allowance = (tonumber(ARGV[2]) - 1) * interval
if backlog > allowance then
  return {0, backlog, backlog - allowance}
end
backlog = backlog + interval
redis.call('SET', KEYS[1], string.format('%d', now + backlog),
           'PX', string.format('%d', math.ceil(backlog / 1000)))
return {1, backlog}
"""


class RedisBuckets:
    """A `bridge.policy.buckets.BucketStore` in Redis, with this instance's memory as fallback.

    A take is one EVALSHA. While one is out, the takes that arrive wait in a queue and then go
    out together, as one pipeline (one round trip, each script still atomic), so a busy
    instance pays redis-py's per-round-trip cost once per batch instead of once per request,
    and an idle one pays no queueing at all.
    """

    __slots__ = ("_draining", "_queue", "_script", "_sending", "fallback", "link")

    def __init__(self, link: RedisLink, fallback: MemoryBuckets | None = None) -> None:
        self.link = link
        self.fallback = fallback if fallback is not None else MemoryBuckets()
        self._script = link.client.register_script(_TAKE)  # EVALSHA; loads it on NOSCRIPT
        self._sending = False  # a take's round trip, or a batch's, is out
        self._queue: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly

    async def take(self, key: str, rate: float, burst: int) -> Decision:
        link = self.link
        if link.usable:
            interval = int(_US / rate) or 1
            try:
                answer = await self._ask(PREFIX + key, interval, burst)
            except FAILURES as exc:
                link.failed(exc)
            else:
                if answer is None:  # queued behind a take that failed
                    return self.fallback.take_now(key, rate, burst)
                link.succeeded()
                backlog = int(answer[1])
                if answer[0]:
                    remaining = (burst * interval - backlog) // interval
                    return True, remaining, backlog / _US, 0.0
                return False, 0, backlog / _US, int(answer[2]) / _US
        return self.fallback.take_now(key, rate, burst)

    async def _ask(self, key: str, interval: int, burst: int) -> list[int] | None:
        """The script's answer: at once when nothing is out, else with the next batch (None
        when the round trip before it failed: a hung Redis costs the queue one timeout, not
        two)."""
        if self._sending:
            future: asyncio.Future[list[int] | None] = asyncio.get_running_loop().create_future()
            self._queue.append((key, interval, burst, future))
            return await future
        self._sending = True
        try:
            answer: list[int] = await self._script(keys=(key,), args=(interval, burst))
        finally:
            self._sending = False
            if self._queue:
                self._sending = True
                self._draining = asyncio.get_running_loop().create_task(self._drain())
        return answer

    async def _drain(self) -> None:
        """Send the queued takes as pipelines until none are left."""
        batch: list[_Waiting] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                answers: list[Any] = [None] * len(batch)  # the take before them failed
                if self.link.up:
                    try:
                        answers = await self._pipeline(batch)
                    except Exception as exc:  # each waiting take fails as its own call would
                        answers = [exc] * len(batch)
                for (_, _, _, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its caller went away
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:  # cancelled (the app stops): no take is left waiting
            for _, _, _, future in batch + self._queue:
                future.cancel()
            self._queue = []
            self._sending = False
            self._draining = None

    async def _pipeline(self, batch: list[_Waiting]) -> list[Any]:
        """One round trip for the batch; again, once, if Redis had forgotten the script."""
        answers = await self._send(batch)
        if any(isinstance(answer, NoScriptError) for answer in answers):
            await self.link.client.script_load(_TAKE)
            answers = await self._send(batch)
        return answers

    async def _send(self, batch: list[_Waiting]) -> list[Any]:
        pipe = self.link.client.pipeline(transaction=False)
        for key, interval, burst, _ in batch:
            pipe.evalsha(self._script.sha, 1, key, interval, burst)
        return await pipe.execute(raise_on_error=False)  # a failed take is its exception


# A take waiting for the next batch: key, interval, burst, and where its answer goes.
_Waiting = tuple[str, int, int, "asyncio.Future[list[int] | None]"]
