"""Upstreams: one long-lived gRPC channel per target, their balancer, health and breakers, and
generic stubs by method."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2

from bridge.config import UpstreamSettings
from bridge.upstream.balancer import Balancer, Target
from bridge.upstream.breaker import Breaker
from bridge.upstream.health import watch
from bridge.upstream.retry import RetryPolicy

# How long one connection attempt (TCP, TLS, the server's HTTP/2 SETTINGS) may take.
CONNECT_TIMEOUT_MS: Final = 20_000
# Reconnect quickly after a backend restart instead of grpc's default of up to two minutes.
CHANNEL_OPTIONS: Final = (
    # The wait before the first retry, growing x1.6 (jitter 0.2) to at most 1 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Despite its name this is gRPC core's MIN_CONNECT_TIMEOUT (doc/connection-backoff.md): an
    # attempt's deadline is max(now + backoff, now + this). Set to the backoff's 100 ms, a
    # backend whose handshake took longer was never reached. gRPC's default, made explicit.
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
    # No bandwidth-delay probing: its PINGs cost wakeups on every busy connection (5-10% of a
    # unary call's CPU in `make bench`), and a fixed 64 KiB stream window bounds what a stalled
    # WebSocket call can hold. Backends sit on the same LAN, where the window is plenty.
    ("grpc.http2.bdp_probe", 0),
)
_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
_FACTORIES: Final[dict[tuple[bool, bool], str]] = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class Upstream:
    """A named group of targets serving some services, reached through persistent channels."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout = settings.timeout
        breaker = settings.circuit_breaker
        self.targets = [
            Target(
                address,
                _open_channel(address, settings.tls),
                Breaker(breaker.failures, breaker.reset) if breaker else None,
            )
            for address in settings.targets
        ]
        self.channels = [target.channel for target in self.targets]
        self.balancer = Balancer(self.targets)
        self.retry = RetryPolicy.of(settings.retries)
        self._stubs: weakref.WeakKeyDictionary[Any, dict[Target, Callable[..., Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._watches: list[asyncio.Task[None]] = []

    def stub(self, method: Any, target: Target) -> Callable[..., Any]:
        """A multicallable for ``method`` on ``target`` (built once per method and target)."""
        stubs = self._stubs.get(method)
        if stubs is None:
            stubs = self._stubs[method] = {t: _make_stub(t.channel, method) for t in self.targets}
        return stubs[target]

    def start(self) -> None:
        """Start watching the targets' health, when the upstream asks for it."""
        if self.settings.health_check and not self._watches:
            self._watches = [
                asyncio.create_task(watch(target, self.name)) for target in self.targets
            ]

    async def check(self, timeout: float = 1.0) -> dict[str, Any]:
        """Whether every target answers: grpc.health.v1 where offered, else any reply counts."""
        results = await asyncio.gather(*(self._check_one(ch, timeout) for ch in self.channels))
        targets = dict(zip(self.settings.targets, results, strict=True))
        return {
            "ready": all(r == "SERVING" or r == "REACHABLE" for r in results),
            "targets": targets,
        }

    async def _check_one(self, channel: grpc.aio.Channel, timeout: float) -> str:
        check = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "REACHABLE"  # the server answered; it just offers no health service
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in self.channels))


def _open_channel(target: str, tls: bool) -> grpc.aio.Channel:
    if tls:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, CHANNEL_OPTIONS)


def _make_stub(channel: grpc.aio.Channel, method: Any) -> Callable[..., Any]:
    factory = getattr(channel, _FACTORIES[(method.client_streaming, method.server_streaming)])
    return factory(
        method.grpc_path,
        request_serializer=method.input.SerializeToString,
        response_deserializer=method.output.FromString,
    )


class Upstreams(Mapping[str, Upstream]):
    """Every upstream by name: the configured ones, and those that registrations bring."""

    def __init__(self, settings: Iterable[UpstreamSettings]) -> None:
        self._by_name = {s.name: Upstream(s) for s in settings}
        # Replaced or removed upstreams, still open for the calls they have in flight.
        self._retiring: dict[Upstream, asyncio.Task[None]] = {}
        self._started = False

    async def start(self) -> None:
        """Start the background work (health watches); upstreams added later start at once."""
        self._started = True
        for upstream in self._by_name.values():
            upstream.start()

    def replace(self, settings: UpstreamSettings) -> Upstream:
        """Add or replace an upstream; a replaced one closes once its calls had time to end."""
        old = self._by_name.get(settings.name)
        if old is not None and old.settings == settings:
            return old
        self._by_name[settings.name] = upstream = Upstream(settings)
        if self._started:
            upstream.start()
        if old is not None:
            self._retire(old)
        return upstream

    def discard(self, name: str) -> None:
        old = self._by_name.pop(name, None)
        if old is not None:
            self._retire(old)

    def _retire(self, upstream: Upstream) -> None:
        async def close_later() -> None:
            await asyncio.sleep(upstream.timeout + 1)
            self._retiring.pop(upstream, None)
            await upstream.close()

        self._retiring[upstream] = asyncio.create_task(close_later())

    def __getitem__(self, name: str) -> Upstream:
        return self._by_name[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    async def readiness(self) -> dict[str, Any]:
        """Per-upstream readiness detail, checked concurrently."""
        names = list(self._by_name)
        checks = await asyncio.gather(*(self._by_name[n].check() for n in names))
        return dict(zip(names, checks, strict=True))

    async def close(self) -> None:
        """Close every channel, the retired upstreams' too (their grace ends at shutdown)."""
        retired = list(self._retiring)
        for task in self._retiring.values():
            task.cancel()
        self._retiring.clear()
        await asyncio.gather(*(u.close() for u in [*self._by_name.values(), *retired]))
