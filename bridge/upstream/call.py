"""Generic gRPC calls by method: deadlines, cancellation and backend errors as BridgeError."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from bridge.errors import BridgeError
from bridge.transcode.response import error_from_status
from bridge.upstream.metadata import Metadata, response_headers


def deadline(requested: float | None, cap: float, streaming: bool) -> float | None:
    """A call's timeout: the client's capped by the upstream's; streams get none by default."""
    if requested is None:
        return None if streaming else cap
    return min(requested, cap)


def rpc_error(exc: grpc.aio.AioRpcError, pool: DescriptorPool | None) -> BridgeError:
    """A backend failure as a BridgeError carrying its details and metadata headers."""
    trailing = exc.trailing_metadata()
    error = error_from_status(exc.code().value[0], exc.details() or "", trailing, pool)
    error.headers.update(response_headers(exc.initial_metadata(), trailing))
    return error


async def unary(
    stub: Any,
    request: Message | Iterable[Message],
    timeout: float | None,
    metadata: Metadata,
    pool: DescriptorPool,
) -> tuple[Message, dict[str, str]]:
    """Make a call with one response; returns it with its metadata as response headers."""
    call = stub(request, timeout=timeout, metadata=metadata)
    try:
        reply = await call
        headers = response_headers(await call.initial_metadata(), await call.trailing_metadata())
    except grpc.aio.AioRpcError as exc:
        raise rpc_error(exc, pool) from None
    except asyncio.CancelledError:
        call.cancel()  # the client went away: the backend must see it too
        raise
    return reply, headers


class Stream:
    """A call with a stream of responses, read one message at a time; always cancel or finish."""

    def __init__(self, call: Any, pool: DescriptorPool) -> None:
        self._call = call
        self._pool = pool

    async def first(self) -> tuple[Message | None, dict[str, str]]:
        """The first message (None when the stream is empty) and the initial metadata."""
        message = await self.next()
        try:
            initial = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self._pool) from None
        return message, response_headers(initial, None)

    async def next(self) -> Message | None:
        """The next message, None at a clean end; a BridgeError when the call fails."""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self._pool) from None
        if message is grpc.aio.EOF:
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                raise error_from_status(code.value[0], await self._call.details(), None, self._pool)
            return None
        return message

    async def trailers(self) -> Iterable[tuple[str, str | bytes]]:
        return await self._call.trailing_metadata() or ()

    def cancel(self) -> None:
        if not self._call.done():
            self._call.cancel()
