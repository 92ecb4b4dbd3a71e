"""GET /metrics (SPEC 8): real calls over REST and WebSocket against a real bridge, read back
from the Prometheus text as prometheus-client's own parser reads it.

The metric objects live for the test process, which runs many bridges: each test compares
the numbers before and after its calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROTOS, Bridge, StartBridge, demo_config
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
