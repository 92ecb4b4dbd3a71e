"""A test client for the bridge's WebSocket endpoint (SPEC section 4) and the echo backend's stats.

A ``WsClient`` sorts the frames it receives by call id, so a test sends frames and collects one
call's frames until its status. It reads in a background task, or only when asked (``reading``
False), which is how a test plays a browser that stops reading.
"""

from __future__ import annotations  # noqa: I001  (services before demo.*)

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
import grpc
import pytest
from aiohttp import WSMsgType
from google.protobuf import empty_pb2

import services  # noqa: F401  (puts the generated code on sys.path, so before demo.*)
from demo.echo.v1 import echo_pb2, echo_pb2_grpc

PROTOCOL: Final = "bridge.v1"
ECHO: Final = "demo.echo.v1.EchoService/"
WAIT: Final = 5.0  # the longest any single frame is waited for

Frame = dict[str, Any]


class WsClient:
    """One /ws connection: frames out as dicts, frames in queued per call id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._calls: defaultdict[Any, asyncio.Queue[Frame]] = defaultdict(asyncio.Queue)
        self.errors: asyncio.Queue[Frame] = asyncio.Queue()
        self.starts: Counter[Any] = Counter()  # start frames sent per call id
        self.statuses: Counter[Any] = Counter()  # status frames seen per call id
        self.close_code: int | None = None
        self.ended = asyncio.Event()  # the bridge closed the socket (or it dropped)
        self._reader: asyncio.Task[None] | None = None

    # --- sending -------------------------------------------------------------------------

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def start(self, call_id: Any, method: str, message: Any = None, **extra: Any) -> None:
        """A start frame; ``method`` without a service means EchoService's."""
        frame: Frame = {"id": call_id, "method": method if "/" in method else ECHO + method}
        if message is not None:
            frame["message"] = message
        self.starts[call_id] += 1
        await self.send({**frame, **extra})

    async def call(
        self, call_id: Any, method: str, message: Any = None, **extra: Any
    ) -> list[Frame]:
        """Start a call and return its frames up to and including its status."""
        await self.start(call_id, method, message, **extra)
        return await self.until_status(call_id)

    # --- receiving -----------------------------------------------------------------------

    def start_reading(self) -> None:
        """Read in the background from now on (a browser that reads as fast as frames come)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        while not self.ended.is_set():
            await self.read_one(None)

    async def read_one(self, timeout: float | None = WAIT) -> None:
        """Read and sort one frame from the socket (when not reading in the background)."""
        try:
            msg = await self.ws.receive(timeout)
        except TimeoutError:
            pytest.fail(f"nothing received within {timeout}s")
        if msg.type == WSMsgType.TEXT:
            frame = json.loads(msg.data)
            if "id" not in frame:
                self.errors.put_nowait(frame)
                return
            if "status" in frame:
                self.statuses[frame["id"]] += 1
            self._calls[frame["id"]].put_nowait(frame)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            self.close_code = self.ws.close_code
            self.ended.set()

    async def next(self, call_id: Any, timeout: float = WAIT) -> Frame:
        """The next frame of a call; reads the socket itself unless a reader task runs."""
        queue = self._calls[call_id]
        deadline = time.monotonic() + timeout
        while self._reader is None and queue.empty():
            assert not self.ended.is_set(), f"socket closed ({self.close_code}) before {call_id!r}"
            await self.read_one(max(deadline - time.monotonic(), 0.01))
        try:
            return await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            pytest.fail(f"call {call_id!r}: no frame within {timeout}s")

    async def until_status(self, call_id: Any, timeout: float = WAIT) -> list[Frame]:
        """A call's frames up to and including its status frame."""
        deadline = time.monotonic() + timeout
        frames = [await self.next(call_id, timeout)]
        while "status" not in frames[-1]:
            frames.append(await self.next(call_id, max(deadline - time.monotonic(), 0.01)))
        return frames

    async def error(self, timeout: float = WAIT) -> Frame:
        """The next ``error`` frame (one tied to no call)."""
        while self._reader is None and self.errors.empty():
            await self.read_one(timeout)
        try:
            return (await asyncio.wait_for(self.errors.get(), timeout))["error"]
        except TimeoutError:
            pytest.fail(f"no error frame within {timeout}s")

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Wait for the bridge to close the socket; returns the close code."""
        if self._reader is None:
            self.start_reading()
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"the bridge did not close the socket within {timeout}s")
        return self.close_code

    def pending(self, call_id: Any) -> int:
        """Frames of a call received but not yet collected."""
        return self._calls[call_id].qsize()

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.ws.close()


@asynccontextmanager
async def connect(url: str, *, reading: bool = True, **kwargs: Any) -> AsyncIterator[WsClient]:
    """A /ws connection on its own HTTP session; on exit, no call may have had two statuses."""
    kwargs.setdefault("timeout", aiohttp.ClientWSTimeout(ws_close=2.0))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "/ws", protocols=(PROTOCOL,), **kwargs)
        client = WsClient(ws)
        if reading:
            client.start_reading()
        try:
            yield client
            extra = {i: n for i, n in client.statuses.items() if n > client.starts[i]}
            assert not extra, f"more status frames than calls: {extra}"
        finally:
            await client.stop()


# --- reading frames --------------------------------------------------------------------------


def messages(frames: list[Frame]) -> list[Any]:
    return [f["message"] for f in frames if "message" in f]


def status(frames: list[Frame]) -> dict[str, Any]:
    """The status of a call's frames, which must end with exactly one status frame."""
    assert "status" in frames[-1], frames[-1]
    assert not [f for f in frames[:-1] if "status" in f], frames
    return frames[-1]["status"]


def seqs(frames: list[Frame]) -> list[int]:
    return [int(m["seq"]) for m in messages(frames)]


# --- the echo backend, seen directly over gRPC ----------------------------------------------


class Backend:
    """EchoService.GetStats called directly, not through the bridge."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = echo_pb2_grpc.EchoServiceStub(self.channel)

    async def stats(self) -> echo_pb2.Stats:
        return await self.stub.GetStats(empty_pb2.Empty(), timeout=2)

    async def cancelled(self, method: str) -> int:
        return (await self.stats()).cancelled_by_method[method]

    async def idle(self, within: float = 1.0) -> float:
        """Wait until no call is running at the backend.

        For Sum and Chat this is all a test can see: grpc.aio hands a cancelled client stream
        to the handler as the end of its input, so it returns normally and counts as completed.
        """

        async def idle() -> bool:
            return (await self.stats()).active == 0

        return await wait_for(idle, within, "the backend to have no call running")

    async def sees_cancelled(self, method: str, count: int, within: float = 1.0) -> float:
        """Wait until the backend has seen ``count`` cancelled calls of ``method``."""

        async def seen() -> bool:
            return await self.cancelled(method) >= count

        return await wait_for(seen, within, f"the backend to see {count} {method} cancelled")


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll every 20 ms until predicate holds; returns the seconds it took, fails after timeout."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


# --- raw WebSocket: the test writes the handshake and the frame bytes itself -----------------

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
CLIENT_MASK: Final = b"\x37\xfa\x21\x3d"


def ws_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True,
    mask: bytes = CLIENT_MASK,
) -> bytes:  # fmt: skip
    """One WebSocket frame as a client would write it (masked unless told not to)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = (mask * (size // 4 + 1))[:size]
    return (
        head
        + mask
        + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    )


def text_frame(frame: Frame | str, **options: Any) -> bytes:
    """A text frame holding a JSON frame (or the given text)."""
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return ws_frame(OP_TEXT, text.encode(), **options)


class RawWs:
    """A /ws connection on a bare TCP stream: frames go out as given, come in as (opcode, data)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next frame from the bridge (servers never mask); IncompleteReadError at EOF."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(await self.reader.readexactly(2), "big")
            elif size == 127:
                size = int.from_bytes(await self.reader.readexactly(8), "big")
            assert not second & 0x80, "the bridge masked a frame"
            return first & 0x0F, await self.reader.readexactly(size)

    async def json(self, timeout: float = WAIT) -> Frame:
        """The next frame, which must be a JSON text frame."""
        opcode, data = await self.frame(timeout)
        assert opcode == OP_TEXT, (opcode, data)
        return json.loads(data)

    async def close_code(self, timeout: float = WAIT) -> int:
        """Read frames up to the bridge's close frame; returns its code."""
        while True:
            opcode, data = await self.frame(timeout)
            if opcode == OP_CLOSE:
                return int.from_bytes(data[:2], "big")

    async def eof(self, timeout: float = WAIT) -> bool:
        """Whether the bridge ends the stream (and sends nothing more) within timeout."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False

    def reset(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed client would."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


@asynccontextmanager
async def raw_connect(
    url: str, *, early: bytes = b"", send_buffer: int | None = None
) -> AsyncIterator[RawWs]:
    """A /ws connection made by hand; ``early`` bytes go out with the upgrade request itself.

    A small ``send_buffer`` (SO_SNDBUF) keeps a large frame from fitting in the kernel's buffers
    at once, so sending it completes only if the bridge reads it.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n".encode()
        + early
    )
    try:
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield RawWs(reader, writer)
    finally:
        writer.transport.abort()
