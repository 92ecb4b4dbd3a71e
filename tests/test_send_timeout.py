"""limits.send_timeout (SPEC section 6): a client that stops reading its stream is let go.

`SendWatch` alone first, against a stand-in transport; then the bridge in its own process (as
`bridge serve`, on uvloop when installed), with client sockets that are real peers that stop
reading, with small receive buffers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import pytest

from bridge.edge.stalls import SendWatch
from tests.conftest import demo_config
from tests.test_ws_limits import bridge_process
from tests.ws_client import ECHO, PROTOCOL, Backend, connect, text_frame

SEND_TIMEOUT: Final = 1.0
ENDLESS: Final = "/v1/ticks?count=0&payloadSize=65536"  # as fast as the client takes them
NDJSON: Final = "application/x-ndjson"
UPGRADE: Final = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    f"Sec-WebSocket-Key: {base64.b64encode(bytes(16)).decode()}\r\n"
    f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
)
LIMIT: Final = re.compile(r'^bridge_rejections_total\{reason="limit"\} (\S+)$', re.M)


class Held:
    """A transport as SendWatch sees it: output the client has not taken, and no socket."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_write_buffer_size(self) -> int:
        return self.size

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def watched(changes: list[int], every: float, timeout: float = 0.2) -> float | None:
    """Apply each change to the held output `every` seconds apart; when the watch gave up."""
    loop = asyncio.get_running_loop()
    held, start, stalled = Held(1_000_000), loop.time(), asyncio.Event()
    watch = SendWatch(loop, held, timeout, lambda _: stalled.set())  # type: ignore[arg-type]
    try:
        for change in changes:
            await asyncio.sleep(every)
            held.size += change
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stalled.wait(), timeout * 2)
            return loop.time() - start
        return None
    finally:
        watch.stop()


@pytest.mark.parametrize(
    ("changes", "stalls"),
    [
        pytest.param([], True, id="nothing-taken"),
        pytest.param([+65536, +65536], True, id="writers-add-nothing-taken"),
        pytest.param([-1] * 12, False, id="a-byte-taken-every-50ms"),
        pytest.param([+65536, -4096, -4096, -4096, -4096] * 3, False, id="taken-while-adding"),
    ],
)
async def test_the_watch_gives_up_only_on_output_that_stops_shrinking(
    changes: list[int], stalls: bool
) -> None:
    gave_up = await watched(changes, 0.05)
    if stalls:
        assert gave_up is not None and 0.17 <= gave_up < 0.3, gave_up  # 1 to 1.25 timeouts
    else:
        assert gave_up is None or gave_up > 0.6 + 0.17, gave_up  # only after the reads ended


async def test_a_stopped_watch_never_fires() -> None:
    loop = asyncio.get_running_loop()
    stalled = asyncio.Event()
    SendWatch(loop, Held(10), 0.1, lambda _: stalled.set()).stop()  # type: ignore[arg-type]
    await asyncio.sleep(0.25)
    assert not stalled.is_set()


@pytest.fixture
async def backend(echo_server: int) -> AsyncIterator[Backend]:
    backend = Backend(echo_server)
    yield backend
    await backend.channel.close()


@pytest.fixture
async def bridge(tmp_path: Path, users_server: int, echo_server: int) -> AsyncIterator[str]:
    limits = {"send_timeout": f"{SEND_TIMEOUT}s"}
    async with bridge_process(tmp_path, demo_config(users_server, echo_server, limits=limits)) as (
        _,
        url,
    ):
        yield url


async def rejected(url: str) -> float:
    """The bridge's bridge_rejections_total{reason="limit"}."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        found = LIMIT.search(await resp.text())
    return 0.0 if found is None else float(found[1])


@contextlib.asynccontextmanager
async def raw_stream(
    url: str, path: str, receive_buffer: int, *, upgrade: bool = False, accept: str = NDJSON
) -> AsyncIterator[socket.socket]:
    """A GET (or a /ws upgrade) whose response head has been read; the rest is the test's to
    read, or not. A small receive buffer (SO_RCVBUF) keeps the kernel from reading ahead."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        kind = UPGRADE if upgrade else f"Accept: {accept}\r\n\r\n"
        head = f"GET {path} HTTP/1.1\r\nHost: bridge\r\n{kind}"
        await loop.sock_sendall(sock, head.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        expected = b"HTTP/1.1 101" if upgrade else b"HTTP/1.1 200"
        assert received.startswith(expected), received[:200]
        yield sock
    finally:
        sock.close()


async def read_to_end(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything left on the socket until the bridge's side is closed."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(within):
        while chunk := await loop.sock_recv(sock, 1 << 20):
            data += chunk
    return bytes(data)


async def ended_at_the_backend(backend: Backend) -> float:
    """Seconds until the endless stream has ended at the backend: the bridge cancelled it.

    (Not `sees_cancelled`: a cancel that finds Tick blocked in a write reaches it as a failed
    write, which grpc.aio does not report as a cancelled context.)
    """
    return await backend.idle(within=4.0)


async def read_slowly(sock: socket.socket) -> None:
    """Read at most 64 KiB every 0.3 s for 3.6 s (over three send timeouts); stay connected."""
    loop = asyncio.get_running_loop()
    taken = 0
    for _ in range(12):
        await asyncio.sleep(0.3)
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 1)
        assert chunk, "the bridge closed a connection that was reading"
        taken += len(chunk)
    print(f"\nslow reader took {taken / 3.6 / 1024:.0f} KiB/s and stayed connected")


async def served_meanwhile(url: str) -> None:
    """Another client is answered at once while the stalled one is held."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/ticks?count=3") as resp:
        assert resp.status == 200
        assert (await resp.read()).count(b"\n") == 3
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("accept", [NDJSON, "text/event-stream"])
async def test_a_rest_stream_the_client_stops_reading_is_dropped(
    bridge: str, backend: Backend, tmp_path: Path, accept: str
) -> None:
    before = await rejected(bridge)
    async with raw_stream(bridge, ENDLESS, 16384, accept=accept) as sock:
        start = time.monotonic()  # the client reads nothing more from here on
        await asyncio.sleep(0.5)
        await served_meanwhile(bridge)
        waited = await ended_at_the_backend(backend) + 0.5
        assert SEND_TIMEOUT <= waited < SEND_TIMEOUT + 2.5, waited
        assert await rejected(bridge) == before + 1
        rest = await read_to_end(sock)  # what was on its way, then the end: no final chunk
        assert not rest.endswith(b"0\r\n\r\n")
    access = [line for line in (tmp_path / "bridge.log").read_text().splitlines() if "Tick" in line]
    assert '"grpc_code":"CANCELLED"' in access[-1], access  # the call did not end OK
    print(f"\nREST stream dropped {time.monotonic() - start:.2f}s after the client stopped")


async def test_a_rest_stream_read_slowly_but_steadily_is_not_dropped(
    bridge: str, backend: Backend
) -> None:
    before = await rejected(bridge)
    async with raw_stream(bridge, ENDLESS, 65536) as sock:
        await read_slowly(sock)
        assert (await backend.stats()).active == 1  # the endless stream still runs
        assert await rejected(bridge) == before


async def test_a_websocket_the_client_stops_reading_is_dropped(
    bridge: str, backend: Backend
) -> None:
    before = await rejected(bridge)
    async with connect(bridge, reading=False) as ws:
        await ws.start(1, "Tick", {"count": 0, "payloadSize": 65536})
        await ws.next(1)  # its headers; the client reads nothing more from here on
        await asyncio.sleep(0.5)
        async with connect(bridge) as other:  # other sockets are served meanwhile
            assert "status" in (await other.call(1, "Echo", {}))[-1]
        await served_meanwhile(bridge)
        waited = await ended_at_the_backend(backend) + 0.5
        assert SEND_TIMEOUT <= waited < SEND_TIMEOUT + 2.5, waited
        assert await rejected(bridge) == before + 1
        assert await ws.closed() == 1006  # dropped: no close frame reaches a client not reading


async def test_a_websocket_read_slowly_but_steadily_is_not_dropped(
    bridge: str, backend: Backend
) -> None:
    before = await rejected(bridge)
    start = {"id": 1, "method": ECHO + "Tick", "message": {"count": 0, "payloadSize": 16384}}
    async with raw_stream(bridge, "/ws", 65536, upgrade=True) as sock:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, text_frame(start))
        await read_slowly(sock)
        assert (await backend.stats()).active == 1  # the endless stream still runs
        assert await rejected(bridge) == before
