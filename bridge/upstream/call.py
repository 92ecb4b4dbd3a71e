"""The terminal step of every chain: pick a target, set the deadline, make the gRPC call.

Whatever the call kind, the answer is a `Reply`: a unary call (and a client stream) is awaited
whole, so its failure is raised here where a policy step can see it; a server stream is handed
back once the backend sent its initial metadata, and its failures surface from ``next()``.
Backend failures become `BridgeError`s in this module only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from bridge.call import Call, Reply
from bridge.errors import BridgeError
from bridge.transcode.response import error_from_status
from bridge.upstream.metadata import SUBJECT, Metadata, response_headers
from bridge.upstream.pool import Upstreams


def deadline(requested: float | None, cap: float, streaming: bool) -> float | None:
    """A call's timeout: the client's capped by the upstream's; streams get none by default."""
    if requested is None:
        return None if streaming else cap
    return min(requested, cap)


def rpc_error(exc: grpc.aio.AioRpcError, pool: DescriptorPool | None) -> BridgeError:
    """A backend failure as a BridgeError carrying its details, headers and trailers."""
    trailing = exc.trailing_metadata()
    error = error_from_status(exc.code().value[0], exc.details() or "", trailing, pool)
    error.headers.update(response_headers(exc.initial_metadata(), trailing))
    error.trailers = list(trailing or ())
    return error


class Upstream:
    """``invoke`` at the end of every chain: the call made on one of its upstream's targets."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    async def __call__(self, call: Call) -> Reply:
        method = call.binding.method
        upstream = self.upstreams[method.upstream]
        timeout = deadline(call.timeout, upstream.timeout, method.server_streaming)
        metadata = call.metadata
        if call.principal is not None:  # never from the client: the metadata rule drops it
            metadata = [*metadata, (SUBJECT, call.principal.subject)]
        pool = call.binding.request.pool
        grpc_call = upstream.stub(method)(call.request, timeout=timeout, metadata=metadata)
        try:
            if method.server_streaming:
                return StreamReply(grpc_call, pool, list(await grpc_call.initial_metadata()))
            message = await grpc_call
            initial = await grpc_call.initial_metadata()
            return UnaryReply(message, list(initial), list(await grpc_call.trailing_metadata()))
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, pool) from None
        except asyncio.CancelledError:
            grpc_call.cancel()  # the client went away: the backend must see it too
            raise


class UnaryReply:
    """A reply of exactly one message, already received."""

    __slots__ = ("_message", "_trailers", "initial")

    def __init__(self, message: Message, initial: Metadata, trailers: Metadata) -> None:
        self._message: Message | None = message
        self.initial = initial
        self._trailers = trailers

    async def next(self) -> Message | None:
        message, self._message = self._message, None
        return message

    async def trailers(self) -> Metadata:
        return self._trailers

    def cancel(self) -> None:
        pass


class StreamReply:
    """A server stream, read one message at a time."""

    __slots__ = ("_call", "_pool", "initial")

    def __init__(self, call: Any, pool: DescriptorPool, initial: Metadata) -> None:
        self._call = call
        self._pool = pool
        self.initial = initial

    async def next(self) -> Message | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, self._pool) from None
        if message is grpc.aio.EOF:
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                trailing = await self._call.trailing_metadata()
                error = error_from_status(
                    code.value[0], await self._call.details(), trailing, self._pool
                )
                error.trailers = list(trailing or ())
                raise error
            return None
        return message

    async def trailers(self) -> Metadata:
        return list(await self._call.trailing_metadata() or ())

    def cancel(self) -> None:
        if not self._call.done():
            self._call.cancel()
