"""The response cache over real HTTP and WebSocket (SPEC 7): a bridge with `cache` rules in front
of a real echo backend that counts the calls it receives (GetStats, asked directly over gRPC).
Echo's answer carries the request id and the caller's x-bridge-subject, so an answer served
from the cache is told by its body as well as by X-Cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import pytest

from bridge.registry import SnapshotError
from tests.conftest import Bridge, StartBridge, demo_config
from tests.ws_client import Backend, connect, messages, status

ECHO: Final = "demo.echo.v1.EchoService/Echo"
ALICE_KEY: Final = "alice-key-0123456789"
BOB_KEY: Final = "bob-key-9876543210"


class Echo:
    """A real echo backend this test may stop, and the calls it has received."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.backend = Backend(port)

    async def calls(self) -> int:
        return (await self.backend.stats()).started

    async def stop(self) -> None:
        await self.backend.channel.close()
        await self.server.stop(None)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    from services.echo.server import start as start_echo

    server, port = await start_echo(0)
    backend = Echo(server, port)
    yield backend
    await backend.stop()


def cache_config(echo: Echo, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return demo_config(echo.port, echo.port, cache=list(rules), **extra)


def rule(**fields: Any) -> dict[str, Any]:
    return {"match": ECHO, "ttl": "30s", **fields}


async def get(bridge: Bridge, path: str, **kwargs: Any) -> tuple[int, Any, str | None]:
    status_code, body, headers = await bridge.json("GET", path, **kwargs)
    return status_code, body, headers.get("X-Cache")


def api_keys(**more: Any) -> dict[str, Any]:
    keys = f"alice={ALICE_KEY},bob={BOB_KEY}"
    return {"api_keys": {"keys": keys}, "rules": [{"match": "*", "require": "api_key"}], **more}


async def test_miss_then_hit_makes_one_backend_call(start_bridge: StartBridge, echo: Echo) -> None:
    bridge = await start_bridge(cache_config(echo, rule()))
    code, first, mark = await get(bridge, "/v1/echo/hi")
    assert (code, mark) == (200, "MISS")
    code, again, mark = await get(bridge, "/v1/echo/hi")
    assert (code, mark) == (200, "HIT")
    assert again == first  # the first call's request id and all: the stored answer
    assert await echo.calls() == 1
    code, other, mark = await get(bridge, "/v1/echo/other")  # another request, another entry
    assert (code, other["message"], mark) == (200, "other", "MISS")
    assert await echo.calls() == 2


async def test_an_entry_expires_after_its_ttl(start_bridge: StartBridge, echo: Echo) -> None:
    bridge = await start_bridge(cache_config(echo, rule(ttl="300ms")))
    assert (await get(bridge, "/v1/echo/hi"))[2] == "MISS"
    assert (await get(bridge, "/v1/echo/hi"))[2] == "HIT"
    await asyncio.sleep(0.35)
    assert (await get(bridge, "/v1/echo/hi"))[2] == "MISS"
    assert await echo.calls() == 2


async def test_two_subjects_never_see_each_others_entry(
    start_bridge: StartBridge, echo: Echo
) -> None:
    config = cache_config(echo, rule(vary=["subject"]), auth=api_keys())
    bridge = await start_bridge(config)
    seen = {}
    for name, key in [("alice", ALICE_KEY), ("bob", BOB_KEY)] * 2:
        code, body, mark = await get(bridge, "/v1/echo/mine", headers={"x-api-key": key})
        assert code == 200
        assert body["metadata"]["x-bridge-subject"] == name  # the backend answered this subject
        seen.setdefault(name, []).append(mark)
    assert seen == {"alice": ["MISS", "HIT"], "bob": ["MISS", "HIT"]}
    assert await echo.calls() == 2


async def test_without_subject_in_vary_every_caller_shares_the_entry(
    start_bridge: StartBridge, echo: Echo
) -> None:
    """What vary: [subject] prevents: the same rule without it hands Alice's answer to Bob."""
    bridge = await start_bridge(cache_config(echo, rule(), auth=api_keys()))
    await get(bridge, "/v1/echo/mine", headers={"x-api-key": ALICE_KEY})
    code, body, mark = await get(bridge, "/v1/echo/mine", headers={"x-api-key": BOB_KEY})
    assert (code, mark, body["metadata"]["x-bridge-subject"]) == (200, "HIT", "alice")


async def test_the_cache_answers_after_auth(start_bridge: StartBridge, echo: Echo) -> None:
    bridge = await start_bridge(cache_config(echo, rule(vary=["subject"]), auth=api_keys()))
    await get(bridge, "/v1/echo/mine", headers={"x-api-key": ALICE_KEY})
    assert (await get(bridge, "/v1/echo/mine"))[0] == 401
    assert (await get(bridge, "/v1/echo/mine", headers={"x-api-key": "wrong"}))[0] == 401


async def test_vary_header_keeps_tenants_apart(start_bridge: StartBridge, echo: Echo) -> None:
    bridge = await start_bridge(cache_config(echo, rule(vary=["header:x-tenant"])))
    marks = [
        (await get(bridge, "/v1/echo/hi", headers={"X-Tenant": tenant}))[2]
        for tenant in ["a", "b", "a", "b"]
    ]
    assert marks == ["MISS", "MISS", "HIT", "HIT"]
    assert (await get(bridge, "/v1/echo/hi"))[2] == "MISS"  # no header is a tenant of its own
    assert await echo.calls() == 3


async def test_concurrent_misses_make_one_backend_call(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge = await start_bridge(cache_config(echo, rule()))
    answers = await asyncio.gather(*(get(bridge, "/v1/echo/slow?sleepMs=300") for _ in range(20)))
    assert {code for code, _, _ in answers} == {200}
    first = answers[0][1]
    assert all(body == first for _, body, _ in answers)  # all of them the one backend answer
    assert await echo.calls() == 1


async def test_errors_are_never_cached(start_bridge: StartBridge, echo: Echo) -> None:
    fail = "demo.echo.v1.EchoService/Fail"
    bridge = await start_bridge(cache_config(echo, rule(match=fail)))
    for _ in range(2):
        code, body, mark = await get(bridge, "/v1/fail/5")
        assert (code, body["code"], mark) == (404, 5, "MISS")
    assert await echo.calls() == 2
    assert [(await get(bridge, "/v1/fail/0"))[2] for _ in range(2)] == ["MISS", "HIT"]


async def test_a_stale_entry_answers_when_the_backend_is_down(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge = await start_bridge(cache_config(echo, rule(ttl="200ms", stale_if_error="1m")))
    _, first, _ = await get(bridge, "/v1/echo/hi")
    await asyncio.sleep(0.25)
    await echo.stop()
    began = time.monotonic()
    async with bridge.request("GET", "/v1/echo/hi") as resp:
        assert resp.status == 200
        assert (resp.headers["X-Cache"], resp.headers["X-Bridge-Fallback"]) == ("STALE", "true")
        assert await resp.json() == first
    code, body, mark = await get(bridge, "/v1/echo/never-cached")
    assert (code, body["code"], mark) == (503, 14, "MISS")
    assert time.monotonic() - began < 2  # a fast 503, not a timeout


async def test_an_entry_past_stale_if_error_does_not_answer(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge = await start_bridge(cache_config(echo, rule(ttl="100ms", stale_if_error="200ms")))
    await get(bridge, "/v1/echo/hi")
    await echo.stop()
    await asyncio.sleep(0.35)
    assert (await get(bridge, "/v1/echo/hi"))[0] == 503


async def test_websocket_calls_share_the_cache_and_see_x_cache(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge = await start_bridge(cache_config(echo, rule()))
    await get(bridge, "/v1/echo/hi")  # stored by a REST call
    async with connect(bridge.url) as ws:
        frames = await ws.call(1, "Echo", {"message": "hi"})
        assert status(frames)["code"] == 0
        assert frames[0]["headers"]["x-cache"] == "HIT"
        assert messages(frames)[0]["message"] == "hi"
        frames = await ws.call(2, "Echo", {"message": "new"})
        assert frames[0]["headers"]["x-cache"] == "MISS"
    assert await echo.calls() == 2


async def test_browsers_may_read_the_cache_marks(start_bridge: StartBridge, echo: Echo) -> None:
    app = "https://app.example"
    rules = [rule(ttl="100ms", stale_if_error="1m")]
    bridge = await start_bridge(cache_config(echo, *rules, cors={"allow_origins": [app]}))
    await get(bridge, "/v1/echo/hi")
    await asyncio.sleep(0.15)
    await echo.stop()
    async with bridge.request("GET", "/v1/echo/hi", headers={"Origin": app}) as resp:
        exposed = resp.headers["Access-Control-Expose-Headers"].split(", ")
        assert {"X-Cache", "X-Bridge-Fallback"} <= set(exposed)


async def test_streams_are_never_cached(start_bridge: StartBridge, echo: Echo) -> None:
    bridge = await start_bridge(cache_config(echo, {"match": "demo.echo.v1.*", "ttl": "30s"}))
    for _ in range(2):
        async with bridge.request("GET", "/v1/ticks?count=2") as resp:
            assert resp.status == 200
            assert "X-Cache" not in resp.headers
            await resp.read()
    assert await echo.calls() == 2


async def test_a_rule_naming_a_stream_is_refused_at_start(
    start_bridge: StartBridge, echo: Echo
) -> None:
    tick = {"match": "demo.echo.v1.EchoService/Tick", "ttl": "30s"}
    with pytest.raises(SnapshotError, match=r"cache\[0\] .*Tick is a server_streaming method"):
        await start_bridge(cache_config(echo, tick))


async def slow_echo(start_bridge: StartBridge, echo: Echo, ms: int) -> tuple[Bridge, str]:
    """A bridge caching Echo, and the path of an Echo call that takes ``ms`` to answer."""
    return await start_bridge(cache_config(echo, rule())), f"/v1/echo/slow?sleepMs={ms}"


async def in_flight(bridge: Bridge, path: str, **kwargs: Any) -> asyncio.Task[Any]:
    """A first request, given time to start its backend call: the next ones wait on it."""
    first = asyncio.create_task(get(bridge, path, **kwargs))
    await asyncio.sleep(0.05)
    return first


async def test_a_callers_own_short_deadline_is_not_shared(
    start_bridge: StartBridge, echo: Echo
) -> None:
    """A slow backend: the first caller's 100 ms deadline ends its call alone; the caller
    waiting on it with a long deadline asks again and gets the answer."""
    bridge, path = await slow_echo(start_bridge, echo, 300)
    short = await in_flight(bridge, path, headers={"grpc-timeout": "100m"})
    code, body, mark = await get(bridge, path, headers={"grpc-timeout": "10S"})
    assert (code, body["message"], mark) == (200, "slow", "MISS")
    code, error, _ = await short
    assert (code, error["code"]) == (504, 4)
    assert await echo.calls() == 2


async def test_a_waiting_callers_own_deadline_ends_its_wait(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge, path = await slow_echo(start_bridge, echo, 500)
    slow = await in_flight(bridge, path)
    began = time.monotonic()
    code, error, _ = await get(bridge, path, headers={"grpc-timeout": "100m"})
    assert (code, error["code"]) == (504, 4)
    assert time.monotonic() - began < 0.35  # at its own deadline, not the slow call's end
    assert (await slow)[0] == 200
    assert await echo.calls() == 1


async def test_a_client_that_left_hands_the_backend_call_on(
    start_bridge: StartBridge, echo: Echo
) -> None:
    bridge, path = await slow_echo(start_bridge, echo, 300)
    gone = await in_flight(bridge, path)
    waiting = await in_flight(bridge, path)
    gone.cancel()  # the first client hangs up: the bridge cancels its call
    with pytest.raises(asyncio.CancelledError):
        await gone
    code, body, mark = await waiting
    assert (code, body["message"], mark) == (200, "slow", "MISS")
    assert await echo.calls() == 2
