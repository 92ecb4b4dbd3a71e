"""The terminal step of every chain: pick a target, set the deadline, make the gRPC call.

Whatever the call kind, the answer is a `Reply`: a unary call (and a client stream) is awaited
whole, so its failure is raised here where a policy step can see it; a server stream is handed
back once the backend sent its initial metadata, and its failures surface from ``next()``.
Backend failures become `BridgeError`s in this module only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from bridge import errors
from bridge.call import Call, Reply
from bridge.errors import BridgeError
from bridge.observe.metrics import RETRIES, UPSTREAM_ERRORS
from bridge.transcode.response import error_from_status
from bridge.upstream.balancer import Target as PoolTarget
from bridge.upstream.metadata import SUBJECT, Metadata, response_headers
from bridge.upstream.pool import Upstream as PoolUpstream
from bridge.upstream.pool import Upstreams
from bridge.upstream.retry import TARGET_FAILURES, never_reached

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method


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
    """``invoke`` at the end of every chain: the call made on one of its upstream's targets,
    and made again on another when SPEC 7 allows (see `bridge.upstream.retry`)."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    async def __call__(self, call: Call) -> Reply:
        method = call.binding.method
        upstream = self.upstreams[method.upstream]
        timeout = deadline(call.timeout, upstream.timeout, method.server_streaming)
        metadata = call.metadata
        if call.principal is not None:  # never from the client: the metadata rule drops it
            metadata = [*metadata, (SUBJECT, call.principal.subject)]
        started = time.monotonic()
        target: PoolTarget | None = None
        tries = transparent = 0
        while True:
            target = upstream.balancer.pick(avoid=target)
            if target is None:
                UPSTREAM_ERRORS.labels(upstream.name, "UNAVAILABLE").inc()
                raise BridgeError(
                    errors.UNAVAILABLE,
                    f"upstream '{upstream.name}': no target in the rotation"
                    f" ({upstream.balancer.out()})",
                )
            left = timeout
            if timeout is not None and (tries or transparent):
                left = timeout - (time.monotonic() - started)
            try:
                reply = await _attempt(upstream, target, call, method, left, metadata, tries)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
                UPSTREAM_ERRORS.labels(upstream.name, code.name).inc()
                if code in TARGET_FAILURES:
                    target.failed()
                else:
                    target.succeeded()  # it answered: the target is up
                unsent = never_reached(code, details)
                if unsent and _replayable(call) and transparent < len(upstream.targets) - 1:
                    transparent += 1  # transparent retry: at once, on another target
                    RETRIES.labels(upstream.name).inc()
                    continue
                tries += 1
                wait = _retry_wait(upstream, call, code, tries, left)
                if wait is None:
                    if unsent:
                        raise BridgeError(
                            errors.UNAVAILABLE,
                            f"upstream '{upstream.name}': no target reachable ({details})",
                        ) from None
                    raise rpc_error(exc, call.binding.request.pool) from None
                RETRIES.labels(upstream.name).inc()
                await asyncio.sleep(wait)
                continue
            except BaseException:
                target.abandoned()
                raise
            target.succeeded()
            return reply


async def _attempt(
    upstream: PoolUpstream,
    target: PoolTarget,
    call: Call,
    method: Method,
    timeout: float | None,
    metadata: Metadata,
    tries: int,
) -> Reply:
    """One try on one target; a failure before the answer (or the stream's start) is raised."""
    pool = call.binding.request.pool
    stub = upstream.stub(method, target)
    writer = None
    if isinstance(call.request, AsyncIterable):
        # A live stream of requests (a WebSocket's) is written by a task of ours: handed to
        # grpc.aio as a request iterator, a call that ends while grpc's own consumer task
        # waits on it leaves that task destroyed while pending.
        grpc_call = stub(timeout=timeout, metadata=metadata)
        writer = asyncio.create_task(_write(grpc_call, call.request))
    else:
        grpc_call = stub(call.request, timeout=timeout, metadata=metadata)
    try:
        if not method.server_streaming:
            message = await grpc_call
            initial = await grpc_call.initial_metadata()
            return UnaryReply(message, list(initial), list(await grpc_call.trailing_metadata()))
        initial = await grpc_call.initial_metadata()
        first = None
        if _retry_allowed(upstream, call, None, tries + 2):
            # A stream can be retried until its first message: wait for it here, so that a
            # failure before it is still this attempt's.
            first = await grpc_call.read()
        elif grpc_call.done() and never_reached(await grpc_call.code(), await grpc_call.details()):
            await grpc_call.read()  # raises the failure, to be retried on another target
        reply = StreamReply(grpc_call, pool, list(initial), first, writer, upstream=upstream.name)
        writer = None  # the reply stops it now
        return reply
    except asyncio.CancelledError:
        grpc_call.cancel()  # the client went away: the backend must see it too
        raise
    finally:
        if writer is not None:
            writer.cancel()


async def _write(grpc_call: Any, requests: AsyncIterable[Message]) -> None:
    """Pass a live stream of request messages on, paced by the backend's flow control."""
    try:
        async for request in requests:
            await grpc_call.write(request)
        await grpc_call.done_writing()
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
        return  # the call already ended; its reader reports the status


def _replayable(call: Call) -> bool:
    """Whether the request can be sent again: a client stream only when its messages are all
    at hand (REST reads them whole); a WebSocket's live stream was consumed by the first try."""
    return not call.binding.method.client_streaming or isinstance(call.request, list | tuple)


def _retry_allowed(
    upstream: PoolUpstream, call: Call, code: grpc.StatusCode | None, tries: int
) -> bool:
    """Whether `retries` lets a failed call of ``method`` make try number ``tries``."""
    policy = upstream.retry
    method = call.binding.method
    return (
        policy is not None
        and method.safe
        and _replayable(call)
        and tries <= policy.attempts
        and (code is None or code in policy.codes)
    )


def _retry_wait(
    upstream: PoolUpstream,
    call: Call,
    code: grpc.StatusCode,
    tries: int,
    left: float | None,
) -> float | None:
    """The backoff before try ``tries + 1``, or None when there is none (not allowed, or it
    would start past the call's deadline)."""
    if not _retry_allowed(upstream, call, code, tries + 1):
        return None
    assert upstream.retry is not None
    wait = upstream.retry.delay(tries)
    return None if left is not None and wait >= left else wait


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
    """A server stream, read one message at a time; a failure after its start is counted as
    its upstream's error here (one before it was counted by the attempt)."""

    __slots__ = ("_call", "_first", "_pool", "_upstream", "_writer", "initial")

    def __init__(
        self,
        call: Any,
        pool: DescriptorPool,
        initial: Metadata,
        first: Any = None,
        writer: asyncio.Task[None] | None = None,
        *,
        upstream: str,  # its name, for the error counts
    ) -> None:
        self._call = call
        self._upstream = upstream
        self._pool = pool
        self.initial = initial
        self._first = first  # read already (to retry before it), or None
        self._writer = writer  # the task writing a live request stream (bidi), if any

    async def next(self) -> Message | None:
        message, self._first = self._first, None
        if message is None:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                UPSTREAM_ERRORS.labels(self._upstream, exc.code().name).inc()
                raise rpc_error(exc, self._pool) from None
        if message is grpc.aio.EOF:
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                UPSTREAM_ERRORS.labels(self._upstream, code.name).inc()
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
        if self._writer is not None:
            self._writer.cancel()
        if not self._call.done():
            self._call.cancel()
