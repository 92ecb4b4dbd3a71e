"""Performance by design (SPEC section 9): a request only runs what was prepared beforehand.

After one request of each kind, the same requests again must not build a snapshot, a route
table, a request or response plan or a gRPC multicallable, look up a message class, resolve
a query parameter's field path, or render the OpenAPI document. Each of those is counted
while the requests run; a count above zero means something moved onto the request path.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import message_factory

from bridge import app as app_module
from bridge.registry.snapshot import Snapshot
from bridge.routing.table import RouteTable
from bridge.transcode import request as request_module
from bridge.transcode.request import RequestPlan
from bridge.transcode.response import ResponsePlan
from bridge.upstream import pool
from tests.conftest import Bridge
from tests.ws_client import connect, messages, status

OK = {"code": 0, "message": "", "details": []}
REPEATS = 5
WS_WARM_UP = [("w1", "Echo", {"message": "hi"}), ("w2", "Tick", {"count": 1})]

# (owner, attribute, what it prepares): everything that must happen once, not per request.
PREPARED: list[tuple[Any, str, str]] = [
    (Snapshot, "__init__", "a snapshot"),
    (RouteTable, "__init__", "a route table"),
    (RequestPlan, "__init__", "a request plan"),
    (ResponsePlan, "__init__", "a response plan"),
    (pool, "_make_stub", "a gRPC multicallable"),
    (message_factory, "GetMessageClass", "a message class lookup"),
    (request_module, "resolve", "a query parameter's field path"),
    (app_module, "openapi_document", "the OpenAPI document"),
]


@pytest.fixture
def prepared_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Counter[str]]:
    """Returns a function that starts counting calls of everything in PREPARED."""
    counts: Counter[str] = Counter()

    def counting(original: Any, what: str) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[what] += 1
            return original(*args, **kwargs)

        return counted

    def start() -> Counter[str]:
        for owner, name, what in PREPARED:
            monkeypatch.setattr(owner, name, counting(getattr(owner, name), what))
        return counts

    return start


async def _rest_requests(demo: Bridge) -> None:
    """One request of each REST kind; every one must succeed."""
    requests = [
        ("GET", "/v1/users/1", {}),
        ("GET", "/v1/users?pageSize=2&filter.city=Paris", {}),  # query parameters
        ("GET", "/v1/users/1/profile", {}),  # response_body
        ("POST", "/v1/echo", {"json": {"message": "hi", "number": "7"}}),
        ("GET", "/v1/echo/hello?number=3", {}),
        ("PATCH", "/v1/users/1", {"json": {"displayName": "Ada"}}),  # inferred update_mask
        ("GET", "/openapi.json", {}),
    ]
    for method, path, kwargs in requests:
        async with demo.request(method, path, **kwargs) as resp:
            assert resp.status == 200, (method, path, await resp.text())
            await resp.read()
    async with demo.request("GET", "/v1/ticks?count=3") as resp:
        assert resp.status == 200
        lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert len(lines) == 3 and all("result" in line for line in lines), lines


async def test_repeated_requests_prepare_nothing(demo: Bridge, prepared_calls) -> None:
    await _rest_requests(demo)  # the first requests may warm caches (a query field's path)
    counts = prepared_calls()
    for _ in range(REPEATS):
        await _rest_requests(demo)
    assert not +counts, f"prepared again on the request path: {dict(counts)}"


async def test_repeated_websocket_calls_prepare_nothing(demo: Bridge, prepared_calls) -> None:
    async with connect(demo.url) as ws:
        for call_id, method, message in WS_WARM_UP:  # each method's stub is built on first use
            assert status(await ws.call(call_id, method, message)) == OK
        counts = prepared_calls()
        for i in range(REPEATS):
            frames = await ws.call(i, "Echo", {"message": f"hi {i}"})
            assert messages(frames)[0]["message"] == f"hi {i}" and status(frames) == OK
            frames = await ws.call(f"t{i}", "Tick", {"count": 2})
            assert len(messages(frames)) == 2 and status(frames) == OK
    assert not +counts, f"prepared again on the request path: {dict(counts)}"


async def test_the_counts_catch_work_moved_onto_the_request_path(
    demo: Bridge, prepared_calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its cache, Upstream.stub builds a multicallable per request, and it shows."""
    await _rest_requests(demo)

    def uncached_stub(self: pool.Upstream, method: Any, target: Any) -> Any:
        return pool._make_stub(target.channel, method)

    monkeypatch.setattr(pool.Upstream, "stub", uncached_stub)
    counts = prepared_calls()
    await _rest_requests(demo)
    assert counts["a gRPC multicallable"] >= 6, dict(counts)
