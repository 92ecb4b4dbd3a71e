"""Unit tests of the Redis cache store (bridge.shared.cache) against a real redis-server:
entries come back as they went in (text and bytes metadata apart), Redis forgets them after
``keep``, a value that does not decode is a miss, and this instance's memory answers while
Redis is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from bridge.errors import UNAVAILABLE, BridgeError
from bridge.policy.cache import Cache
from bridge.policy.cache_store import CacheEntry, CacheStore, MemoryStore
from bridge.shared.cache import PREFIX, RedisCache, decode, encode
from bridge.shared.link import RedisLink
from tests.redis_server import RedisServer, redis_server
from tests.test_policy_cache import Next, Rule, answer, method

__all__ = ["redis_server"]  # the fixture, used by name

KEY = "demo.users.v1.UserService/GetUser " + "ab" * 32
ENTRY = CacheEntry(
    b"\x0a\x03bob",
    (("x-trace", "t1"), ("x-blob-bin", b"\x00\xff")),
    (("x-served-by", "users-1"), ("x-sum-bin", b"\x01")),
    1_900_000_000.5,
)


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, retry=0.1)
    yield link
    await link.close()


def test_redis_cache_is_a_store() -> None:
    link = RedisLink("redis://127.0.0.1:1/0")  # never called
    store: CacheStore = RedisCache(link)
    assert store is not None


@pytest.mark.parametrize(
    "entry",
    [
        ENTRY,
        CacheEntry(b"", (), (), 0.0),
        CacheEntry(b"x" * 100_000, (), (("grpc-x", "é ünïcode"),), 1.25),
        CacheEntry(b"\x00", (("k", b""), ("k", "")), (), 2.0),
    ],
    ids=["both-kinds", "empty", "large-body-unicode", "empty-values"],
)
def test_encoding_round_trips(entry: CacheEntry) -> None:
    again = decode(encode(entry))
    assert again == entry
    assert again is not None
    assert [type(v) for _, v in again.initial + again.trailers] == [
        type(v) for _, v in entry.initial + entry.trailers
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"garbage that is not an entry", encode(ENTRY)[:-1], encode(ENTRY) + b"!",
     b"\x02" + encode(ENTRY)[1:], encode(ENTRY)[:30]],
    ids=["empty", "one-byte", "text", "cut-short", "trailing", "other-version", "head-only"],
)  # fmt: skip
def test_undecodable_is_none(data: bytes) -> None:
    assert decode(data) is None


async def test_put_then_get(link: RedisLink, redis_server: RedisServer) -> None:
    store = RedisCache(link)
    assert await store.get(KEY) is None
    await store.put(KEY, ENTRY, 30)
    assert await store.get(KEY) == ENTRY
    client = redis_server.client()
    try:
        assert 29_000 < await client.pttl(PREFIX + KEY) <= 30_000
    finally:
        await client.aclose()


async def test_another_instance_reads_the_entry(redis_server: RedisServer) -> None:
    links = [RedisLink(redis_server.url) for _ in range(2)]
    try:
        await RedisCache(links[0]).put(KEY, ENTRY, 30)
        assert await RedisCache(links[1]).get(KEY) == ENTRY
    finally:
        for link in links:
            await link.close()


async def test_redis_forgets_after_keep(link: RedisLink) -> None:
    store = RedisCache(link)
    await store.put(KEY, ENTRY, 0.1)
    assert await store.get(KEY) == ENTRY
    await asyncio.sleep(0.15)
    assert await store.get(KEY) is None


async def test_nothing_kept_for_no_time(link: RedisLink) -> None:
    store = RedisCache(link)
    await store.put(KEY, ENTRY, 0)
    assert await store.get(KEY) is None


async def test_a_corrupt_entry_is_a_miss(link: RedisLink, redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        await client.set(PREFIX + KEY, b"\x01not an entry")
    finally:
        await client.aclose()
    assert await RedisCache(link).get(KEY) is None
    assert link.up  # a bad value is not an outage


async def test_redis_down_falls_back_to_memory(
    link: RedisLink, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryStore(max_entries=2)
    store = RedisCache(link, memory)
    await store.put(KEY, ENTRY, 30)
    await redis_server.kill()
    caplog.set_level(logging.WARNING, "bridge.shared")
    started = time.monotonic()
    assert await store.get(KEY) is None  # the entry is in Redis; memory starts empty
    for i in range(20):
        await store.put(f"k{i}", ENTRY, 30)
    assert await store.get("k19") == ENTRY
    assert len(memory) == 2  # the configured bounds hold
    assert time.monotonic() - started < 0.5
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1

    await redis_server.start()  # its data kept
    await asyncio.sleep(0.15)
    assert await store.get(KEY) == ENTRY  # Redis answers again
    assert link.up


async def test_the_cache_step_shares_entries_and_serves_stale_ones_from_redis(
    redis_server: RedisServer,
) -> None:
    """Two instances' cache steps on one Redis: a HIT through the other, then, past the ttl
    with the backend failing, the stale entry (stale_if_error) from Redis."""
    links = [RedisLink(redis_server.url) for _ in range(2)]
    try:
        rule = Rule(ttl=0.2, stale_if_error=30.0)
        one, two = (Cache([rule], RedisCache(link)).step(method()) for link in links)
        assert one is not None and two is not None
        backend = Next()
        assert await answer(one, backend) == ("answer 1", {"X-Cache": "MISS"})
        assert await answer(two, backend) == ("answer 1", {"X-Cache": "HIT"})
        await asyncio.sleep(0.25)
        backend.fail = BridgeError(UNAVAILABLE, "down")
        stale = {"X-Cache": "STALE", "X-Bridge-Fallback": "true"}
        assert await answer(two, backend) == ("answer 1", stale)
        assert backend.calls == 2
    finally:
        for link in links:
            await link.close()
