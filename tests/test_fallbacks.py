"""Fallbacks over real HTTP and WebSocket (SPEC 7): a bridge with `fallbacks` in front of a real
echo backend that fails on demand (Fail with a code) or is stopped; the configured answer with
X-Bridge-Fallback for the listed codes, every other failure passed through, a stale cache entry
preferred to the default, and a response that does not fit refused at start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import pytest

from bridge.registry import SnapshotError
from tests.conftest import Bridge, StartBridge, demo_config
from tests.ws_client import connect, messages, status

ECHO: Final = "demo.echo.v1.EchoService/Echo"
FAIL: Final = "demo.echo.v1.EchoService/Fail"
ON: Final = ["UNAVAILABLE", "DEADLINE_EXCEEDED"]
FALLBACKS: Final = [
    {"match": FAIL, "on": ON, "response": {}},
    {"match": ECHO, "on": ON, "response": {"message": "default", "metadata": {"from": "bridge"}}},
]


@pytest.fixture
async def echo() -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    from services.echo.server import start as start_echo

    server, port = await start_echo(0)
    yield server, port
    await server.stop(None)


@pytest.fixture
async def bridge(start_bridge: StartBridge, echo: tuple[grpc.aio.Server, int]) -> Bridge:
    return await start_bridge(demo_config(echo[1], echo[1], fallbacks=FALLBACKS))


@pytest.mark.parametrize("code", [14, 4], ids=["unavailable", "deadline-exceeded"])
async def test_a_listed_code_is_answered_with_the_default_over_rest(
    bridge: Bridge, code: int
) -> None:
    status_code, body, headers = await bridge.json("GET", f"/v1/fail/{code}")
    assert (status_code, body, headers["X-Bridge-Fallback"]) == (200, {}, "true")


@pytest.mark.parametrize("code", [5, 13, 3], ids=["not-found", "internal", "invalid-argument"])
async def test_an_unlisted_code_passes_through(bridge: Bridge, code: int) -> None:
    status_code, body, headers = await bridge.json("GET", f"/v1/fail/{code}")
    assert status_code >= 400
    assert body["code"] == code
    assert "X-Bridge-Fallback" not in headers


async def test_a_success_is_not_marked(bridge: Bridge) -> None:
    status_code, body, headers = await bridge.json("GET", "/v1/echo/hi")
    assert (status_code, body["message"]) == (200, "hi")
    assert "X-Bridge-Fallback" not in headers


async def test_the_default_answers_fast_when_the_backend_is_down(
    bridge: Bridge, echo: tuple[grpc.aio.Server, int]
) -> None:
    await echo[0].stop(None)
    began = time.monotonic()
    for _ in range(2):  # a fresh copy each time
        status_code, body, headers = await bridge.json("POST", "/v1/echo", json={"message": "x"})
        assert (status_code, headers["X-Bridge-Fallback"]) == (200, "true")
        assert (body["message"], body["metadata"]) == ("default", {"from": "bridge"})
    assert time.monotonic() - began < 2


async def test_fallbacks_over_websocket(bridge: Bridge, echo: tuple[grpc.aio.Server, int]) -> None:
    async with connect(bridge.url) as ws:
        frames = await ws.call(1, "Fail", {"code": 14})
        assert frames[0]["headers"]["x-bridge-fallback"] == "true"
        assert (messages(frames), status(frames)["code"]) == ([{}], 0)

        frames = await ws.call(2, "Fail", {"code": 5})
        assert (messages(frames), status(frames)["code"]) == ([], 5)
        assert not [f for f in frames if "headers" in f]

        await echo[0].stop(None)
        frames = await ws.call(3, "Echo", {"message": "x"})
        assert frames[0]["headers"]["x-bridge-fallback"] == "true"
        assert messages(frames)[0]["message"] == "default"
        assert status(frames)["code"] == 0


async def test_a_stale_cache_entry_answers_before_the_default(
    start_bridge: StartBridge, echo: tuple[grpc.aio.Server, int]
) -> None:
    cache = [{"match": ECHO, "ttl": "100ms", "stale_if_error": "1m"}]
    bridge = await start_bridge(demo_config(echo[1], echo[1], fallbacks=FALLBACKS, cache=cache))
    await bridge.json("GET", "/v1/echo/cached")
    await asyncio.sleep(0.15)  # past the ttl
    await echo[0].stop(None)
    status_code, body, headers = await bridge.json("GET", "/v1/echo/cached")
    assert (status_code, body["message"], headers["X-Cache"]) == (200, "cached", "STALE")
    assert headers["X-Bridge-Fallback"] == "true"
    status_code, body, headers = await bridge.json("GET", "/v1/echo/never-cached")
    assert (status_code, body["message"], headers["X-Cache"]) == (200, "default", "MISS")
    assert headers["X-Bridge-Fallback"] == "true"
    status_code, body, headers = await bridge.json("GET", "/v1/echo/never-cached")
    assert (body["message"], headers["X-Cache"]) == ("default", "MISS")  # a default is not stored


@pytest.mark.parametrize(
    "rule, says",
    [
        pytest.param({"match": ECHO, "on": ON, "response": {"mesage": "x"}},
                     r"fallbacks\[0\] \(demo.echo.v1.EchoService/Echo\): response does not fit "
                     r"demo.echo.v1.EchoResponse.*mesage", id="unknown-field"),
        pytest.param({"match": "demo.echo.v1.*", "on": ON, "response": {"message": "x"}},
                     r"fallbacks\[0\] .*does not fit google.protobuf.Empty, the response of "
                     r"demo.echo.v1.EchoService/Fail", id="glob-over-other-types"),
        pytest.param({"match": "demo.echo.v1.EchoService/Tick", "on": ON, "response": {}},
                     r"fallbacks\[0\] .*Tick is a server_streaming method", id="stream"),
    ],
)  # fmt: skip
async def test_a_rule_that_cannot_answer_is_refused_at_start(
    start_bridge: StartBridge, echo: tuple[grpc.aio.Server, int], rule: dict[str, Any], says: str
) -> None:
    with pytest.raises(SnapshotError, match=says):
        await start_bridge(demo_config(echo[1], echo[1], fallbacks=[rule]))
