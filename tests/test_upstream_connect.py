"""Upstream channels: a slow HTTP/2 handshake is waited for; a restarted backend is found fast."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from bridge.upstream.pool import CHANNEL_OPTIONS, CONNECT_TIMEOUT_MS
from tests.conftest import Bridge, StartBridge, demo_config


class SlowStartProxy:
    """A TCP proxy on 127.0.0.1 that holds each connection's first bytes from the backend.

    The client's bytes go through at once; what the backend answers (its HTTP/2 SETTINGS first)
    reaches the client only ``delay`` seconds after the connection was accepted, as from a
    backend that is slow to complete its handshake.
    """

    def __init__(self, backend_port: int, delay: float) -> None:
        self.backend_port = backend_port
        self.delay = delay
        self.port = 0
        self.server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> SlowStartProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backend_r, backend_w = await asyncio.open_connection("127.0.0.1", self.backend_port)
        pumps = [
            asyncio.create_task(_pump(client_r, backend_w, 0.0)),
            asyncio.create_task(_pump(backend_r, client_w, self.delay)),
        ]
        self._pumps.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_w, backend_w):
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
    await asyncio.sleep(hold)
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def slow_echo(echo_server: int) -> AsyncIterator[SlowStartProxy]:
    proxy = await SlowStartProxy(echo_server, delay=1.5).start()
    yield proxy
    await proxy.stop()


def echo_upstream(port: int, timeout: str = "5s") -> dict:
    # The users upstream is never called here: its channel never connects.
    config = demo_config(users_port=port, echo_port=port)
    config["upstreams"]["echo"]["timeout"] = timeout
    return config


async def test_a_backend_slow_to_send_its_settings_is_reached(
    start_bridge: StartBridge, slow_echo: SlowStartProxy
):
    bridge = await start_bridge(echo_upstream(slow_echo.port))
    started = time.monotonic()
    status, body, _ = await bridge.json("GET", "/v1/echo/hello")
    elapsed = time.monotonic() - started
    assert (status, body.get("message")) == (200, "hello"), body
    assert elapsed >= 1.4, "the proxy must really have held the handshake"
    # Once connected the channel is kept: the next call does not wait for a handshake again.
    started = time.monotonic()
    status, body, _ = await bridge.json("GET", "/v1/echo/again")
    assert (status, body.get("message")) == (200, "again"), body
    assert time.monotonic() - started < 1.0


async def _echo_until_served(bridge: Bridge, deadline: float) -> float:
    """Call the echo route every 20 ms until it answers 200; return when that was."""
    while time.monotonic() < deadline:
        async with bridge.request("GET", "/v1/echo/back") as resp:
            if resp.status == 200:
                return time.monotonic()
            assert resp.status in (503, 504), await resp.text()
        await asyncio.sleep(0.02)
    raise AssertionError("the restarted backend was not reached")


async def test_a_restarted_backend_is_reached_again_within_about_a_second(
    start_bridge: StartBridge,
):
    from services.echo.server import start as start_echo

    server, port = await start_echo(0)
    bridge = await start_bridge(echo_upstream(port))
    assert (await bridge.json("GET", "/v1/echo/up"))[0] == 200
    await server.stop(None)
    # Down long enough for several failed attempts: with gRPC's default backoff (1 s, x1.6, up
    # to 120 s) the next attempt would come 3-5 s apart by now; the bridge's come 1.2 s at most.
    down_until = time.monotonic() + 6.0
    while time.monotonic() < down_until:
        status, body, _ = await bridge.json("GET", "/v1/echo/down")
        assert (status, body["code"]) == (503, 14), body
        await asyncio.sleep(0.1)
    server, _ = await start_echo(port)
    try:
        restarted = time.monotonic()
        served = await _echo_until_served(bridge, restarted + 5.0)
        assert served - restarted < 1.5, f"reconnected after {served - restarted:.2f}s"
    finally:
        await server.stop(None)


def test_the_connect_timeout_is_not_the_reconnect_backoff():
    """grpc.min_reconnect_backoff_ms is gRPC core's MIN_CONNECT_TIMEOUT, not a backoff."""
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.min_reconnect_backoff_ms"] == CONNECT_TIMEOUT_MS >= 10_000


async def test_retired_upstreams_are_closed_at_shutdown_too():
    """A replaced upstream waits for its calls to end; shutdown must not leave it open."""
    from grpc import ChannelConnectivity

    from bridge.config import UpstreamSettings
    from bridge.upstream.pool import Upstreams

    upstreams = Upstreams([UpstreamSettings(name="team", targets=("127.0.0.1:1",))])
    old = upstreams["team"]
    upstreams.replace(UpstreamSettings(name="team", targets=("127.0.0.1:2",)))
    new = upstreams["team"]
    assert old.channels[0].get_state() is not ChannelConnectivity.SHUTDOWN  # still draining
    await upstreams.close()
    for upstream in (old, new):
        assert upstream.channels[0].get_state() is ChannelConnectivity.SHUTDOWN
