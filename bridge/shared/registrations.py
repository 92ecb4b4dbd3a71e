"""Registrations shared through one Redis (SPEC 10): every instance serves what Redis holds.

Keys, all under ``bridge:protos:`` in the URL's database:

- ``registrations``, a hash: registration name -> its JSON (as a folder store's file holds
  it), and the field ``:epoch`` (never a registration's name): a random id set when an instance
  first finds the hash without one. In the same hash, so it is lost (evicted, flushed) with
  the registrations, never apart from them;
- ``version``, a counter raised by every write in the same Lua script, so a change is never
  seen without its count, and two writes of one name are ordered: the last one wins;
- the channel ``changes``, where each write publishes the new version.

An instance hears the channel (a connection of its own), reads the version at least every
`POLL` seconds in case an announcement was lost, and reads everything again after an outage.
An epoch other than the one last read means Redis lost its data (restarted empty, flushed):
the instance then writes back what it serves and Redis no longer holds (``HSETNX``, so newer
writes made since the loss win), so no registration is dropped because the store forgot it.
With the epoch unchanged, an entry that is gone was removed through another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Final, TypeVar

from bridge.registry.store import Listing, Registration, StoreUnavailable
from bridge.shared.link import FAILURES, RedisLink

log = logging.getLogger("bridge.registry")

PREFIX: Final = "bridge:protos:"
REGISTRATIONS: Final = PREFIX + "registrations"
VERSION: Final = PREFIX + "version"
EPOCH: Final = ":epoch"  # a field of REGISTRATIONS; a registration's name starts otherwise
CHANGES: Final = PREFIX + "changes"
KEYS: Final = [REGISTRATIONS, VERSION]
POLL: Final = 3.0  # seconds: the longest an instance goes without reading the version
CALL_TIMEOUT: Final = 0.8  # seconds, one use of Redis with its retries: an admin call's bound
RELISTEN: Final = 0.5  # seconds between tries to hear the channel again


def _lua(body: str) -> str:
    """A script's text, with EPOCH defined in it."""
    return f"local EPOCH = '{EPOCH}'\n{body}"


# The whole hash, [name, json, ...] with the epoch among them, which is made if missing.
_READ: Final = _lua("""
redis.call('HSETNX', KEYS[1], EPOCH, ARGV[1])
return redis.call('HGETALL', KEYS[1])
""")
_MARKER: Final = _lua("return {redis.call('HGET', KEYS[1], EPOCH), redis.call('GET', KEYS[2])}")
# One registration written (ARGV[3] its JSON) or removed (ARGV[3] empty), counted and
# announced; -1 without a change when the store's epoch is not the one the writer read.
_WRITE: Final = _lua("""
if redis.call('HGET', KEYS[1], EPOCH) ~= ARGV[1] then return -1 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], version)
return version
""")
# Registrations written back (ARGV[3..] as name, json pairs) unless the store holds the name;
# the number written, or -1 when the epoch moved again since it was read.
_WRITE_BACK: Final = _lua("""
if redis.call('HGET', KEYS[1], EPOCH) ~= ARGV[1] then return -1 end
local written = 0
for i = 3, #ARGV, 2 do written = written + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
if written > 0 then redis.call('PUBLISH', ARGV[2], redis.call('INCR', KEYS[2])) end
return written
""")

T = TypeVar("T")


class RedisRegistrations:
    """The `RegistrationStore` of ``protos.store: redis://...``, shared by every instance."""

    def __init__(self, link: RedisLink, *, poll: float = POLL) -> None:
        self.link = link
        self.poll = poll
        self.epoch: bytes | None = None  # the store's epoch as last read in full
        self._reconnects = 0  # part of the marker: a full read follows every return of Redis
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._read = link.client.register_script(_READ)
        self._marker = link.client.register_script(_MARKER)
        self._write = link.client.register_script(_WRITE)
        self._write_back = link.client.register_script(_WRITE_BACK)
        link.on_recovery.append(self._recovered)

    @property
    def where(self) -> str:
        return self.link.shown

    async def put(self, registration: Registration) -> None:
        await self._change(registration.name, json.dumps(registration.to_json()))

    async def discard(self, name: str) -> None:
        await self._change(name, "")

    async def _change(self, name: str, data: str) -> None:
        """Write one change unless the store was reset since it was last read in full."""
        args: list[bytes | str] = [self.epoch or b"", name, data, CHANGES]
        if await self._call(lambda: self._write(keys=KEYS, args=args)) == -1:
            self._wake.set()  # the watcher reads it in full and writes back what it lost
            raise StoreUnavailable(
                f"protos.store {self.where} is being caught up with (it was reset or was not "
                "reachable at start); the change was not made: try again in a moment"
            )

    async def contents(self, serving: Sequence[Registration]) -> Listing:
        """Every registration Redis holds, after writing back what it lost (see the module)."""
        epoch, stored = await self._contents()
        if epoch != self.epoch:
            missing = [r for r in serving if r.name.encode() not in stored]
            if missing:
                await self._restore(epoch, missing)
                epoch, stored = await self._contents()
            self.epoch = epoch
        return _listing(stored)

    async def _contents(self) -> tuple[bytes, dict[bytes, bytes]]:
        items = await self._call(lambda: self._read(keys=KEYS, args=[secrets.token_hex(8)]))
        stored = dict(zip(items[::2], items[1::2], strict=True))
        return stored.pop(EPOCH.encode()), stored

    async def _restore(self, epoch: bytes, missing: Sequence[Registration]) -> None:
        pairs = [v for r in missing for v in (r.name, json.dumps(r.to_json()))]
        written = await self._call(
            lambda: self._write_back(keys=KEYS, args=[epoch, CHANGES, *pairs])
        )
        if written == -1:
            raise StoreUnavailable(f"protos.store {self.where} was reset again while caught up")
        names = ", ".join(sorted(r.name for r in missing))
        log.warning(
            "protos.store %s lost registrations (reset or restarted empty): wrote back %d of "
            "those this instance serves (%s)", self.where, written, names,
        )  # fmt: skip

    async def marker(self) -> Hashable:
        """The epoch and version, and how many times Redis came back (each forces a read)."""
        epoch, version = await self._call(lambda: self._marker(keys=KEYS))
        return epoch, version, self._reconnects

    async def pause(self, interval: float) -> None:
        """Wait for an announced change, or `poll` seconds (a lost announcement is found)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll):
                await self._wake.wait()
        self._wake.clear()

    async def _listen(self) -> None:
        """Hear the channel on a connection of its own until closed; each message wakes the
        watcher. Blocking reads (read timeouts would end in a reconnection each time)."""
        while True:
            if not self.link.up:  # the watcher's looks at the marker bring the link back
                await asyncio.sleep(RELISTEN)
                continue
            pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await pubsub.subscribe(CHANGES)
                _raise_swallowed_cancellation()
                self._recovered()  # deaf until now: what was announced meanwhile is unknown
                async for _ in pubsub.listen():
                    self._wake.set()
            except FAILURES as exc:
                self.link.failed(exc)
            finally:
                with contextlib.suppress(*FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(RELISTEN)

    def _recovered(self) -> None:
        """Redis is back (for the link or the channel): the marker changes, a full read follows."""
        self._reconnects += 1
        self._wake.set()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One use of Redis, bounded in time; StoreUnavailable while the link is down."""
        if not self.link.usable:
            raise StoreUnavailable(self._unreachable())
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                result = await make()
            _raise_swallowed_cancellation()
        except FAILURES as exc:
            self.link.failed(exc)
            raise StoreUnavailable(self._unreachable()) from None
        self.link.succeeded()
        return result

    def _unreachable(self) -> str:
        return (
            f"protos.store {self.where} is unreachable ({self.link.last_error}): the change "
            "was not made, since it could not be shared with the other instances"
        )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


def _raise_swallowed_cancellation() -> None:
    """Raise the cancellation a Redis call returned through instead of raising it.

    redis-py writes through asyncio.wait_for, which on Python 3.11 returns a result that
    finished with the cancellation and drops it; a watcher cancelled then would never end.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _listing(stored: dict[bytes, bytes]) -> Listing:
    """The registrations in the hash; an entry that cannot be read is logged and named."""
    found: list[Registration] = []
    unreadable: set[str] = set()
    for key, data in sorted(stored.items()):
        name = key.decode(errors="replace")
        try:
            registration = Registration.from_json(json.loads(data))
            if registration.name != name:
                raise ValueError(f"names '{registration.name}' but is stored as '{name}'")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError among them
            log.error("protos.store: skipping registration '%s' in Redis: %s", name, exc)
            unreadable.add(name)
            continue
        found.append(registration)
    return Listing(tuple(found), frozenset(unreadable))
