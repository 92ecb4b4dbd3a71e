"""Token buckets behind a small store interface: in memory here, in Redis in bridge.shared.

A bucket holds ``burst`` tokens and gains ``rate`` tokens a second; each request takes one or is
refused. A bucket is kept as GCRA keeps it (the generic cell rate algorithm, as redis-cell and
redis_rate do): one number per key, the moment the bucket will be full again. That moment in the
past means a full bucket, exactly like a key never seen, so such a bucket carries no
information and can be dropped; and one number per key is what a Redis script reads and
writes in the single atomic round trip that `BucketStore.take` stands for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

# 100,000 buckets hold about 24 MiB (measured with tracemalloc after a flood of a million
# distinct IPv4 keys like "0:ip:1.15.66.64": 252 bytes a bucket, key included; the process's
# RSS grew by 40 MiB with the dictionary's resizes): more distinct clients than one instance
# sees within a refill period in any deployment that does not need SPEC 10's shared store
# anyway, and little enough that a flood of distinct keys cannot hurt the process.
MAX_BUCKETS: Final = 100_000

_NS: Final = 1_000_000_000


# What a store answers for one request, in this order (a plain tuple: building a NamedTuple
# made `MemoryBuckets.take_now` about 60% slower):
#   allowed: bool, whether the request took a token;
#   remaining: int, whole tokens left after this request;
#   reset: float, seconds until the bucket is full again;
#   retry_after: float, seconds until the next token (0.0 when allowed).
Decision = tuple[bool, int, float, float]


class BucketStore(Protocol):
    """Where buckets live: `MemoryBuckets` by default, or in Redis (`bridge.shared`)."""

    async def take(self, key: str, rate: float, burst: int) -> Decision:
        """Take one token from ``key``'s bucket (``burst`` tokens, ``rate`` a second), or refuse.

        ``rate`` must be positive and ``burst`` at least 1 (the config checks both).
        """
        ...


class MemoryBuckets:
    """The buckets of one process, bounded in number, the least recently used dropped first.

    Buckets are added only for keys not seen (or dropped), so that is where the bookkeeping
    is paid; a request on a known key is a lookup, a move and a store. A new bucket first drops
    up to two buckets at the old end that have refilled (they carry no information), so the
    buckets left by a flood of distinct keys drain as soon as other clients come and go; at
    ``max_buckets`` it then pushes out the least recently used bucket even if that one is not
    full yet, and that client's next request starts from a full bucket again.
    """

    __slots__ = ("_clock", "_full_at", "max_buckets")

    def __init__(
        self, max_buckets: int = MAX_BUCKETS, *, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self.max_buckets = max_buckets
        self._clock = clock  # nanoseconds: integer arithmetic keeps "exactly burst" exact
        self._full_at: OrderedDict[str, int] = OrderedDict()  # key -> when full again, LRU order

    def __len__(self) -> int:
        return len(self._full_at)

    async def take(self, key: str, rate: float, burst: int) -> Decision:
        return self.take_now(key, rate, burst)

    def take_now(self, key: str, rate: float, burst: int) -> Decision:
        """`take` without the coroutine: the store never waits."""
        now = self._clock()
        interval = int(_NS / rate) or 1  # nanoseconds per token
        full_at = self._full_at
        when = full_at.get(key)
        if when is None:
            backlog = 0
            self._make_room(now)
        else:
            full_at.move_to_end(key)
            backlog = when - now if when > now else 0  # nanoseconds until full
        allowance = (burst - 1) * interval  # the largest backlog that still holds a token
        if backlog > allowance:
            return False, 0, backlog / _NS, (backlog - allowance) / _NS
        backlog += interval
        full_at[key] = now + backlog
        return True, (burst * interval - backlog) // interval, backlog / _NS, 0.0

    def _make_room(self, now: int) -> None:
        """Before a new bucket: drop up to two refilled ones, then the oldest if still full."""
        full_at = self._full_at
        for _ in range(2):
            oldest = next(iter(full_at), None)
            if oldest is None or full_at[oldest] > now:
                break
            del full_at[oldest]
        if len(full_at) >= self.max_buckets:
            full_at.popitem(last=False)
