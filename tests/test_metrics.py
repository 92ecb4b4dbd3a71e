"""GET /metrics (SPEC 8): real calls over REST and WebSocket against a real bridge, read back
from the Prometheus text as prometheus-client's own parser reads it.

The metric objects live for the test process, which runs many bridges: each test compares
the numbers before and after its calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROTOS, Bridge, StartBridge, demo_config
from tests.raw_http import RawConnection, request
from tests.test_workers import eventually, serving
from tests.ws_client import connect

GET_USER = "demo.users.v1.UserService/GetUser"
ECHO = "demo.echo.v1.EchoService/Echo"
TICK = "demo.echo.v1.EchoService/Tick"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by name and labels; fails on text the Prometheus parser refuses."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def calls(samples: Samples, route: str, method: str, transport: str, code: str) -> float:
    labels = {"route": route, "method": method, "transport": transport, "code": code}
    return value(samples, "bridge_requests_total", **labels)


async def test_rest_and_websocket_calls_counted_by_template(demo: Bridge) -> None:
    before = await scrape(demo.url)
    for path in ("/v1/users/1", "/v1/users/2", "/v1/users/404404"):
        async with demo.request("GET", path) as resp:
            await resp.read()
    async with connect(demo.url) as ws:
        assert (await ws.call(1, "Echo", {"message": "hi"}))[-1]["status"]["code"] == 0
        frames = await ws.call(2, "Tick", {"count": 3, "interval_ms": 1})
        assert frames[-1]["status"]["code"] == 0
        during = await scrape(demo.url)
    after = await scrape(demo.url)

    def delta(*labels: str) -> float:
        return calls(after, *labels) - calls(before, *labels)

    assert delta("/v1/users/{id}", GET_USER, "http", "OK") == 2
    assert delta("/v1/users/{id}", GET_USER, "http", "NOT_FOUND") == 1
    assert delta(f"/{ECHO}", ECHO, "ws", "OK") == 1
    assert delta(f"/{TICK}", TICK, "ws", "OK") == 1  # a stream counts once, when it ends
    assert not [k for k in after if "/v1/users/1" in str(k) or "/v1/users/404404" in str(k)]
    labels = {"route": "/v1/users/{id}", "method": GET_USER, "transport": "http", "code": "OK"}
    name = "bridge_request_duration_seconds"
    counted = value(after, f"{name}_count", **labels) - value(before, f"{name}_count", **labels)
    assert counted == 2
    assert value(after, f"{name}_bucket", **labels, le="30.0") >= 2
    assert value(after, f"{name}_bucket", **labels, le="0.0005") <= counted  # sub-ms bucket
    connections = "bridge_websocket_connections"
    assert value(during, connections) - value(before, connections) == 1
    assert value(after, connections) == value(before, connections)
    assert value(after, "bridge_websocket_calls") == value(before, "bridge_websocket_calls")
    assert all(name.startswith("bridge_") for name, _ in after)
    assert value(after, "bridge_registrations") == 0


async def test_rejections_and_upstream_errors(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    config = demo_config(
        users_server, echo_server,
        auth={"api_keys": {"keys": "alice=k-alice"}, "rules": [
            {"match": ECHO, "require": "api_key"}, {"match": "*", "require": "none"},
        ]},
        rate_limits=[{"match": GET_USER, "key": "ip", "rate": "1/m", "burst": 1}],
    )  # fmt: skip
    bridge = await start_bridge(config)
    before = await scrape(bridge.url)
    statuses = []
    for method, path in (("POST", "/v1/echo"), ("GET", "/v1/users/1"), ("GET", "/v1/users/1")):
        async with bridge.request(method, path, json={"message": "x"}) as resp:
            statuses.append(resp.status)
    async with bridge.request("GET", "/v1/fail/14") as resp:
        statuses.append(resp.status)
    assert statuses == [401, 200, 429, 503]
    after = await scrape(bridge.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bridge_rejections_total", reason="auth") == 1
    assert delta("bridge_rejections_total", reason="rate_limit") == 1
    assert calls(after, "/v1/echo", ECHO, "http", "UNAUTHENTICATED") >= 1
    assert delta("bridge_requests_total", route="/v1/users/{id}", method=GET_USER,
                 transport="http", code="RESOURCE_EXHAUSTED") == 1  # fmt: skip
    assert delta("bridge_upstream_errors_total", upstream="echo", code="UNAVAILABLE") == 1
    assert value(after, "bridge_unhealthy_targets", upstream="echo") == 0


async def test_workers_share_their_numbers(tmp_path: Path, echo_server: int) -> None:
    """With --workers 2 each scrape sums both workers: the count is every call made."""
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"protos: {{include: ['{PROTOS}']}}\nservices: {{'demo.*': echo}}\n"
        f"upstreams: {{echo: {{targets: ['127.0.0.1:{echo_server}']}}}}\n"
    )
    async with serving(config) as base:
        await eventually(base + "/healthz", 200, timeout=20)
        found = await eventually(base + "/v1/echo/hi", 200)  # 24 calls over fresh connections
        assert set(found) == {200}
        totals: set[Any] = set()
        for _ in range(8):  # fresh connections: the kernel spreads the scrapes too
            samples = await scrape(base)
            totals.add(calls(samples, "/v1/echo/{message}", ECHO, "http", "OK"))
        assert totals == {len(found)}, totals


# --- refusals before any method's chain, limits, and streams that fail midway ---------------

UNMATCHED = "(unmatched)"
FAST = {"header_timeout": "300ms", "body_timeout": "300ms", "max_body": "1KiB",
        "max_metadata": "1KiB", "ws_max_frame": "4KiB", "ws_max_calls": 1}  # fmt: skip
LIMIT = "bridge_rejections_total"


@pytest.fixture(autouse=True)
async def _raw_connections_closed() -> AsyncIterator[None]:
    yield
    await RawConnection.close_all()


def deltas(before: Samples, after: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What changed between two scrapes."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def test_requests_refused_before_a_chain_are_counted_with_bounded_labels(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    """No route (404), a method not allowed (405), a body refused at the edge (413) and a bad
    body for a matched route (400) are calls too: never under their raw path."""
    bridge = await start_bridge(demo_config(users_server, echo_server, limits=FAST))
    before = await scrape(bridge.url)
    sent = [("GET", "/no/such/7f3a", None), ("DELETE", "/v1/echo", None),
            ("POST", "/v1/echo", b"x" * 2000), ("POST", "/v1/echo", b"{not json")]  # fmt: skip
    statuses = []
    for method, path, body in sent:
        async with bridge.request(method, path, data=body) as resp:
            statuses.append(resp.status)
    async with connect(bridge.url) as ws:
        assert (await ws.call(1, "NoSuchMethod", {}))[-1]["status"]["code"] == 12
    assert statuses == [404, 405, 413, 400]
    after = await scrape(bridge.url)

    def delta(*labels: str) -> float:
        return calls(after, *labels) - calls(before, *labels)

    assert delta(UNMATCHED, "", "http", "NOT_FOUND") == 1
    assert delta(UNMATCHED, "", "http", "UNIMPLEMENTED") == 1  # the 405
    assert delta(UNMATCHED, "", "http", "RESOURCE_EXHAUSTED") == 1  # refused before routing
    assert delta("/v1/echo", ECHO, "http", "INVALID_ARGUMENT") == 1  # matched, never invoked
    assert delta(UNMATCHED, "", "ws", "UNIMPLEMENTED") == 1
    labels = {"route": UNMATCHED, "method": "", "transport": "http", "code": "NOT_FOUND"}
    name = "bridge_request_duration_seconds_count"
    assert value(after, name, **labels) - value(before, name, **labels) == 1
    assert not [k for k in after if "7f3a" in str(k) or "NoSuchMethod" in str(k)]


async def test_every_limit_refusal_is_counted_once(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(demo_config(users_server, echo_server, limits=FAST))
    counts = []
    base = value(await scrape(bridge.url), LIMIT, reason="limit")

    async def counted() -> float:
        counts.append(value(await scrape(bridge.url), LIMIT, reason="limit") - base)
        return counts[-1]

    # limits.header_timeout: a head begun and never finished is a 408.
    connection = await RawConnection.open(bridge.url)
    await connection.send(b"GET /healthz HTTP/1.1\r\n")
    (await connection.answer(3)).assert_status(408, 4, "limits.header_timeout")
    assert await counted() == 1
    # limits.body_timeout: a body that does not arrive in time is a 408.
    connection = await RawConnection.open(bridge.url)
    await connection.send(request("POST", "/v1/echo", "Content-Length: 900") + b"{")
    (await connection.answer(3)).assert_status(408, 4, "limits.body_timeout")
    assert await counted() == 2
    # limits.max_metadata: 400 before the backend.
    headers = {"Grpc-Metadata-x-blob": "v" * 1500}
    async with bridge.request("POST", "/v1/echo", json={"message": "x"}, headers=headers) as r:
        assert r.status == 400
    assert await counted() == 3
    # limits.max_body, declared: 413 at the edge.
    async with bridge.request("POST", "/v1/echo", data=b"x" * 2000) as resp:
        assert resp.status == 413
    assert await counted() == 4
    async with connect(bridge.url) as ws:
        await ws.start("stuck", "Tick", {"count": 2, "intervalMs": 100000})
        await ws.next("stuck")
        frames = await ws.call(2, "Echo", {"message": "x"})  # limits.ws_max_calls
        assert frames[-1]["status"]["code"] == 8
        assert await counted() == 5
        await ws.start(3, "Echo", {"message": "x" * 5000})  # limits.ws_max_frame
        assert await ws.closed() == 1009
    assert await eventually_counted(counted, 6)


async def eventually_counted(counted: Any, want: float) -> bool:
    """The socket's 1009 is counted as its read loop sees the error, just after the close."""
    for _ in range(50):
        if await counted() == want:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_refused_connection_is_counted(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    """limits.max_connections with every connection busy: the next is refused with a 503."""
    config = demo_config(users_server, echo_server, limits={"max_connections": 4})
    bridge = await start_bridge(config)
    base = value(await scrape(bridge.url), LIMIT, reason="limit")
    busy = [await RawConnection.open(bridge.url) for _ in range(4)]
    for connection in busy:
        await connection.send(request("GET", "/v1/ticks?count=0&interval_ms=200"))
        assert (await connection.answer()).status == 200
    refused = await RawConnection.open(bridge.url)
    await refused.send(request("GET", "/healthz"))
    (await refused.answer(1)).assert_status(503, 14, "limits.max_connections")
    for connection in busy:
        connection.close()
    await asyncio.sleep(0.2)  # the streams end and their connections leave
    assert value(await scrape(bridge.url), LIMIT, reason="limit") - base == 1


async def test_a_stream_failing_midway_carries_its_final_code(demo: Bridge) -> None:
    """A server stream whose backend fails after its first message: the call's code is the
    failure's, over NDJSON, SSE and WebSocket, and the upstream error is counted."""
    before = await scrape(demo.url)
    for accept in ("application/x-ndjson", "text/event-stream"):
        headers = {"Accept": accept}
        async with demo.request("GET", "/v1/ticks?count=5&fail_after=2", headers=headers) as r:
            assert r.status == 200 and b"tick source failed" in await r.read()
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Tick", {"count": 5, "intervalMs": 1, "failAfter": 2})
        assert frames[-1]["status"]["code"] == 14
    after = await scrape(demo.url)

    def delta(*labels: str) -> float:
        return calls(after, *labels) - calls(before, *labels)

    assert delta("/v1/ticks", TICK, "http", "UNAVAILABLE") == 2
    assert delta(f"/{TICK}", TICK, "ws", "UNAVAILABLE") == 1
    assert delta("/v1/ticks", TICK, "http", "OK") == 0
    errors = "bridge_upstream_errors_total"
    labels = {"upstream": "echo", "code": "UNAVAILABLE"}
    assert value(after, errors, **labels) - value(before, errors, **labels) == 3


async def test_refused_websocket_upgrades_are_counted(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    """Not an upgrade (400), an origin not allowed (403) and a bad key (401) are requests no
    call saw: route ``/ws``, transport ``ws``. Only the key is a rejection (auth); an origin is
    none of the SPEC's reasons."""
    config = demo_config(
        users_server, echo_server, cors={"allow_origins": ["http://localhost:3000"]},
        auth={"api_keys": {"keys": "alice=k-alice"}, "rules": [{"match": "*", "require": "none"}]},
    )  # fmt: skip
    bridge = await start_bridge(config)
    before = await scrape(bridge.url)
    async with bridge.request("GET", "/ws") as resp:
        assert resp.status == 400
    for headers, params, status in (({"Origin": "https://evil.example"}, {}, 403),
                                    ({}, {"x-api-key": "wrong"}, 401)):  # fmt: skip
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with connect(bridge.url, headers=headers, params=params):
                pass
        assert refused.value.status == status
    after = await scrape(bridge.url)
    changed = deltas(before, after)
    for code in ("INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED"):
        labels = {"route": "/ws", "method": "", "transport": "ws", "code": code}
        assert changed.pop(("bridge_requests_total", frozenset(labels.items()))) == 1
    assert {k: v for k, v in changed.items() if k[0] == LIMIT} == {
        (LIMIT, frozenset({("reason", "auth")})): 1
    }
