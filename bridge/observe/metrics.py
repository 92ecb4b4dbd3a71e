"""Prometheus metrics (SPEC 8): what the bridge counts, and ``GET /metrics``.

The metric objects are module globals, as prometheus-client intends: the places that count
(the chain's outermost step, the upstream call, the cache and the refusing policies) import
them and pay a lock and an add. What is state rather than an event (circuits, unhealthy
targets, registrations) is read at scrape time from the application by `State`, so the hot
path never updates it.

Labels are bounded: ``route`` is a route template (a WebSocket or aggregate call's is its
method's default path), never a raw path; ``method`` a served method's name; ``code`` a gRPC
code name. A `Observed` step binds its label children once per route, transport and code. A
request refused before any method's chain saw it is counted by `refused`: with its route's
labels when one matched (a bad body), else as route ``(unmatched)`` and method ``""`` (no
route, a method not allowed, a refusal at the edge before routing); a WebSocket upgrade
refused (not an upgrade, a bad Origin, bad credentials) as route ``/ws``, method ``""`` and
transport ``ws``.

With ``--workers N`` the parent (bridge/cli.py) sets ``PROMETHEUS_MULTIPROC_DIR`` to a
temporary directory before this module is first imported and the workers fork; every worker
then writes its numbers there and any worker's ``/metrics`` sums them all
(prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import errors
from bridge.call import WEBSOCKET, Call, Invoke, Reply
from bridge.errors import BridgeError
from bridge.upstream.breaker import CLOSED

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from bridge.registry import Registry
    from bridge.registry.snapshot import Binding, Method
    from bridge.upstream.metadata import Metadata
    from bridge.upstream.pool import Upstreams

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# From half a millisecond (a cached answer) to half a minute (a slow stream's whole life).
BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
)  # fmt: skip
_CALL_LABELS: Final = ("route", "method", "transport", "code")

REQUESTS: Final = Counter(
    "bridge_requests", "Calls by route template, method, transport and gRPC code", _CALL_LABELS
)
DURATION: Final = Histogram(
    "bridge_request_duration_seconds",
    "Call duration until the last response message (or the error), in seconds",
    _CALL_LABELS,
    buckets=BUCKETS,
)
WS_CONNECTIONS: Final = Gauge(
    "bridge_websocket_connections", "Open WebSocket connections", multiprocess_mode="livesum"
)
WS_CALLS: Final = Gauge(
    "bridge_websocket_calls", "Calls running on WebSocket connections", multiprocess_mode="livesum"
)
UPSTREAM_ERRORS: Final = Counter(
    "bridge_upstream_errors", "Failed upstream attempts by upstream and gRPC code",
    ("upstream", "code"),
)  # fmt: skip
RETRIES: Final = Counter("bridge_retries", "Upstream calls made again, by upstream", ("upstream",))
CACHE: Final = Counter("bridge_cache", "Cache lookups by result (hit, miss, stale)", ("result",))
REJECTIONS: Final = Counter(
    "bridge_rejections", "Calls refused by reason (auth, scope, rate_limit, limit)", ("reason",)
)
CACHE_HIT: Final = CACHE.labels("hit")
CACHE_MISS: Final = CACHE.labels("miss")
CACHE_STALE: Final = CACHE.labels("stale")
REJECTED_AUTH: Final = REJECTIONS.labels("auth")
REJECTED_SCOPE: Final = REJECTIONS.labels("scope")
REJECTED_RATE: Final = REJECTIONS.labels("rate_limit")
REJECTED_LIMIT: Final = REJECTIONS.labels("limit")
_EVENTS: Final = (
    REQUESTS, DURATION, WS_CONNECTIONS, WS_CALLS, UPSTREAM_ERRORS, RETRIES, CACHE, REJECTIONS
)  # fmt: skip

_CODE_NAMES: Final = dict(errors.NAME_BY_CODE)
_OK: Final = "OK"
UNMATCHED: Final = "(unmatched)"  # the route label of a request no route matched
UPGRADE: Final = "/ws"  # the route label of a refused WebSocket upgrade: it holds no call
_clock = time.perf_counter


def refused(
    transport: str,
    code: int,
    started: float,
    binding: Binding | None = None,
    route: str = UNMATCHED,
) -> None:
    """Count a request refused before a method's chain saw it (no route, a bad body, a limit),
    under its route's labels when it matched one (``binding``), else under ``route``."""
    code_name = _CODE_NAMES.get(code, "UNKNOWN")
    if binding is None:
        labels = (route, "", transport, code_name)
    else:
        labels = (route_label(binding), binding.method.full_name, transport, code_name)
    REQUESTS.labels(*labels).inc()
    DURATION.labels(*labels).observe(_clock() - started)


class Observed:
    """The outermost step of every method's chain: counts and times each call by its outcome.

    A unary answer (already received) is counted when ``next`` returns; a stream when it ends,
    fails or is cancelled, so its duration is the stream's life.
    """

    __slots__ = ("_children", "_in_hand", "_method")

    def __init__(self, method: Method) -> None:
        self._method = method.full_name
        # Unary: every step answers with the message received already, so the call is over.
        self._in_hand = not (method.client_streaming or method.server_streaming)
        # (binding, transport, code) -> (counter, histogram): labels resolved once each.
        self._children: dict[tuple[object, str, str], tuple[Counter, Histogram]] = {}

    async def __call__(self, call: Call, next: Invoke) -> Reply:
        start = _clock()
        if call.transport == WEBSOCKET:
            WS_CALLS.inc()  # done() takes it off
        try:
            reply = await next(call)
        except BridgeError as error:
            self.done(call, _CODE_NAMES.get(error.code, "UNKNOWN"), start)
            raise
        except asyncio.CancelledError:
            self.done(call, "CANCELLED", start)
            raise
        except Exception:
            self.done(call, "INTERNAL", start)  # the guard answers a bug with INTERNAL
            raise
        if self._in_hand:
            self.done(call, _OK, start)
            return reply
        return _ObservedReply(reply, self, call, start)

    def done(self, call: Call, code: str, start: float) -> None:
        if call.transport == WEBSOCKET:
            WS_CALLS.dec()
        key = (call.binding, call.transport, code)
        children = self._children.get(key)
        if children is None:
            labels = (route_label(call.binding), self._method, call.transport, code)
            children = REQUESTS.labels(*labels), DURATION.labels(*labels)
            self._children[key] = children
        children[0].inc()
        children[1].observe(_clock() - start)


def route_label(binding: Binding) -> str:
    """A binding's bounded route label: its template, or its method's default path."""
    return binding.route or binding.method.grpc_path


class _ObservedReply:
    """A streamed reply that reports its outcome to `Observed` once, when it is known."""

    __slots__ = ("_call", "_reply", "_start", "_step", "initial")

    def __init__(self, reply: Reply, step: Observed, call: Call, start: float) -> None:
        self._reply = reply
        self._step: Observed | None = step
        self._call = call
        self._start = start
        self.initial: Metadata = reply.initial

    async def next(self) -> Message | None:
        try:
            message = await self._reply.next()
        except BridgeError as error:
            self._done(_CODE_NAMES.get(error.code, "UNKNOWN"))
            raise
        except asyncio.CancelledError:
            self._done("CANCELLED")
            raise
        except Exception:
            self._done("INTERNAL")
            raise
        if message is None:
            self._done(_OK)
        elif not self._call.binding.method.server_streaming:
            self._done(_OK)  # a unary answer to a live request stream: nothing follows
        return message

    async def trailers(self) -> Metadata:
        return await self._reply.trailers()

    def cancel(self) -> None:
        self._done("CANCELLED")
        self._reply.cancel()

    def _done(self, code: str) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.done(self._call, code, self._start)


class State(Collector):
    """What is state, not an event, read from one application when scraped.

    With several workers each reports its own view (every worker watches health and keeps
    circuits itself), labelled by ``pid`` so the series do not collide.
    """

    def __init__(self, upstreams: Upstreams, registry: Registry) -> None:
        self.upstreams = upstreams
        self.registry = registry
        self._pid = [str(os.getpid())] if os.environ.get(MULTIPROC_ENV) else []

    def collect(self) -> Iterable[Metric]:
        extra = ["pid"] if self._pid else []
        circuit = GaugeMetricFamily(
            "bridge_circuit_open", "1 while a target's circuit is open or half-open",
            labels=["upstream", "target", *extra],
        )  # fmt: skip
        unhealthy = GaugeMetricFamily(
            "bridge_unhealthy_targets", "Targets out of the rotation (health check not serving)",
            labels=["upstream", *extra],
        )  # fmt: skip
        for upstream in self.upstreams.values():
            down = 0
            for target in upstream.targets:
                down += not target.healthy
                breaker = target.breaker
                if breaker is not None:
                    is_open = float(breaker.state != CLOSED)
                    circuit.add_metric([upstream.name, target.address, *self._pid], is_open)
            unhealthy.add_metric([upstream.name, *self._pid], down)
        registrations = GaugeMetricFamily(
            "bridge_registrations", "Proto sets registered through the admin API",
            labels=extra,
        )  # fmt: skip
        sets = self.registry.snapshot.sets
        registrations.add_metric(self._pid, sum(not s.weak for s in sets[1:]))
        return [circuit, unhealthy, registrations]


def exposition_registry(state: State) -> CollectorRegistry:
    """The metrics one application shows: every worker's events, and its own state."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in _EVENTS:
            registry.register(metric)
    registry.register(state)
    return registry


def handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /metrics``: the Prometheus text of ``registry``."""

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
