"""Cached answers behind a small store interface: in memory here, in Redis in bridge.shared.

A store maps a key to a `CacheEntry` and forgets it ``keep`` seconds after it was put: the
two operations are what Redis ``GET`` and ``SET key value PX keep`` answer, so a Redis store
only has to encode an entry (bytes and strings, nothing else) to implement `CacheStore`.
Whether an entry is fresh is the cache step's question, told by the entry's own ``fresh_until``;
the store keeps it longer than that when the rule allows stale answers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

# What an entry costs beyond the bytes it holds: the entry, its tuples, the objects of its key,
# body and metadata, and the dict slot. Measured with tracemalloc over 10,000 entries of a
# 104-byte answer with two metadata items and a 95-character key: 687 bytes each, which this
# overhead counts as 683. Python's overhead grows with the metadata items, not with the body.
ENTRY_OVERHEAD: Final = 450
MAX_ENTRIES: Final = 10_000
MAX_BYTES: Final = 64 * 2**20

MetadataItems = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored answer: the response message's bytes and the backend's metadata."""

    body: bytes  # the response message, serialized
    initial: MetadataItems  # the backend's initial metadata
    trailers: MetadataItems  # the backend's trailing metadata
    fresh_until: float  # Unix time (time.time): entries outlive a process in Redis

    @property
    def size(self) -> int:
        """The bytes this entry counts against a store's ``max_bytes``."""
        items = self.initial + self.trailers
        return ENTRY_OVERHEAD + len(self.body) + sum(len(k) + len(v) for k, v in items)


class CacheStore(Protocol):
    """Where cached answers live: `MemoryStore` by default, or in Redis (`bridge.shared`)."""

    async def get(self, key: str) -> CacheEntry | None:
        """The entry put under ``key``, or None when there is none or its time is up."""
        ...

    async def put(self, key: str, entry: CacheEntry, keep: float) -> None:
        """Store ``entry`` under ``key`` for ``keep`` seconds (it may be dropped sooner)."""
        ...


class MemoryStore:
    """The entries of one process, bounded in count and bytes, least recently used out first.

    A get moves its entry to the young end; a put first drops up to two entries at the old end
    whose time is up, then the oldest ones until the new entry fits both bounds. An entry
    larger than ``max_bytes`` is not kept at all.
    """

    __slots__ = ("_bytes", "_clock", "_entries", "max_bytes", "max_entries")

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[CacheEntry, float, int]] = OrderedDict()
        self._bytes = 0  # the sum of the kept entries' sizes (key included)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> CacheEntry | None:
        kept = self._entries.get(key)
        if kept is None:
            return None
        entry, drop_at, _ = kept
        if drop_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CacheEntry, keep: float) -> None:
        now = self._clock()
        if key in self._entries:
            self._drop(key)
        size = entry.size + len(key)
        if size > self.max_bytes or keep <= 0:
            return
        self._drop_expired(now)
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))
        self._entries[key] = (entry, now + keep, size)
        self._bytes += size

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self._bytes -= size

    def _drop_expired(self, now: float) -> None:
        for _ in range(2):
            oldest = next(iter(self._entries), None)
            if oldest is None or self._entries[oldest][1] > now:
                return
            self._drop(oldest)
