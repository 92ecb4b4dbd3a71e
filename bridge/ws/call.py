"""One gRPC call made for a WebSocket client, run in its own task.

The socket state lives here (the queue of request messages, whether a status is owed); the
call itself is the method's ``invoke``, as for every transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from google.protobuf.message import Message

from bridge import errors
from bridge.call import Call
from bridge.errors import BridgeError
from bridge.observe import log
from bridge.observe.metrics import REJECTED_LIMIT
from bridge.upstream.metadata import REQUEST_ID, metadata_dict
from bridge.ws import frames
from bridge.ws.frames import CallId

# Request messages a client may queue ahead of a backend that reads slowly; more is an error
# rather than unbounded memory or stalling the socket's other calls.
INBOX_SIZE: Final = 64

Send = Callable[[bytes], Awaitable[None]]


class WsCall:
    """A call's lifetime on a socket: relay messages both ways, send exactly one status."""

    def __init__(self, call_id: CallId, call: Call, send: Send) -> None:
        self.id = call_id
        self.call = call
        self.binding = call.binding
        self.method = call.binding.method
        self.rid = call.request_id
        self._send = send
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue(INBOX_SIZE)
        self._end: BridgeError | None = None  # why the call was stopped from outside
        self._silent = False  # the socket is gone: no status frame to send
        self._running = False  # run() has begun, so cancelling its task reaches its handlers
        self.task: asyncio.Task[None] | None = None
        self.bytes_in = 0  # the call's frames from the client, for the access log
        self.bytes_out = 0

    @property
    def takes_messages(self) -> bool:
        return self.method.client_streaming

    def feed(self, message: Any) -> None:
        """Queue one more request message (client and bidi streaming)."""
        request = self.parse(message)
        try:
            self._inbox.put_nowait(request)
        except asyncio.QueueFull:
            REJECTED_LIMIT.inc()
            raise BridgeError(
                errors.RESOURCE_EXHAUSTED,
                f"more than {INBOX_SIZE} request messages queued ahead of the backend",
            ) from None

    def parse(self, message: Any) -> Message:
        return self.binding.request.from_json(message, "message")

    def half_close(self) -> None:
        try:
            self._inbox.put_nowait(None)
        except asyncio.QueueFull:
            self.stop(errors.invalid_argument("half-close with the request queue full"))

    def stop(self, reason: BridgeError | None) -> None:
        """Cancel the call; ``reason`` is sent as its status, None when the socket is gone."""
        if self._end is None and not self._silent:
            self._end = reason
            self._silent = reason is None
        # A task cancelled before its first step never runs its body: no status frame, and the
        # session never frees the id. Such a call finds the stop when run() begins instead.
        if self.task is not None and self._running:
            self.task.cancel()

    async def run(self, first: Message | None) -> None:
        """Make the call and send its frames; always ends with exactly one status frame."""
        self._running = True
        started = time.perf_counter()
        code = errors.CANCELLED  # what the access log says unless the call ends otherwise
        try:
            code = await self._run(first)
        except Exception:
            code = errors.INTERNAL  # a bug: the session logs it and sends the status
            raise
        finally:
            self._log(started, code)

    async def _run(self, first: Message | None) -> int:
        error: BridgeError | None = self._end  # stopped before it began: no backend call at all
        trailers: dict[str, str] | None = None
        if error is None and not self._silent:
            try:
                trailers = await self._relay(first)
            except BridgeError as exc:
                error = exc
                trailers = metadata_dict(exc.trailers)
            except asyncio.CancelledError:
                if self._end is None:
                    if not self._silent:
                        raise
                    return errors.CANCELLED
                error = self._end
        if not self._silent:
            await self._emit(frames.status(self.id, error, trailers))
        return errors.OK if error is None else error.code

    def _log(self, started: float, code: int) -> None:
        call = self.call
        log.access(
            request_id=self.rid,
            subject=None if call.principal is None else call.principal.subject,
            transport=call.transport, method=self.method.full_name, route="/ws",
            http_status=None, grpc_code=code, started=started,
            bytes_in=self.bytes_in, bytes_out=self.bytes_out,
        )  # fmt: skip

    async def _emit(self, frame: bytes) -> None:
        self.bytes_out += len(frame)
        await self._send(frame)

    async def _relay(self, first: Message | None) -> dict[str, str]:
        call = self.call
        if self.method.client_streaming:
            call.request = _Requests(first, self._inbox)
        reply = await call.binding.invoke(call)
        try:
            # The backend's headers, and what the policy steps added (x-cache,
            # x-bridge-fallback, ratelimit-*), as lowercase metadata keys; and the request id.
            headers = metadata_dict(reply.initial)
            for name, value in call.response_headers.items():
                headers.setdefault(name.lower(), value)
            headers[REQUEST_ID] = self.rid
            await self._emit(frames.dumps({"id": self.id, "headers": headers}))
            while (message := await reply.next()) is not None:
                value = self.binding.response.to_dict(message)
                await self._emit(frames.dumps({"id": self.id, "message": value}))
            return metadata_dict(await reply.trailers())
        finally:
            reply.cancel()  # the backend must see a cancelled call, not a dangling one


class _Requests:
    """A call's queued request messages, as gRPC reads them (its flow control paces it).

    A class, not an async generator: when a call ends, gRPC cancels the task reading it in
    the middle of a read, and an async generator left suspended there is closed later by the
    event loop's finalizer, which fails ("aclose(): asynchronous generator is already
    running") as an exception nobody retrieves.
    """

    __slots__ = ("_first", "_inbox")

    def __init__(self, first: Message | None, inbox: asyncio.Queue[Message | None]) -> None:
        self._first = first
        self._inbox = inbox

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Message:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        request = await self._inbox.get()
        if request is None:  # the client half-closed
            raise StopAsyncIteration
        return request
