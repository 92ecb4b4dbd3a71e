"""Each method's chain, from the config's policy rules: auth, then rate limits, then upstream.

Auth comes first so that a rate limit keyed by ``api_key`` or ``subject`` counts a proven
caller, not whatever a client claims. The policies are built once per application: every
snapshot's chains share the same authenticator and buckets, so a registration neither
forgets the counts nor reloads keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bridge.call import Invoke, Step
from bridge.config import Settings
from bridge.policy import Identify, compose
from bridge.policy.auth import Authenticator
from bridge.policy.buckets import MemoryBuckets
from bridge.policy.ratelimit import RateLimits

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method


class Policies:
    """The config's policies, and the chain of the steps whose rules match each method."""

    def __init__(self, settings: Settings, terminal: Invoke) -> None:
        self.terminal = terminal
        self.auth = None if settings.auth is None else Authenticator.from_settings(
            settings.auth, settings.source
        )  # fmt: skip
        self.limits = (
            RateLimits(settings.rate_limits, MemoryBuckets()) if settings.rate_limits else None
        )

    @property
    def identify(self) -> Identify | None:
        """Who a request's credentials prove (a WebSocket upgrade's); None without ``auth``."""
        return None if self.auth is None else self.auth.identify

    def chain(self, method: Method) -> Invoke:
        """The steps whose rules match ``method``, in front of the terminal; decided once."""
        steps: list[Step] = []
        if self.auth is not None:
            step = self.auth.step(self.auth.rule_for(method.full_name))
            if step is not None:
                steps.append(step)
        if self.limits is not None:
            limit = self.limits.step(method.full_name)
            if limit is not None:
                steps.append(limit)
        return compose(steps, self.terminal)

    async def running(self) -> AsyncIterator[None]:
        """What the policies run in the background (the JWKS watcher), for the app's life."""
        if self.auth is not None:
            await self.auth.start()
        yield
        if self.auth is not None:
            await self.auth.close()
