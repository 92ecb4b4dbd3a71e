"""One gRPC call made for a WebSocket client, run in its own task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from google.protobuf.message import Message

from bridge import errors
from bridge.errors import BridgeError
from bridge.registry.snapshot import Binding
from bridge.transcode.response import error_from_status
from bridge.upstream.metadata import Metadata, metadata_dict
from bridge.ws import frames
from bridge.ws.frames import CallId

# Request messages a client may queue ahead of a backend that reads slowly; more is an error
# rather than unbounded memory or stalling the socket's other calls.
INBOX_SIZE: Final = 64

Send = Callable[[bytes], Awaitable[None]]


class WsCall:
    """A call's lifetime: start the gRPC call, relay messages both ways, send one status."""

    def __init__(
        self,
        call_id: CallId,
        binding: Binding,
        stub: Callable[..., Any],
        metadata: Metadata,
        timeout: float | None,
        send: Send,
    ) -> None:
        self.id = call_id
        self.binding = binding
        self.method = binding.method
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        self._send = send
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue(INBOX_SIZE)
        self._end: BridgeError | None = None  # why the call was stopped from outside
        self._silent = False  # the socket is gone: no status frame to send
        self._running = False  # run() has begun, so cancelling its task reaches its handlers
        self.task: asyncio.Task[None] | None = None

    @property
    def takes_messages(self) -> bool:
        return self.method.client_streaming

    def feed(self, message: Any) -> None:
        """Queue one more request message (client and bidi streaming)."""
        request = self.parse(message)
        try:
            self._inbox.put_nowait(request)
        except asyncio.QueueFull:
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
        error: BridgeError | None = self._end  # stopped before it began: no backend call at all
        trailers: dict[str, str] | None = None
        if error is None and not self._silent:
            try:
                trailers = await self._relay(first)
            except BridgeError as exc:
                error = exc
            except grpc.aio.AioRpcError as exc:
                error = error_from_status(
                    exc.code().value[0], exc.details() or "", exc.trailing_metadata(),
                    self.binding.request.pool,
                )  # fmt: skip
                trailers = metadata_dict(exc.trailing_metadata())
            except asyncio.CancelledError:
                if self._end is None:
                    if not self._silent:
                        raise
                    return
                error = self._end
        if not self._silent:
            await self._send(frames.status(self.id, error, trailers))

    async def _relay(self, first: Message | None) -> dict[str, str]:
        options = {"timeout": self._timeout, "metadata": self._metadata}
        writer = None
        if self.method.client_streaming:
            call = self._stub(**options)
            writer = asyncio.create_task(self._write(call, first))
        else:
            call = self._stub(first, **options)
        try:
            headers = await call.initial_metadata()
            if headers:
                await self._send(frames.dumps({"id": self.id, "headers": metadata_dict(headers)}))
            if self.method.server_streaming:
                while (message := await call.read()) is not grpc.aio.EOF:
                    await self._message(message)
            else:
                await self._message(await call)
            return metadata_dict(await call.trailing_metadata())
        finally:
            if writer is not None:
                writer.cancel()
            if not call.done():
                call.cancel()  # the backend must see a cancelled call, not a dangling one

    async def _message(self, message: Message) -> None:
        value = self.binding.response.to_dict(message)
        await self._send(frames.dumps({"id": self.id, "message": value}))

    async def _write(self, call: Any, first: Message | None) -> None:
        """Pass queued request messages to the backend, respecting its flow control."""
        try:
            if first is not None:
                await call.write(first)
            while (request := await self._inbox.get()) is not None:
                await call.write(request)
            await call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the call already ended; its reader reports the status
