"""Unit tests of the Redis token buckets (bridge.shared.buckets) against a real redis-server:
exactly ``burst`` at once then ``rate`` a second, counted once by every store on one Redis,
keys that expire with their buckets, and this instance's memory while Redis is gone or hung.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator

import pytest

from bridge.policy.buckets import BucketStore, MemoryBuckets
from bridge.shared.buckets import PREFIX, RedisBuckets
from bridge.shared.link import TIMEOUT, RedisLink
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

SLOW = 0.01  # tokens a second: no refill within a test


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, retry=0.1)
    yield link
    await link.close()


async def test_redis_buckets_is_a_store(link: RedisLink) -> None:
    store: BucketStore = RedisBuckets(link)
    assert store is not None


@pytest.mark.parametrize("burst", [1, 2, 5, 50])
async def test_exactly_burst_then_refused(link: RedisLink, burst: int) -> None:
    store = RedisBuckets(link)
    decisions = [await store.take("k", SLOW, burst) for _ in range(burst + 2)]
    assert [d[0] for d in decisions] == [True] * burst + [False] * 2
    assert [d[1] for d in decisions] == [*range(burst - 1, -1, -1), 0, 0]


async def test_decisions_read_like_memory(link: RedisLink) -> None:
    """The same numbers as MemoryBuckets: reset in seconds, retry after the next token."""
    store = RedisBuckets(link)
    allowed, remaining, reset, retry = await store.take("k", 2.0, 3)
    assert (allowed, remaining, retry) == (True, 2, 0.0)
    assert reset == pytest.approx(0.5)
    for _ in range(2):
        await store.take("k", 2.0, 3)
    allowed, remaining, reset, retry = await store.take("k", 2.0, 3)
    assert (allowed, remaining) == (False, 0)
    assert reset == pytest.approx(1.5, abs=0.05)
    assert retry == pytest.approx(0.5, abs=0.05)


async def test_refills_at_rate(link: RedisLink) -> None:
    store = RedisBuckets(link)
    rate = 4.0  # a token every 250 ms
    assert [(await store.take("k", rate, 2))[0] for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0.26)
    assert [(await store.take("k", rate, 2))[0] for _ in range(2)] == [True, False]
    await asyncio.sleep(0.51)
    assert [(await store.take("k", rate, 2))[0] for _ in range(3)] == [True, True, False]


async def test_keys_expire_with_their_buckets(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisBuckets(link)
    for _ in range(3):
        await store.take("k", 10.0, 3)  # 300 ms until full again
    client = redis_server.client()
    try:
        pttl = await client.pttl(PREFIX + "k")
        assert 200 < pttl <= 300
        await asyncio.sleep(0.35)
        assert await client.exists(PREFIX + "k") == 0
    finally:
        await client.aclose()
    assert (await store.take("k", 10.0, 3))[:2] == (True, 2)  # a missing key is a full bucket


async def test_instances_share_one_bucket(redis_server: RedisServer) -> None:
    """Two stores on two links (as two instances), each taking from two tasks at once: burst
    in all."""
    links = [RedisLink(redis_server.url) for _ in range(2)]
    try:
        stores = [RedisBuckets(link) for link in links]

        async def taker(store: RedisBuckets) -> list[bool]:
            return [(await store.take("shared", SLOW, 20))[0] for _ in range(15)]

        passed = await asyncio.gather(*(taker(stores[i % 2]) for i in range(4)))
        assert all(link.up for link in links)  # Redis answered every take: no fallback
        assert sum(map(sum, passed)) == 20
        assert (await stores[0].take("other", SLOW, 20))[0]  # keys are separate buckets
    finally:
        for link in links:
            await link.close()


async def test_takes_made_at_once_go_out_together_and_count_exactly(
    link: RedisLink, redis_server: RedisServer
) -> None:
    """Takes that arrive while one is out are sent as one pipeline: still exactly burst."""
    store = RedisBuckets(link)
    client = redis_server.client()
    try:
        await store.take("other", SLOW, 1)  # the script loaded (the first EVALSHA is refused)
        await client.config_resetstat()
        decisions = await asyncio.gather(*(store.take("k", SLOW, 10) for _ in range(40)))
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    assert sum(d[0] for d in decisions) == 10
    assert sorted(d[1] for d in decisions if d[0]) == list(range(10))
    assert stats["cmdstat_evalsha"]["calls"] == 40  # one script run a take, in few round trips


async def test_a_batch_when_redis_dies_answers_from_memory(
    link: RedisLink, redis_server: RedisServer
) -> None:
    store = RedisBuckets(link)
    await store.take("warm", SLOW, 3)  # a connection in the pool, to a server about to die
    await redis_server.kill()
    decisions = await asyncio.gather(*(store.take("k", SLOW, 5) for _ in range(20)))
    assert sum(d[0] for d in decisions) == 5  # this instance's own bucket
    assert not link.up


@pytest.mark.parametrize("at_once", [1, 20], ids=["alone", "batch"])
async def test_takes_after_redis_forgot_the_script(
    link: RedisLink, redis_server: RedisServer, at_once: int
) -> None:
    """EVALSHA after Redis forgot its scripts (SCRIPT FLUSH, a restart): loaded again."""
    store = RedisBuckets(link)
    await store.take("k", SLOW, 30)
    client = redis_server.client()
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    decisions = await asyncio.gather(*(store.take("k", SLOW, 30) for _ in range(at_once)))
    assert all(d[0] for d in decisions) and link.up
    assert sorted(d[1] for d in decisions) == list(range(29 - at_once, 29))


async def test_redis_killed_falls_back_to_memory_and_logs_once(
    link: RedisLink, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisBuckets(link, MemoryBuckets())
    assert (await store.take("k", SLOW, 3))[:2] == (True, 2)
    await redis_server.kill()
    caplog.set_level(logging.WARNING, "bridge.shared")
    started = time.monotonic()
    decisions = [await store.take("k", SLOW, 3) for _ in range(50)]
    assert time.monotonic() - started < TIMEOUT * 2  # connection refused: no wait at all
    assert [d[0] for d in decisions] == [True] * 3 + [False] * 47  # this instance's own bucket
    outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outages) == 1

    await redis_server.start()  # its data kept: the shared bucket holds 2 tokens
    await asyncio.sleep(0.15)  # past the link's retry pause
    assert (await store.take("k", SLOW, 3))[:2] == (True, 1)
    assert (await store.take("k", SLOW, 3))[:2] == (True, 0)
    assert not (await store.take("k", SLOW, 3))[0]
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1


async def test_redis_hung_answers_within_the_timeout(
    link: RedisLink, redis_server: RedisServer
) -> None:
    """A Redis that accepts but never answers (SIGSTOP) costs one timeout per retry pause."""
    store = RedisBuckets(link)
    await store.take("k", SLOW, 3)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        first = await asyncio.gather(*(store.take("k", SLOW, 3) for _ in range(10)))
        # One timeout for them all: the takes queued behind the first are not sent after it.
        assert time.monotonic() - started < TIMEOUT * 1.8
        assert [d[0] for d in first] == [True] * 3 + [False] * 7  # this instance's memory
        started = time.monotonic()
        for _ in range(20):
            await store.take("k", SLOW, 3)
        assert time.monotonic() - started < 0.05  # inside the pause: no Redis call at all
        assert not link.up
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await asyncio.sleep(0.15)
    allowed, remaining, _, _ = await store.take("k", SLOW, 3)
    # The take that timed out was sent: Redis may run it once it wakes, as with any timeout.
    assert allowed and remaining in (0, 1)
    assert link.up
