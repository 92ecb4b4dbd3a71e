"""The EchoService implementation: requests reflected back, failures on demand, streams."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Final

import grpc
from google.api import httpbody_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2

from services.echo.metadata import map_to_metadata, metadata_to_map
from services.echo.stats import CallStats, counted
from services.serving import Context, invalid, now

from demo.echo.v1 import echo_pb2, echo_pb2_grpc

STATUS_BY_NUMBER: Final = {status.value[0]: status for status in grpc.StatusCode}
STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
# grpc reports "no deadline" as the time left until the end of its infinite future.
NO_DEADLINE_AFTER_SECONDS: Final = 10 * 365 * 24 * 3600
INT64_MAX: Final = 2**63 - 1
DOWNLOAD_LINES: Final = 3
DOWNLOAD_TYPE: Final = "text/plain; charset=utf-8"


def deadline_remaining(context: Context) -> float:
    """Return the seconds left before the call's deadline, or 0 when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_AFTER_SECONDS:
        return 0.0
    return max(float(remaining), 0.0)


def bad_request_status(code: int, message: str) -> status_pb2.Status:
    """Return the google.rpc.Status that Fail(with_details) attaches to its error."""
    violation = error_details_pb2.BadRequest.FieldViolation(field="code", description="requested")
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status_pb2.Status(code=code, message=message, details=[detail])


async def _send_requested_metadata(request: echo_pb2.EchoRequest, context: Context) -> None:
    try:
        headers = map_to_metadata(request.response_headers, "response_headers")
        trailers = map_to_metadata(request.response_trailers, "response_trailers")
    except ValueError as exc:
        await invalid(context, str(exc))
    if headers:
        await context.send_initial_metadata(headers)
    if trailers:
        context.set_trailing_metadata(trailers)


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):
    """demo.echo.v1.EchoService; every method but GetStats and ResetStats is counted."""

    def __init__(self) -> None:
        self.stats = CallStats()

    @counted
    async def Echo(self, request: echo_pb2.EchoRequest, context: Context) -> echo_pb2.EchoResponse:
        await _send_requested_metadata(request, context)
        if request.sleep_ms > 0:
            # asyncio.sleep, not time.sleep: a client cancel must be able to interrupt it.
            await asyncio.sleep(request.sleep_ms / 1000)
        return echo_pb2.EchoResponse(
            message=request.message,
            payload=request.payload,
            metadata=metadata_to_map(context.invocation_metadata()),
            request=request,
            deadline_remaining=deadline_remaining(context),
            peer=context.peer(),
        )

    @counted
    async def Fail(self, request: echo_pb2.FailRequest, context: Context) -> empty_pb2.Empty:
        if request.code == 0:
            return empty_pb2.Empty()
        code = STATUS_BY_NUMBER.get(request.code)
        if code is None:
            await invalid(context, f"code {request.code} is not a gRPC status code")
        message = request.message or f"failure {request.code} requested"
        trailers: tuple[tuple[str, bytes], ...] = ()
        if request.with_details:
            details = bad_request_status(request.code, message).SerializeToString()
            trailers = ((STATUS_DETAILS_KEY, details),)
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("unreachable: abort raises")

    @counted
    async def Tick(self, request: echo_pb2.TickRequest, context: Context) -> None:
        for field in ("count", "interval_ms", "fail_after", "payload_size"):
            if getattr(request, field) < 0:
                await invalid(context, f"{field} must not be negative")
        await context.send_initial_metadata((("x-tick-stream", "started"),))
        payload = b"x" * request.payload_size
        seq = 0
        while request.count == 0 or seq < request.count:
            if seq and request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)
            seq += 1
            text = f"{request.prefix}{seq}"
            await context.write(echo_pb2.TickEvent(seq=seq, text=text, time=now(), payload=payload))
            self.stats.ticks_sent += 1  # write returned: gRPC flow control let the event out
            if request.fail_after and seq >= request.fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "tick source failed")

    @counted
    async def Sum(
        self, request_iterator: AsyncIterator[echo_pb2.SumRequest], context: Context
    ) -> echo_pb2.SumResponse:
        total = count = 0
        async for item in request_iterator:
            total += item.value
            count += 1
        if abs(total) > INT64_MAX:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "total overflows int64")
        return echo_pb2.SumResponse(total=total, count=count)

    @counted
    async def Chat(
        self, request_iterator: AsyncIterator[echo_pb2.ChatMessage], context: Context
    ) -> None:
        seq = 0
        async for message in request_iterator:
            seq += 1
            reply = echo_pb2.ChatMessage(
                user="echo", text=f"{message.user}: {message.text}", seq=seq
            )
            await context.write(reply)

    @counted
    async def Download(self, request: echo_pb2.DownloadRequest, context: Context) -> None:
        for field in ("lines", "interval_ms", "fail_after"):
            if getattr(request, field) < 0:
                await invalid(context, f"{field} must not be negative")
        content_type = request.content_type or DOWNLOAD_TYPE
        for line in range(1, (request.lines or DOWNLOAD_LINES) + 1):
            if line > 1 and request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)
            data = f"{request.name} line {line}\n".encode()
            await context.write(httpbody_pb2.HttpBody(content_type=content_type, data=data))
            if request.fail_after and line >= request.fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "file source failed")

    @counted
    async def Upload(
        self, request: echo_pb2.UploadRequest, context: Context
    ) -> echo_pb2.UploadResponse:
        return echo_pb2.UploadResponse(
            name=request.name,
            content_type=request.file.content_type,
            size=len(request.file.data),
            sha256=hashlib.sha256(request.file.data).hexdigest(),
        )

    async def GetStats(self, request: empty_pb2.Empty, context: Context) -> echo_pb2.Stats:
        return self.stats.snapshot()

    # Not counted either: counting the call that zeroes the counters would leave them
    # inconsistent (completed 1, started 0) the moment it returns.
    async def ResetStats(self, request: empty_pb2.Empty, context: Context) -> empty_pb2.Empty:
        self.stats.reset()
        return empty_pb2.Empty()
