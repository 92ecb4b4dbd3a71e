"""W3C Trace Context (SPEC section 8): the backend always sees one valid traceparent.

The rule alone (`bridge.observe.trace`), then REST, WebSocket and aggregate calls through a real
bridge to the echo service, whose Echo returns the metadata it received.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from bridge.observe.trace import new_traceparent, traced, valid_traceparent
from tests.conftest import Bridge, StartBridge, demo_config
from tests.ws_client import connect, messages

FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")
GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ECHO = "demo.echo.v1.EchoService/Echo"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        pytest.param(GIVEN, True, id="version-00"),
        pytest.param(GIVEN[:-2] + "00", True, id="not-sampled"),
        pytest.param("cc" + GIVEN[2:] + "-later-field", True, id="later-version-more-fields"),
        pytest.param("cc" + GIVEN[2:], True, id="later-version"),
        pytest.param(GIVEN + "-x", False, id="version-00-extra-field"),
        pytest.param("ff" + GIVEN[2:], False, id="version-ff"),
        pytest.param(f"00-{'0' * 32}-00f067aa0ba902b7-01", False, id="zero-trace-id"),
        pytest.param(f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", False, id="zero-parent"),
        pytest.param(GIVEN.upper(), False, id="uppercase"),
        pytest.param(GIVEN[:-1], False, id="short"),
        pytest.param("cc" + GIVEN[2:] + "x", False, id="later-version-no-dash"),
        pytest.param("", False, id="empty"),
    ],
)
def test_which_traceparents_are_honoured(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_new_traces_are_valid_and_distinct() -> None:
    made = {new_traceparent() for _ in range(100)}
    assert len(made) == 100 and all(FORMAT.fullmatch(t) and valid_traceparent(t) for t in made)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        pytest.param([("traceparent", GIVEN), ("tracestate", "a=1")], True, id="valid-kept"),
        pytest.param([], False, id="absent"),
        pytest.param([("traceparent", "junk"), ("tracestate", "a=1")], False, id="malformed"),
        pytest.param([("traceparent", "junk"), ("traceparent", GIVEN)], True, id="last-wins"),
    ],
)
def test_traced_metadata_has_one_valid_traceparent(given: list, kept: bool) -> None:
    out = traced([("x-request-id", "r"), *given])
    parents = [v for k, v in out if k == "traceparent"]
    assert len(parents) == 1 and valid_traceparent(parents[0])
    assert (parents[0] == GIVEN) is kept
    assert ("tracestate" in dict(out)) is (kept and "tracestate" in dict(given))
    assert ("x-request-id", "r") in out


async def test_rest_call_without_traceparent_starts_a_trace(demo: Bridge) -> None:
    seen = [(await demo.json("GET", "/v1/echo/hi"))[1]["metadata"] for _ in range(2)]
    assert all(FORMAT.fullmatch(s["traceparent"]) for s in seen)
    assert seen[0]["traceparent"] != seen[1]["traceparent"]  # one trace per request


async def test_rest_call_forwards_a_valid_trace_and_replaces_a_malformed_one(demo: Bridge) -> None:
    headers = {"traceparent": GIVEN, "tracestate": "vendor=1"}
    _, body, _ = await demo.json("GET", "/v1/echo/hi", headers=headers)
    assert (body["metadata"]["traceparent"], body["metadata"]["tracestate"]) == (GIVEN, "vendor=1")

    headers = {"traceparent": "00-nope", "tracestate": "vendor=1"}
    _, body, _ = await demo.json("GET", "/v1/echo/hi", headers=headers)
    assert FORMAT.fullmatch(body["metadata"]["traceparent"])
    assert "tracestate" not in body["metadata"]  # it belonged to the trace the spec ignores


async def test_websocket_calls_get_a_trace_each_or_keep_the_frames(demo: Bridge) -> None:
    async with connect(demo.url) as ws:
        first = messages(await ws.call(1, "Echo", {}))[0]["metadata"]
        second = messages(await ws.call(2, "Echo", {}))[0]["metadata"]
        given = messages(await ws.call(3, "Echo", {}, metadata={"traceparent": GIVEN}))[0]
    assert FORMAT.fullmatch(first["traceparent"]) and FORMAT.fullmatch(second["traceparent"])
    assert first["traceparent"] != second["traceparent"]
    assert given["metadata"]["traceparent"] == GIVEN


async def test_websocket_upgrade_trace_reaches_every_call(demo: Bridge) -> None:
    async with connect(demo.url, headers={"traceparent": GIVEN}) as ws:
        seen = [messages(await ws.call(i, "Echo", {}))[0]["metadata"] for i in range(2)]
    assert [s["traceparent"] for s in seen] == [GIVEN, GIVEN]


def pair_config(users_port: int, echo_port: int) -> dict[str, Any]:
    """The example services and ``GET /bff/v1/pair``, an aggregate of two Echo calls."""
    calls = {"a": {"method": ECHO, "request": {"message": "a"}},
             "b": {"method": ECHO, "request": {"message": "b"}}}  # fmt: skip
    aggregates = [{"route": "GET /bff/v1/pair", "calls": calls}]
    return demo_config(users_port, echo_port, aggregates=aggregates)


async def test_aggregate_children_share_the_parents_trace(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(pair_config(users_server, echo_server))
    _, body, _ = await bridge.json("GET", "/bff/v1/pair")
    started = body["a"]["metadata"]["traceparent"]
    assert FORMAT.fullmatch(started) and body["b"]["metadata"]["traceparent"] == started
    _, body, _ = await bridge.json("GET", "/bff/v1/pair", headers={"traceparent": GIVEN})
    assert body["a"]["metadata"]["traceparent"] == body["b"]["metadata"]["traceparent"] == GIVEN
