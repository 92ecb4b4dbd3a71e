"""Unit tests of the in-memory token buckets (bridge.policy.buckets) on a clock the test moves:
exactly ``burst`` pass at once, then one per ``1/rate``; the number of buckets stays bounded and
refilled buckets are dropped.
"""

from __future__ import annotations

import tracemalloc

import pytest

from bridge.policy.buckets import BucketStore, MemoryBuckets

SECOND = 1_000_000_000


class Clock:
    """A monotonic clock in nanoseconds that moves only when told."""

    def __init__(self) -> None:
        self.now = 5 * SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_memory_buckets_is_a_store() -> None:
    store: BucketStore = MemoryBuckets()
    assert store is not None


async def test_take_is_awaitable(clock: Clock) -> None:
    assert await MemoryBuckets(clock=clock).take("k", 2.0, 5) == (True, 4, 0.5, 0.0)


@pytest.mark.parametrize(
    "rate, burst",
    [(2.0, 5), (1.0, 1), (3.0, 10), (0.1, 3), (1000.0, 200), (7.0, 7)],
)
def test_exactly_burst_pass_at_once(clock: Clock, rate: float, burst: int) -> None:
    store = MemoryBuckets(clock=clock)
    passed = [store.take_now("k", rate, burst)[0] for _ in range(burst + 3)]
    assert passed == [True] * burst + [False] * 3


@pytest.mark.parametrize("rate, burst", [(2.0, 5), (3.0, 4), (0.1, 3), (1000.0, 50)])
def test_then_one_per_interval(clock: Clock, rate: float, burst: int) -> None:
    store = MemoryBuckets(clock=clock)
    for _ in range(burst):
        store.take_now("k", rate, burst)
    for _ in range(5):
        clock.advance(1 / rate * 0.99)
        assert not store.take_now("k", rate, burst)[0]  # not quite one token yet
        clock.advance(1 / rate * 0.01)
        assert store.take_now("k", rate, burst)[0]
        assert not store.take_now("k", rate, burst)[0]


def test_decisions_through_a_burst(clock: Clock) -> None:
    """rate 2/s, burst 5: remaining counts down, reset grows by 1/rate, retry-after waits."""
    store = MemoryBuckets(clock=clock)
    got = [store.take_now("k", 2.0, 5) for _ in range(6)]
    assert got == [
        (True, 4, 0.5, 0.0),
        (True, 3, 1.0, 0.0),
        (True, 2, 1.5, 0.0),
        (True, 1, 2.0, 0.0),
        (True, 0, 2.5, 0.0),
        (False, 0, 2.5, 0.5),
    ]
    clock.advance(0.2)
    assert store.take_now("k", 2.0, 5) == (False, 0, 2.3, pytest.approx(0.3))
    clock.advance(0.3)
    assert store.take_now("k", 2.0, 5) == (True, 0, 2.5, 0.0)


def test_partial_refill(clock: Clock) -> None:
    store = MemoryBuckets(clock=clock)
    for _ in range(5):
        store.take_now("k", 2.0, 5)
    clock.advance(1.2)  # 2.4 tokens back: two whole ones to spend, then one fraction left
    assert store.take_now("k", 2.0, 5) == (True, 1, pytest.approx(1.8), 0.0)
    assert store.take_now("k", 2.0, 5)[0]
    assert store.take_now("k", 2.0, 5) == (False, 0, pytest.approx(2.3), pytest.approx(0.3))


def test_refill_stops_at_burst(clock: Clock) -> None:
    store = MemoryBuckets(clock=clock)
    store.take_now("k", 2.0, 5)
    clock.advance(3600)
    passed = [store.take_now("k", 2.0, 5)[0] for _ in range(7)]
    assert passed == [True] * 5 + [False] * 2


def test_refusals_take_nothing(clock: Clock) -> None:
    """A client hammering a refused bucket is not pushed further back by its refusals."""
    store = MemoryBuckets(clock=clock)
    store.take_now("k", 1.0, 1)
    for _ in range(100):
        assert not store.take_now("k", 1.0, 1)[0]
    clock.advance(1)
    assert store.take_now("k", 1.0, 1)[0]


def test_keys_are_independent(clock: Clock) -> None:
    store = MemoryBuckets(clock=clock)
    assert store.take_now("a", 1.0, 1)[0]
    assert not store.take_now("a", 1.0, 1)[0]
    assert store.take_now("b", 1.0, 1)[0]


def test_the_cap_is_never_exceeded(clock: Clock) -> None:
    """A flood of distinct keys inside one refill period: the oldest buckets are pushed out."""
    store = MemoryBuckets(100, clock=clock)
    for i in range(10_000):
        store.take_now(f"flood-{i}", 1.0, 5)
        assert len(store) <= 100
    assert len(store) == 100
    # The newest survive; the client pushed out starts again from a full bucket.
    assert store.take_now("flood-9999", 1.0, 5)[1] == 3
    assert store.take_now("flood-0", 1.0, 5)[1] == 4


def test_a_known_key_is_kept_while_used(clock: Clock) -> None:
    store = MemoryBuckets(3, clock=clock)
    for key in ("a", "b", "c"):
        store.take_now(key, 1.0, 5)
    store.take_now("a", 1.0, 5)  # "a" is now the most recently used; "b" is the oldest
    store.take_now("d", 1.0, 5)
    assert store.take_now("a", 1.0, 5)[1] == 2  # kept: its third token
    assert store.take_now("b", 1.0, 5)[1] == 4  # pushed out: a fresh bucket


def test_refilled_buckets_are_dropped(clock: Clock) -> None:
    """Full buckets carry nothing: each new bucket drops up to two of them."""
    store = MemoryBuckets(clock=clock)
    for i in range(10):
        store.take_now(f"idle-{i}", 2.0, 5)
    clock.advance(0.5)  # each took one token: all full again now
    store.take_now("new-0", 2.0, 5)
    assert len(store) == 9  # two idle dropped, one added
    for i in range(1, 10):
        store.take_now(f"new-{i}", 2.0, 5)
    assert len(store) == 10  # only the new ones are left
    assert store.take_now("idle-0", 2.0, 5)[1] == 4  # a fresh bucket, as it was


def test_buckets_not_yet_full_are_kept(clock: Clock) -> None:
    store = MemoryBuckets(clock=clock)
    for _ in range(3):
        store.take_now("busy", 2.0, 5)
    clock.advance(1.0)  # 1.5 s to refill: half a token short
    store.take_now("other", 2.0, 5)
    assert len(store) == 2
    assert store.take_now("busy", 2.0, 5)[1] == 3


def test_a_flood_of_distinct_keys_holds_memory_at_the_cap(clock: Clock) -> None:
    """Twenty times the cap in distinct keys, all within one refill period: the memory held
    afterwards is that of ``max_buckets`` buckets (about 250 bytes each), not of the flood."""
    store = MemoryBuckets(1000, clock=clock)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            store.take_now(f"0:ip:10.0.{i // 256}.{i % 256}", 1.0, 5)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 1000
    assert held < 1000 * 400
