"""Cached answers in Redis (SPEC 10): every instance reads and writes the same entries.

An entry is one Redis string under ``bridge:cache:<key>``, written with ``SET ... PX keep`` so
Redis forgets it when the cache step would (``ttl`` plus ``stale_if_error``), and read with
``GET``. The key is the cache step's own (`bridge.policy.cache.CacheStep.key`): the method's
name and a SHA-256 digest, so it is already short and needs no hashing again. Freshness, vary
and stale-if-error stay the step's business: the store only keeps and returns entries.

The value is compact bytes (`encode`): a version byte, ``fresh_until``, the body, then each
metadata item with whether its value is text or bytes, so an entry comes back as it went in.
A value that does not decode (another version's layout, a foreign write) is a miss.

While the link is down (`bridge.shared.link`), gets and puts go to this instance's own
`MemoryStore`, with the configured bounds. The coalescing of concurrent misses (the step's
single flight) is per instance in either case: two instances missing one key at once make
two backend calls.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from bridge.policy.cache_store import CacheEntry, MemoryStore, MetadataItems
from bridge.shared.link import FAILURES, RedisLink

PREFIX: Final = "bridge:cache:"
VERSION: Final = 1
_HEAD: Final = struct.Struct(">BdIII")  # version, fresh_until, body length, initial, trailers
_ITEM: Final = struct.Struct(">BII")  # value is bytes (1) or text (0), key length, value length


class RedisCache:
    """A `bridge.policy.cache_store.CacheStore` in Redis, with this instance's memory as
    fallback."""

    __slots__ = ("fallback", "link")

    def __init__(self, link: RedisLink, fallback: MemoryStore | None = None) -> None:
        self.link = link
        self.fallback = fallback if fallback is not None else MemoryStore()

    async def get(self, key: str) -> CacheEntry | None:
        link = self.link
        if link.usable:
            try:
                value = await link.client.get(PREFIX + key)
            except FAILURES as exc:
                link.failed(exc)
            else:
                link.succeeded()
                return decode(value) if isinstance(value, bytes) else None  # None: no entry
        return await self.fallback.get(key)

    async def put(self, key: str, entry: CacheEntry, keep: float) -> None:
        if keep <= 0:
            return
        link = self.link
        if link.usable:
            try:
                await link.client.set(PREFIX + key, encode(entry), px=math.ceil(keep * 1000))
            except FAILURES as exc:
                link.failed(exc)
            else:
                link.succeeded()
                return
        await self.fallback.put(key, entry, keep)


def encode(entry: CacheEntry) -> bytes:
    """``entry`` as the bytes stored in Redis."""
    parts = [
        _HEAD.pack(VERSION, entry.fresh_until, len(entry.body), len(entry.initial),
                   len(entry.trailers)),
        entry.body,
    ]  # fmt: skip
    for name, value in entry.initial + entry.trailers:
        raw_name = name.encode()
        is_bytes = isinstance(value, bytes)
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        parts += (_ITEM.pack(is_bytes, len(raw_name), len(raw)), raw_name, raw)
    return b"".join(parts)


def decode(data: bytes) -> CacheEntry | None:
    """The entry `encode` made, or None when ``data`` is not one."""
    try:
        version, fresh_until, body_length, initial, trailers = _HEAD.unpack_from(data)
        if version != VERSION:
            return None
        at = _HEAD.size + body_length
        body = data[_HEAD.size : at]
        items: list[tuple[str, str | bytes]] = []
        for _ in range(initial + trailers):
            is_bytes, name_length, length = _ITEM.unpack_from(data, at)
            at += _ITEM.size
            name = data[at : at + name_length].decode()
            at += name_length
            raw = data[at : at + length]
            at += length
            items.append((name, raw if is_bytes else raw.decode("utf-8", "surrogateescape")))
    except (struct.error, UnicodeDecodeError):
        return None
    if at != len(data) or len(body) != body_length:
        return None  # cut short (a slice past the end is short, not an error) or too long
    split: MetadataItems = tuple(items)
    return CacheEntry(body, split[:initial], split[initial:], fresh_until)
