"""Round robin over an upstream's targets that are in the rotation.

A target is out of the rotation while its health watch says it is not serving, while its
circuit is open, and (passively) while its channel is in TRANSIENT_FAILURE: gRPC failed to
connect to it and is retrying in the background, so a call sent there would only fail fast.
When no target is in the rotation but some are out only for TRANSIENT_FAILURE, those are
tried anyway: their channel may have reconnected since, and a call to them fails in
microseconds when not.

Bridge keeps its own channel per target instead of gRPC's ``round_robin`` policy over one
channel: health and breakers are per target, and a retry must go to a *different* target,
which a single channel's picker cannot be asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc

from bridge.upstream.breaker import Breaker

_FAILING: Final = grpc.ChannelConnectivity.TRANSIENT_FAILURE


class Target:
    """One backend address: its channel, its stubs by method, its health and its circuit."""

    __slots__ = ("address", "breaker", "channel", "healthy", "stubs")

    def __init__(
        self, address: str, channel: grpc.aio.Channel, breaker: Breaker | None = None
    ) -> None:
        self.address = address
        self.channel = channel
        self.breaker = breaker
        self.healthy = True  # until a health watch says otherwise
        self.stubs: dict[Any, Callable[..., Any]] = {}

    def connecting_failed(self) -> bool:
        return self.channel.get_state() is _FAILING

    def succeeded(self) -> None:
        if self.breaker is not None:
            self.breaker.succeeded()

    def failed(self) -> None:
        if self.breaker is not None:
            self.breaker.failed()

    def abandoned(self) -> None:
        if self.breaker is not None:
            self.breaker.abandoned()


class Balancer:
    """Picks targets in turn, skipping those out of the rotation."""

    __slots__ = ("_next", "targets")

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = tuple(targets)
        self._next = 0

    def pick(self, avoid: Target | None = None) -> Target | None:
        """The next target in the rotation other than `avoid` (the one that just failed, when
        another is available); None when every target is out."""
        targets = self.targets
        count = len(targets)
        fallback = None
        for _ in range(count):
            target = targets[self._next]
            self._next = (self._next + 1) % count
            if target is avoid or not target.healthy:
                continue
            if target.connecting_failed():
                fallback = fallback or target
                continue
            breaker = target.breaker
            if breaker is None or breaker.allow():
                return target
        if fallback is not None and (fallback.breaker is None or fallback.breaker.allow()):
            return fallback
        if avoid is not None and avoid.healthy and (avoid.breaker is None or avoid.breaker.allow()):
            return avoid
        return None

    def out(self) -> str:
        """Why no target is in the rotation, for the error a call fails with."""
        unhealthy = sum(not t.healthy for t in self.targets)
        broken = sum(
            t.healthy and t.breaker is not None and not t.breaker.available() for t in self.targets
        )
        parts = [f"{unhealthy} not serving"] if unhealthy else []
        if broken:
            parts.append(f"{broken} with an open circuit")
        return ", ".join(parts) or "none reachable"
