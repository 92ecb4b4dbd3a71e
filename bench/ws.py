"""The WebSocket load (SPEC section 4 frames): server streams counted, idle sockets held.

No HTTP load tool speaks the bridge's call protocol, so this is the one place a Python client
(aiohttp, on uvloop) makes the load. It reads about 100,000 streamed frames/s on the 2-CPU
bench machine when they come in bulk, well above what is measured; the bench reports its CPU
per message anyway, so a client-bound result would show as one.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from aiohttp import WSMsgType

from bench.processes import BenchError

PROTOCOL: Final = "bridge.v1"
STREAM: Final = "demo.bench.v1.BenchService/Stream"
ECHO: Final = "demo.bench.v1.BenchService/Echo"
FRAME_WAIT: Final = 30.0  # the longest any one frame is waited for
CONNECT_WAIT: Final = 30.0


def client_session() -> aiohttp.ClientSession:
    """A session with no cap on connections (the idle scenario holds thousands)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_WAIT)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


# --- streaming --------------------------------------------------------------------------


@dataclass
class StreamRun:
    """Server-streamed messages received over some sockets, and how long that took."""

    sockets: int
    messages: int
    seconds: float
    first_message_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


async def connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """One /ws connection offering the bridge.v1 subprotocol."""
    ws = await session.ws_connect(url, protocols=(PROTOCOL,), autoclose=True, autoping=True,
                                  max_msg_size=0, compress=0)  # fmt: skip
    if ws.protocol != PROTOCOL:
        await ws.close()
        raise BenchError(f"/ws did not select the {PROTOCOL} subprotocol")
    return ws


async def stream_call(
    ws: aiohttp.ClientWebSocketResponse, call_id: int, count: int, message: str
) -> tuple[int, float]:
    """Start one Stream call of count messages; read to its status: (messages, first ms).

    Frames are told apart by their first bytes (``{"id":N,"message"``), not parsed: the
    client costs about 8 µs per message when the bridge streams fast.
    """
    start = {"id": call_id, "method": STREAM, "message": {"message": message, "count": count}}
    at = len(f'{{"id":{call_id},')
    t0 = time.perf_counter()
    first = 0.0
    await ws.send_str(json.dumps(start))
    received = 0
    while True:
        msg = await ws.receive(timeout=FRAME_WAIT)
        if msg.type != WSMsgType.TEXT:
            raise BenchError(f"/ws ended a Stream call early: {msg.type.name} {msg.data!r}")
        data: str = msg.data
        if data.startswith('"message"', at):
            received += 1
            if received == 1:
                first = (time.perf_counter() - t0) * 1000
        elif data.startswith('"status"', at):
            status = json.loads(data)["status"]
            if status.get("code") != 0 or received != count:
                raise BenchError(f"Stream call {call_id}: {received} of {count} messages, "
                                 f"status {status}")  # fmt: skip
            return received, first
        elif not data.startswith('"headers"', at):
            raise BenchError(f"unexpected frame on a Stream call: {data[:200]}")


async def stream(
    sockets: Sequence[aiohttp.ClientWebSocketResponse], per_socket: int, message: str
) -> StreamRun:
    """One Stream call of per_socket messages on each socket, all at once."""
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(stream_call(ws, i + 1, per_socket, message) for i, ws in enumerate(sockets))
    )
    seconds = time.perf_counter() - t0
    return StreamRun(len(sockets), sum(r[0] for r in results), seconds, [r[1] for r in results])


# --- idle sockets -----------------------------------------------------------------------


class IdleSocket:
    """An open /ws that keeps reading (so heartbeat pings get their pongs) and queues frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.frames.put_nowait(msg.data)

    async def echo(self, call_id: int) -> bool:
        """Make one unary Echo call on this socket; True when it came back OK with the message."""
        start = {"id": call_id, "method": ECHO, "message": {"message": "still here"}}
        await self.ws.send_str(json.dumps(start))
        reply: dict[str, Any] = {}
        ok = False
        while "status" not in reply:
            reply = json.loads(await asyncio.wait_for(self.frames.get(), FRAME_WAIT))
            if reply.get("message", {}).get("message") == "still here":
                ok = True
        return bool(reply["status"].get("code") == 0 and ok)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


@dataclass
class Opened:
    """The outcome of opening many sockets."""

    sockets: list[IdleSocket]
    seconds: float
    handshake_ms: list[float]
    failures: Counter[str]


async def open_idle(session: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> Opened:
    """Open n sockets, at most ``concurrency`` handshakes at a time; failures are counted."""
    gate = asyncio.Semaphore(concurrency)
    sockets: list[IdleSocket] = []
    handshakes: list[float] = []
    failures: Counter[str] = Counter()

    async def one() -> None:
        async with gate:
            t0 = time.perf_counter()
            try:
                ws = await connect(session, url)
            except Exception as exc:  # every kind of failure is a result here, not a crash
                failures[_failure_kind(exc)] += 1
                return
            handshakes.append((time.perf_counter() - t0) * 1000)
            sockets.append(IdleSocket(ws))

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return Opened(sockets, time.perf_counter() - t0, handshakes, failures)


def _failure_kind(exc: BaseException) -> str:
    """A short name for why a connection failed, calling out the open-files limit."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.EMFILE:
            return "EMFILE (open files limit)"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {str(exc)[:80]}"


async def close_all(sockets: Sequence[IdleSocket], concurrency: int) -> None:
    """Close every socket, at most ``concurrency`` closing handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(s: IdleSocket) -> None:
        async with gate:
            try:
                await asyncio.wait_for(s.close(), FRAME_WAIT)
            except (TimeoutError, OSError, aiohttp.ClientError):
                pass

    await asyncio.gather(*(one(s) for s in sockets))
