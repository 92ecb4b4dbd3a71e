"""One WebSocket connection: reads frames, starts and feeds calls, never blocks one on another."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from bridge import errors
from bridge.call import WEBSOCKET, Call, Principal
from bridge.errors import BridgeError
from bridge.observe import metrics
from bridge.observe.metrics import REJECTED_LIMIT
from bridge.observe.trace import traced
from bridge.registry import Registry
from bridge.upstream.metadata import (
    REQUEST_ID,
    Metadata,
    client_request_id,
    extend_metadata,
    new_request_id,
)
from bridge.ws import frames
from bridge.ws.call import WsCall
from bridge.ws.frames import CallId, Frame, FrameError

# How long a closing socket waits for its calls to cancel their backend calls.
_DRAIN_SECONDS: Final = 2.0

log = logging.getLogger("bridge.ws")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a socket, as established at its upgrade."""

    address: str | None  # the client's address (X-Forwarded-For only from trusted proxies)
    headers: Mapping[str, str]  # the upgrade's headers, where its calls' credentials come from
    metadata: Metadata  # the upgrade headers forwarded to the backend on every call
    principal: Principal | None = None  # authenticated at the upgrade


class Session:
    """The calls of one socket by id; each runs in its own task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        registry: Registry,
        peer: Peer,
        *,
        max_calls: int,
        max_metadata: int,
    ) -> None:
        self.ws = ws
        self.registry = registry
        self.peer = peer
        self.max_calls = max_calls
        self.max_metadata = max_metadata
        self.calls: dict[CallId, WsCall] = {}

    async def serve(self) -> None:
        """Read frames until the socket closes, then cancel whatever is still open."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        await self._on_text(msg.data)
                    except Exception:  # a bug: this frame fails, the socket and its calls go on
                        bug = errors.internal(log, "a WebSocket frame", "none")
                        await self.send(frames.error(bug.code, bug.message))
                elif msg.type == WSMsgType.BINARY:
                    await self.send(
                        frames.error(errors.INVALID_ARGUMENT, "frames must be JSON text")
                    )
                elif msg.type == WSMsgType.ERROR and _too_big(msg.data):
                    REJECTED_LIMIT.inc()  # limits.ws_max_frame: aiohttp closes with 1009
        finally:
            await self.stop_all(None)

    async def stop_all(self, reason: BridgeError | None) -> None:
        """End every open call (sending ``reason`` as its status unless None) and wait briefly."""
        calls = list(self.calls.values())
        for call in calls:
            call.stop(reason)
        tasks = [c.task for c in calls if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_DRAIN_SECONDS)

    async def send(self, frame: bytes) -> None:
        """Send a frame (UTF-8 JSON); waits while the client is not reading (backpressure)."""
        if self.ws.closed:
            return
        try:
            await self.ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            # The socket closed under us (aiohttp raises ClientConnectionResetError, or a
            # plain ConnectionError from a send waiting on a full socket): the read loop ends
            # and cancels the calls.
            pass

    async def _on_text(self, text: str) -> None:
        try:
            frame = frames.parse(text)
        except FrameError as exc:
            await self.send(frames.error(exc.code, exc.message))
            return
        call = self.calls.get(frame.id)
        if frame.method is not None:
            if call is not None:
                await self._frame_error(f"call id {frame.id!r} is already open")
            else:
                await self._start(frame, _size(text))
            return
        if call is None:
            # A cancel or end may cross the call's status frame on the wire; like RST_STREAM
            # on a closed HTTP/2 stream, it is ignored. A message for no call is an error.
            if not frame.has_message and (frame.cancel or frame.end):
                return
            await self._frame_error(f"no open call with id {frame.id!r}")
            return
        call.bytes_in += _size(text)
        await self._follow_up(call, frame)

    async def _follow_up(self, call: WsCall, frame: Frame) -> None:
        """Handle a message, half-close or cancel frame for an open call."""
        if frame.problem is not None:
            call.stop(errors.invalid_argument(frame.problem))
            return
        if frame.cancel:
            call.stop(BridgeError(errors.CANCELLED, "cancelled by the client"))
            return
        if not (frame.has_message or frame.end):
            await self._frame_error(f"call {frame.id!r}: expected message, end or cancel")
            return
        if not call.takes_messages:
            await self._frame_error(
                f"call {frame.id!r} ({call.method.kind}) takes no more messages"
            )
            return
        try:
            if frame.has_message:
                call.feed(frame.message)
        except BridgeError as exc:
            call.stop(exc)
            return
        if frame.end:
            call.half_close()

    async def _start(self, frame: Frame, size: int) -> None:
        started = time.perf_counter()
        try:
            call, first = self._prepare(frame)
        except BridgeError as exc:
            # Refused before the method's chain: counted here (unknown method: "(unmatched)").
            name = (frame.method or "").removeprefix("/")
            metrics.refused(WEBSOCKET, exc.code, started, self.registry.snapshot.bindings.get(name))
            await self.send(frames.status(frame.id, exc, None))
            return
        except Exception:
            bug = errors.internal(log, f"starting WebSocket call {frame.id!r}", "none yet")
            await self.send(frames.status(frame.id, bug, None))
            return
        self.calls[frame.id] = call
        call.bytes_in = size
        call.task = asyncio.create_task(self._run(call, first))
        if frame.end and call.takes_messages:
            call.half_close()  # a client stream sent whole in its start frame

    async def _run(self, call: WsCall, first: Any) -> None:
        """A call's task: whatever happens, its exception is retrieved here, not by the loop."""
        try:
            await call.run(first)
        except Exception:
            # A bug, not something a client did: logged, and the call still gets its status.
            what = f"WebSocket call {call.id!r} ({call.method.full_name})"
            await self.send(frames.status(call.id, errors.internal(log, what, call.rid), None))
        finally:
            self.calls.pop(call.id, None)

    def _prepare(self, frame: Frame) -> tuple[WsCall, Any]:
        """Check a start frame and build its call; a BridgeError becomes the call's status."""
        assert frame.method is not None
        if frame.problem is not None:
            raise errors.invalid_argument(frame.problem)
        name = frame.method.removeprefix("/")
        binding = self.registry.snapshot.bindings.get(name)
        if binding is None:
            raise BridgeError(errors.UNIMPLEMENTED, f"unknown method {name!r}")
        if len(self.calls) >= self.max_calls:
            REJECTED_LIMIT.inc()
            raise BridgeError(
                errors.RESOURCE_EXHAUSTED, f"more than {self.max_calls} open calls on this socket"
            )
        method = binding.method
        first = None
        if frame.has_message and frame.message is not None:
            first = binding.request.from_json(frame.message, "message")
        elif not method.client_streaming:
            raise errors.invalid_argument(
                f"{name} is {method.kind}: the start frame needs a message"
            )
        peer = self.peer
        rid, metadata = self._metadata(frame.metadata)
        timeout = _seconds(frame.timeout)
        call = Call(
            binding, first, metadata, timeout, peer.address, WEBSOCKET, rid, peer.headers,
            peer.principal,
        )  # fmt: skip
        return WsCall(frame.id, call, self.send), first

    def _metadata(self, given: Any) -> tuple[str, Metadata]:
        """The call's request id (the client's ``x-request-id`` when sane, else a new one) and
        its metadata: the upgrade's, the frame's, and a trace (`bridge.observe.trace`)."""
        if given is not None and not isinstance(given, dict):
            raise errors.invalid_argument("metadata must be a JSON object of strings")
        pairs = [(str(k).lower(), v) for k, v in (given or {}).items()]
        rid = client_request_id(next((v for k, v in pairs if k == REQUEST_ID), None))
        rid = rid or new_request_id()
        base = [(REQUEST_ID, rid), *self.peer.metadata]
        return rid, traced(extend_metadata(base, pairs, self.max_metadata))

    async def _frame_error(self, message: str) -> None:
        await self.send(frames.error(errors.INVALID_ARGUMENT, message))


def _too_big(error: object) -> bool:
    """Whether a read failed on a frame over ``max_msg_size`` (limits.ws_max_frame)."""
    return isinstance(error, WebSocketError) and error.code == WSCloseCode.MESSAGE_TOO_BIG


def _size(text: str) -> int:
    """A text frame's size in UTF-8 bytes (no copy for ASCII, which ``isascii`` knows at once)."""
    return len(text) if text.isascii() else len(text.encode())


def _seconds(timeout: Any) -> float | None:
    """The start frame's ``timeout``: a positive number of seconds, or absent."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise errors.invalid_argument("timeout must be a number of seconds")
    if not math.isfinite(timeout) or timeout <= 0:
        raise errors.invalid_argument("timeout must be a positive number of seconds")
    return float(timeout)
