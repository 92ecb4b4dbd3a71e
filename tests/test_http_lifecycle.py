"""The life of a call: deadlines, clients that leave, backends that go away and come back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf import empty_pb2

import services  # noqa: F401  (puts the generated code on sys.path)
from services.echo.server import start as start_echo
from tests.conftest import Bridge, StartBridge, demo_config
from tests.ws_client import wait_for

from demo.echo.v1 import echo_pb2, echo_pb2_grpc

Stats = Callable[[], Awaitable[echo_pb2.Stats]]


def on_the_wire(seconds: float) -> float:
    """The most a backend may see of a deadline the bridge set to ``seconds``.

    gRPC encodes the time left as grpc-timeout with a few significant digits and rounds up
    ("encoding may round up arbitrarily", C-core timeout_encoding.h): 2 s may arrive as 2.01 s.
    """
    return seconds * 1.01 + 0.002


@pytest.fixture
async def echo_stats(echo_server: int) -> AsyncIterator[Stats]:
    """EchoService.GetStats called directly over gRPC, not through the bridge."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_server}")
    stub = echo_pb2_grpc.EchoServiceStub(channel)

    async def get() -> echo_pb2.Stats:
        return await stub.GetStats(empty_pb2.Empty(), timeout=2)

    yield get
    await channel.close()


class RawClient:
    """An HTTP/1.1 client on a bare socket, so a test can hang up whenever it wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def send(
        cls,
        bridge: Bridge,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> RawClient:
        url = urlsplit(bridge.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return cls(reader, writer)

    async def read_head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)

    async def read_until(self, marker: bytes) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(marker), 5)

    async def hang_up(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def echo_call(bridge: Bridge, headers: dict[str, str] | None = None, **fields: Any):
    return await bridge.json(
        "POST", "/v1/echo", json={"message": "hi", **fields}, headers=headers or {}
    )


def with_echo_timeout(config: dict[str, Any], timeout: str) -> dict[str, Any]:
    config["upstreams"]["echo"]["timeout"] = timeout
    return config


# --- deadlines -----------------------------------------------------------------------------


async def test_client_grpc_timeout_sets_the_deadline(demo):
    start = time.monotonic()
    status, body, headers = await echo_call(demo, {"grpc-timeout": "200m"}, sleep_ms=3000)
    elapsed = time.monotonic() - start
    assert status == 504, body
    assert body["code"] == 4
    assert headers["X-Request-Id"]
    assert elapsed < 1.0, elapsed


async def test_client_grpc_timeout_reaches_the_backend(demo):
    status, body, _ = await echo_call(demo, {"grpc-timeout": "2S"})
    assert status == 200, body
    assert 1.0 < body["deadlineRemaining"] <= on_the_wire(2.0)


async def test_upstream_timeout_caps_the_client_timeout(start_bridge, users_server, echo_server):
    bridge = await start_bridge(with_echo_timeout(demo_config(users_server, echo_server), "300ms"))
    start = time.monotonic()
    status, body, _ = await echo_call(bridge, {"grpc-timeout": "10S"}, sleep_ms=3000)
    elapsed = time.monotonic() - start
    assert status == 504, body
    assert body["code"] == 4
    assert elapsed < 1.0, elapsed

    status, body, _ = await echo_call(bridge, {"grpc-timeout": "10S"})
    assert status == 200, body
    assert 0 < body["deadlineRemaining"] <= on_the_wire(0.3)


async def test_upstream_timeout_is_the_default_deadline(start_bridge, users_server, echo_server):
    bridge = await start_bridge(with_echo_timeout(demo_config(users_server, echo_server), "300ms"))
    status, body, _ = await echo_call(bridge)
    assert status == 200, body
    assert 0 < body["deadlineRemaining"] <= on_the_wire(0.3)
    start = time.monotonic()
    status, body, _ = await echo_call(bridge, sleep_ms=3000)
    assert status == 504, body
    assert time.monotonic() - start < 1.0


async def test_grpc_timeout_on_a_stream_ends_it_with_an_error_line(demo):
    async with demo.request(
        "GET", "/v1/ticks?interval_ms=50", headers={"grpc-timeout": "300m"}
    ) as resp:
        assert resp.status == 200
        text = await asyncio.wait_for(resp.text(), 3)
    lines = [json.loads(line) for line in text.splitlines()]
    assert "result" in lines[0]
    assert lines[-1]["error"]["code"] == 4


@pytest.mark.parametrize("value", ["abc", "123456789S", "10s", "-1S", "1.5S", "10", "S", ""])
async def test_malformed_grpc_timeout_is_400_before_backend(demo, echo_stats, value):
    before = (await echo_stats()).started
    status, body, _ = await echo_call(demo, {"grpc-timeout": value})
    assert status == 400, body
    assert body["code"] == 3
    assert "grpc-timeout" in body["message"]
    assert (await echo_stats()).started == before


async def test_malformed_grpc_timeout_on_a_stream_is_400(demo, echo_stats):
    before = (await echo_stats()).started
    status, body, _ = await demo.json("GET", "/v1/ticks?count=1", headers={"grpc-timeout": "abc"})
    assert status == 400, body
    assert body["code"] == 3
    assert (await echo_stats()).started == before


# --- the client goes away ------------------------------------------------------------------


async def assert_backend_cancelled(echo_stats: Stats, method: str, before: int) -> None:
    async def cancelled() -> bool:
        return (await echo_stats()).cancelled_by_method[method] > before

    await wait_for(cancelled, 1.0, f"the backend to see {method} cancelled")


async def test_client_disconnect_cancels_a_unary_call(demo, echo_stats):
    stats = await echo_stats()
    started, completed = stats.started, stats.completed
    before = stats.cancelled_by_method["Echo"]
    body = json.dumps({"message": "slow", "sleep_ms": 5000}).encode()
    client = await RawClient.send(
        demo, "POST", "/v1/echo", body, {"Content-Type": "application/json"}
    )

    async def running() -> bool:
        return (await echo_stats()).started > started

    await wait_for(running, 2.0, "the backend to start the call")
    await asyncio.sleep(0.3)
    await client.hang_up()
    await assert_backend_cancelled(echo_stats, "Echo", before)
    assert (await echo_stats()).completed == completed


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_client_disconnect_cancels_a_server_stream(demo, echo_stats, accept):
    before = (await echo_stats()).cancelled_by_method["Tick"]
    client = await RawClient.send(
        demo, "GET", "/v1/ticks?interval_ms=100", headers={"Accept": accept}
    )
    head = await client.read_head()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert accept.encode() in head.lower()
    await client.read_until(b'"seq":"2"')  # mid-stream: a few messages have been delivered
    await client.hang_up()
    await assert_backend_cancelled(echo_stats, "Tick", before)


async def _text(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with bridge.request(method, path, **kwargs) as resp:
        return resp.status, await resp.text(), resp.headers


# --- the backend goes away and comes back --------------------------------------------------


class EchoBackend:
    """An EchoService that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server, self.port = await start_echo(self.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def echo_backend() -> AsyncIterator[EchoBackend]:
    backend = EchoBackend()
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
async def bridge_to_backend(
    start_bridge: StartBridge, users_server: int, echo_backend: EchoBackend
) -> Bridge:
    return await start_bridge(demo_config(users_server, echo_backend.port))


async def test_backend_down_then_back(bridge_to_backend, echo_backend):
    bridge = bridge_to_backend
    status, body, _ = await bridge.json("GET", "/readyz?upstreams=all")
    assert status == 200, body
    assert (await echo_call(bridge))[0] == 200

    await echo_backend.stop()

    start = time.monotonic()
    status, body, headers = await echo_call(bridge)
    assert status == 503, body
    assert body["code"] == 14
    assert headers["X-Request-Id"]
    assert time.monotonic() - start < 3.0
    status, body, _ = await bridge.json("GET", "/v1/ticks?count=1")
    assert status == 503, body
    assert body["code"] == 14

    status, body, _ = await bridge.json("GET", "/readyz?upstreams=all")
    assert status == 503, body
    assert body["ready"] is False
    echo = body["upstreams"]["echo"]
    assert echo["ready"] is False
    assert f"127.0.0.1:{echo_backend.port}" in echo["targets"]
    assert echo["targets"][f"127.0.0.1:{echo_backend.port}"] != "SERVING"
    assert body["upstreams"]["users"]["ready"] is True

    status, body, _ = await bridge.json("GET", "/healthz")
    assert status == 200, body

    await echo_backend.start()

    async def echo_ok() -> bool:
        return (await echo_call(bridge))[0] == 200

    async def ready() -> bool:
        return (await bridge.json("GET", "/readyz?upstreams=all"))[0] == 200

    await wait_for(echo_ok, 5.0, "calls to succeed after the backend restarted")
    await wait_for(ready, 5.0, "/readyz to be 200 after the backend restarted")
    status, text, _ = await _text(bridge, "GET", "/v1/ticks?count=2")
    assert status == 200, text
    assert len(text.splitlines()) == 2


async def test_healthz_is_200_with_every_backend_down(start_bridge, users_server):
    # An upstream nobody listens on: the process is still up.
    bridge = await start_bridge(demo_config(users_server, 1))
    status, body, _ = await bridge.json("GET", "/healthz")
    assert status == 200, body
    status, body, _ = await bridge.json("GET", "/readyz?upstreams=all")
    assert status == 503, body
    assert body["upstreams"]["echo"]["ready"] is False


async def test_readyz_detail_when_all_up(demo):
    status, body, headers = await demo.json("GET", "/readyz")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["ready"] is True
    assert set(body["upstreams"]) == {"users", "echo"}
    for detail in body["upstreams"].values():
        assert detail["ready"] is True
        assert detail["targets"]


# --- one stuck client does not stall the others --------------------------------------------


async def test_stuck_stream_does_not_block_other_clients(demo, echo_stats):
    before = (await echo_stats()).cancelled_by_method["Tick"]
    async with demo.request("GET", "/v1/ticks?count=2&interval_ms=30000") as stuck:
        assert stuck.status == 200
        first = json.loads(await asyncio.wait_for(stuck.content.readline(), 2))
        assert first["result"]["seq"] == "1"

        start = time.monotonic()
        results = await asyncio.gather(*(echo_call(demo, message=f"m{i}") for i in range(10)))
        assert [status for status, _, _ in results] == [200] * 10
        assert [body["message"] for _, body, _ in results] == [f"m{i}" for i in range(10)]
        status, body, _ = await demo.json("GET", "/v1/users/1")
        assert status == 200, body
        assert time.monotonic() - start < 2.0
        stuck.close()  # leave the stuck stream: the backend call must not linger
    await assert_backend_cancelled(echo_stats, "Tick", before)
