"""The Redis registration store alone, on a real redis-server: writes, news, resets, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from bridge.registry.store import Registration, StoreUnavailable
from bridge.shared.link import RedisLink
from bridge.shared.registrations import CHANGES, EPOCH, REGISTRATIONS, VERSION, RedisRegistrations
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

PROTO = 'syntax = "proto3";\npackage t.v1;\n'
ALPHA = Registration("alpha", {"t/a.proto": PROTO}, targets=("127.0.0.1:1",))
BETA = Registration("beta", {"t/b.proto": PROTO}, upstream="echo")
T = TypeVar("T")


async def answered(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` once Redis answers: the first use of a pooled connection to a restarted
    Redis fails, and the link then waits its retry pause."""
    deadline = time.monotonic() + 3
    while True:
        try:
            return await call()
        except StoreUnavailable as exc:
            if "unreachable" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[list[RedisLink]]:
    """Two links to the server, as two instances have them."""
    made = [RedisLink(redis_server.url, retry=0.1) for _ in range(2)]
    yield made
    for link in made:
        await link.close()


@pytest.fixture
async def direct(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, for what the test reads or changes behind the stores' backs."""
    client = redis_server.client()
    yield client
    await client.aclose()


@pytest.fixture
async def stores(links: list[RedisLink]) -> AsyncIterator[list[RedisRegistrations]]:
    """Two instances' stores, each having read the store once (as a bridge does at start)."""
    made = [RedisRegistrations(link, poll=0.5) for link in links]
    for store in made:
        await store.contents(())
    yield made
    for store in made:
        await store.close()


async def test_writes_are_stored_counted_and_namespaced(
    stores: list[RedisRegistrations], direct: aioredis.Redis
) -> None:
    one, other = stores
    await one.put(ALPHA)
    await one.put(BETA)
    await other.discard("beta")
    assert (await other.contents(())).registrations == (ALPHA,)
    assert sorted(await direct.keys()) == sorted(k.encode() for k in (REGISTRATIONS, VERSION))
    assert sorted(await direct.hkeys(REGISTRATIONS)) == [EPOCH.encode(), b"alpha"]
    assert await direct.get(VERSION) == b"3"  # one count per write, removals included
    assert json.loads(await direct.hget(REGISTRATIONS, "alpha")) == ALPHA.to_json()


async def test_an_announced_change_ends_the_pause_at_once(stores: list[RedisRegistrations]) -> None:
    one, other = stores
    await one.pause(0)  # subscribes: the first pause ends at once, to read what may be missed
    before = await one.marker()
    started = time.monotonic()
    waiting = asyncio.create_task(one.pause(0))
    await asyncio.sleep(0.1)
    await other.put(ALPHA)
    await asyncio.wait_for(waiting, 1)
    assert time.monotonic() - started < 0.4
    assert await one.marker() != before
    started = time.monotonic()
    await one.pause(0)  # nothing announced: the poll interval, the net for a lost message
    assert 0.4 < time.monotonic() - started < 0.8


async def test_a_store_that_lost_its_data_gets_back_what_an_instance_serves(
    stores: list[RedisRegistrations], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    one, other = stores
    await one.put(ALPHA)
    await one.put(BETA)
    await other.contents(())
    await redis_server.kill(keep_data=False)
    await redis_server.start()
    with pytest.raises(StoreUnavailable, match="being caught up"):
        await answered(lambda: one.put(BETA))  # written once the store was read in full again
    with caplog.at_level(logging.WARNING, logger="bridge.registry"):
        listing = await one.contents((ALPHA, BETA))
    assert listing.registrations == (ALPHA, BETA)
    [said] = [r.getMessage() for r in caplog.records if "lost registrations" in r.getMessage()]
    assert "wrote back 2" in said and "alpha, beta" in said
    # The other instance finds the new epoch, and nothing more to write back.
    assert (await answered(lambda: other.contents((ALPHA, BETA)))).registrations == (ALPHA, BETA)


async def test_a_removal_through_another_instance_is_not_written_back(
    stores: list[RedisRegistrations],
) -> None:
    one, other = stores
    await one.put(ALPHA)
    await one.put(BETA)
    await other.contents(())
    await other.discard("alpha")
    assert (await one.contents((ALPHA, BETA))).registrations == (BETA,)


async def test_registrations_evicted_without_their_version_are_a_loss_not_removals(
    stores: list[RedisRegistrations], direct: aioredis.Redis
) -> None:
    one, _ = stores
    await one.put(ALPHA)
    await direct.delete(REGISTRATIONS)  # as an allkeys-* maxmemory policy may do
    assert await direct.get(VERSION) == b"1"
    assert (await one.contents((ALPHA,))).registrations == (ALPHA,)


async def test_newer_writes_after_a_reset_win_over_what_is_written_back(
    stores: list[RedisRegistrations], direct: aioredis.Redis
) -> None:
    one, other = stores
    await one.put(ALPHA)
    await other.contents(())
    await direct.flushdb()
    newer = Registration("alpha", {"t/a2.proto": PROTO}, targets=("127.0.0.1:2",))
    await other.contents(())  # the first to read the emptied store gives it a new epoch
    await other.put(newer)
    assert (await one.contents((ALPHA,))).registrations == (newer,)


async def test_an_entry_that_cannot_be_read_is_named_not_dropped(
    stores: list[RedisRegistrations], direct: aioredis.Redis
) -> None:
    one, _ = stores
    await one.put(ALPHA)
    await direct.hset(REGISTRATIONS, "broken", b'{"name": "broken", "files": {')
    listing = await one.contents(())
    assert listing.registrations == (ALPHA,) and listing.unreadable == {"broken"}


async def test_a_redis_that_is_down_refuses_at_once_and_is_followed_again(
    stores: list[RedisRegistrations], redis_server: RedisServer
) -> None:
    one, _ = stores
    before = await one.marker()
    await redis_server.kill()
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(StoreUnavailable, match="is unreachable") as refused:
            await one.put(ALPHA)
    assert time.monotonic() - started < 0.5
    assert "could not be shared" in str(refused.value)
    await redis_server.start()
    after = await answered(one.marker)
    assert after != before  # it came back: the marker makes the watcher read in full
    await one.put(ALPHA)


async def test_a_hung_redis_does_not_hold_a_write(
    stores: list[RedisRegistrations], redis_server: RedisServer
) -> None:
    one, _ = stores
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await one.put(ALPHA)
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


async def test_a_password_in_the_url_is_never_shown() -> None:
    link = RedisLink("redis://:hunter2@127.0.0.1:1/0", retry=0.1)
    store = RedisRegistrations(link)
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.put(ALPHA)
    finally:
        await link.close()
    assert "hunter2" not in store.where and "hunter2" not in str(refused.value)
    assert CHANGES.startswith("bridge:protos:")
