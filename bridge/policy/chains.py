"""Each method's chain, from the config's policy rules: auth, rate limits, fallback, cache,
then the upstream.

Auth comes first so that a rate limit keyed by ``api_key`` or ``subject`` counts a proven
caller, not whatever a client claims, and so that the cache keys entries by a proven subject
and never answers a caller the method would refuse. Rate limits come before the cache, so a
cached answer counts like any other.

The cache answers before the fallback: a fresh entry answers without the backend, and when
the backend fails, the cache's own fallback (``stale_if_error``: the last good answer) comes
first. That is why the fallback step sits outside the cache step, wrapping it: it sees only
the failures the cache let through, it answers them with the configured default, and the
cache never sees (so never stores) a default answer.

Outermost of all, in every chain, `bridge.observe.metrics.Observed` counts and times each
call by its outcome, refusals included (SPEC 8).

The policies are built once per application: every snapshot's chains share the same
authenticator, buckets and cache entries, so a registration neither forgets the counts and
entries nor reloads keys.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from bridge.call import Invoke, Step
from bridge.config import Settings
from bridge.config.policies import CacheSettings
from bridge.observe.metrics import Observed
from bridge.policy import compose
from bridge.policy.auth import Authenticator
from bridge.policy.buckets import BucketStore, MemoryBuckets
from bridge.policy.cache import SUBJECT, Cache, StreamingRule
from bridge.policy.cache_store import CacheStore, MemoryStore
from bridge.policy.fallback import FallbackError, Fallbacks
from bridge.policy.ratelimit import RateLimits
from bridge.registry.snapshot import SnapshotError
from bridge.shared.buckets import RedisBuckets
from bridge.shared.cache import RedisCache
from bridge.shared.link import RedisLinks, is_redis

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method

log = logging.getLogger(__name__)


class Policies:
    """The config's policies, and the chain of the steps whose rules match each method."""

    def __init__(
        self, settings: Settings, terminal: Invoke, links: RedisLinks | None = None
    ) -> None:
        self.terminal = terminal
        self.auth = None if settings.auth is None else Authenticator.from_settings(
            settings.auth, settings.source
        )  # fmt: skip
        links = links if links is not None else RedisLinks()
        self.limits = (
            RateLimits(settings.rate_limits, _buckets(settings.rate_limits_store, links))
            if settings.rate_limits
            else None
        )
        cache = settings.cache
        self.cache = Cache(cache.rules, _cache_store(cache, links)) if cache.rules else None
        self.fallbacks = Fallbacks(settings.fallbacks) if settings.fallbacks else None
        self._shared_warned: set[str] = set()  # methods told about once (snapshots repeat)

    def chain(self, method: Method) -> Invoke:
        """The steps whose rules match ``method``, in front of the terminal; decided once."""
        steps: list[Step] = [Observed(method)]  # outermost: counts every outcome (SPEC 8)
        if self.auth is not None:
            step = self.auth.step(self.auth.rule_for(method.full_name))
            if step is not None:
                steps.append(step)
        if self.limits is not None:
            limit = self.limits.step(method.full_name)
            if limit is not None:
                steps.append(limit)
        try:
            if self.fallbacks is not None and (fallback := self.fallbacks.step(method)):
                steps.append(fallback)
            if self.cache is not None and (cached := self.cache.step(method)):
                self._warn_if_shared(method, cached.rule.vary)
                steps.append(cached)
        except (FallbackError, StreamingRule) as e:
            raise SnapshotError(str(e)) from None
        return compose(steps, self.terminal)

    def _warn_if_shared(self, method: Method, vary: Sequence[str]) -> None:
        """Say once when a method that needs a credential caches one answer for all callers."""
        if self.auth is None or SUBJECT in vary or method.full_name in self._shared_warned:
            return
        if self.auth.rule_for(method.full_name).require == "none":
            return
        self._shared_warned.add(method.full_name)
        log.warning(
            "cache: %s needs a credential but its rule's vary does not name subject: every "
            "caller is answered from the same entries (add subject if answers depend on who "
            "asks)",
            method.full_name,
        )

    async def running(self) -> AsyncIterator[None]:
        """What the policies run in the background (the JWKS watcher), for the app's life."""
        if self.auth is not None:
            await self.auth.start()
        yield
        if self.auth is not None:
            await self.auth.close()


def _buckets(store: str, links: RedisLinks) -> BucketStore:
    """The rate limits' buckets: in this process, or in the Redis the config names (SPEC 10)."""
    return RedisBuckets(links.get(store)) if is_redis(store) else MemoryBuckets()


def _cache_store(cache: CacheSettings, links: RedisLinks) -> CacheStore:
    """The cache's entries: in this process, or in Redis with this process's memory (bounded
    as configured) while Redis is unreachable."""
    memory = MemoryStore(cache.max_entries, cache.max_bytes)
    return RedisCache(links.get(cache.store), memory) if is_redis(cache.store) else memory
