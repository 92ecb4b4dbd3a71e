"""The REST handler, where match -> transcode -> call -> render meet."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from google.protobuf.message import Message

from bridge import errors
from bridge.edge import read_body
from bridge.errors import BridgeError, error_response
from bridge.registry import Registry
from bridge.registry.snapshot import Binding
from bridge.routing import MatchKind
from bridge.transcode.request import decode_json
from bridge.transcode.response import OCTET_STREAM, ndjson_line, sse_event
from bridge.upstream import call as calls
from bridge.upstream.metadata import parse_grpc_timeout, request_id, request_metadata
from bridge.upstream.pool import Upstreams

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
SSE: Final = "text/event-stream"


class RestGateway:
    """Serves every HTTP route of the live snapshot; one instance per application."""

    def __init__(
        self,
        registry: Registry,
        upstreams: Upstreams,
        *,
        forward_headers: frozenset[str],
        max_metadata: int,
    ) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.forward_headers = forward_headers
        self.max_metadata = max_metadata

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request.headers)
        try:
            return await self._handle(request, rid)
        except BridgeError as error:
            return error_response(error, {"X-Request-Id": rid})

    async def _handle(self, request: web.Request, rid: str) -> web.StreamResponse:
        binding, params = self._match(request)
        method = binding.method
        metadata = request_metadata(
            request.headers.items(),
            self.forward_headers,
            peer=request.remote,
            request_id=rid,
            max_bytes=self.max_metadata,
        )
        upstream = self.upstreams[method.upstream]
        given = request.headers.get("grpc-timeout")
        requested = None if given is None else parse_grpc_timeout(given)
        timeout = calls.deadline(requested, upstream.timeout, method.server_streaming)
        stub = upstream.stub(method)
        body = await _read_body(request) if binding.request.body or method.client_streaming else b""
        pool = binding.request.pool
        if method.client_streaming:
            messages = _ndjson_messages(binding, body)
            if method.server_streaming:
                stream = calls.Stream(stub(messages, timeout=timeout, metadata=metadata), pool)
                return await _stream_out(request, binding, stream, rid)
            reply, headers = await calls.unary(stub, messages, timeout, metadata, pool)
            return _json_reply(binding, reply, headers, rid)
        plan = binding.request
        content_type = request.headers.get("Content-Type", "") if plan.raw_body is not None else ""
        message = plan.to_message(params, body, request.query, content_type)
        if method.server_streaming:
            stream = calls.Stream(stub(message, timeout=timeout, metadata=metadata), pool)
            return await _stream_out(request, binding, stream, rid)
        reply, headers = await calls.unary(stub, message, timeout, metadata, pool)
        return _json_reply(binding, reply, headers, rid)

    def _match(self, request: web.Request) -> tuple[Binding, dict[tuple[str, ...], str]]:
        path = request.rel_url.raw_path
        match = self.registry.snapshot.routes.match(request.method, path)
        if match.kind is MatchKind.FULL:
            assert match.route is not None
            return match.route.target, match.params
        if match.kind is MatchKind.PARTIAL:
            allowed = ", ".join(match.allowed)
            raise BridgeError(
                errors.UNIMPLEMENTED,
                f"method {request.method} not allowed for {path} (allowed: {allowed})",
                headers={"Allow": allowed},
                status=405,
            )
        raise BridgeError(errors.NOT_FOUND, f"no route for {request.method} {path}")


async def _read_body(request: web.Request) -> bytes:
    """The request body, up to ``limits.max_body`` and within ``limits.body_timeout``."""
    return await read_body(request, request.client_max_size, "request body", "limits.max_body")


def _json_reply(
    binding: Binding, reply: Message, headers: dict[str, str], rid: str
) -> web.Response:
    """The reply as JSON, or as the raw bytes of an HttpBody reply."""
    headers["X-Request-Id"] = rid
    if binding.response.raw:
        body, headers["Content-Type"] = binding.response.raw_body(reply)
        return web.Response(body=body, headers=headers)
    return web.Response(body=binding.response.to_json(reply), content_type=JSON, headers=headers)


def _ndjson_messages(binding: Binding, body: bytes) -> list[Message]:
    """Request messages of a client stream: NDJSON lines, or one JSON array of messages.

    Decoded up front, not lazily: a bad line raised inside grpc's request iterator would
    cancel the call instead of becoming a 400, and the backend would see a half stream.
    """
    text = body.strip()
    if text.startswith(b"["):
        items = decode_json(text)
    else:
        items = [decode_json(line) for line in text.splitlines() if line.strip()]
    plan = binding.request
    return [plan.from_json(item, f"request message {i}") for i, item in enumerate(items)]


async def _stream_out(
    request: web.Request, binding: Binding, stream: calls.Stream, rid: str
) -> web.StreamResponse:
    """Write each response message as it arrives, as NDJSON or Server-Sent Events."""
    try:
        first, headers = await stream.first()
    except BaseException:
        stream.cancel()
        raise
    headers["X-Request-Id"] = rid
    if binding.response.raw:
        return await _raw_stream_out(request, binding, stream, first, headers)
    sse = SSE in request.headers.get("Accept", "")
    response = web.StreamResponse(headers=headers)
    response.content_type = SSE if sse else NDJSON
    if sse:
        response.headers["Cache-Control"] = "no-cache"
    try:
        await response.prepare(request)
        message = first
        while message is not None:
            value = binding.response.to_dict(message)
            await response.write(sse_event(value) if sse else ndjson_line("result", value))
            message = await stream.next()
    except BridgeError as error:  # after the first byte the status can only go in the body
        status = error.to_status()
        await response.write(sse_event(status, "error") if sse else ndjson_line("error", status))
    except ConnectionResetError:
        return response  # the client left; the finally clause cancels the backend call
    finally:
        stream.cancel()
    await response.write_eof()
    return response


async def _raw_stream_out(
    request: web.Request,
    binding: Binding,
    stream: calls.Stream,
    first: Message | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Write a stream of HttpBody messages as one raw body, each chunk as it arrives.

    The first chunk's content type is the response's. A failure after the headers went out is
    written as a last NDJSON line ``{"error": <status>}`` (as grpc-gateway does), and then the
    connection is closed without the final empty chunk, so that any HTTP client also sees the
    body as cut short instead of complete.
    """
    plan = binding.response
    headers["Content-Type"] = plan.raw_body(first)[1] if first is not None else OCTET_STREAM
    response = web.StreamResponse(headers=headers)
    try:
        await response.prepare(request)
        message = first
        while message is not None:
            data = plan.raw_body(message)[0]
            if data:
                await response.write(data)
            message = await stream.next()
    except BridgeError as error:
        await response.write(ndjson_line("error", error.to_status()))
        request.protocol.force_close()  # no terminating chunk: the body is incomplete
        return response
    except ConnectionResetError:
        return response  # the client left; the finally clause cancels the backend call
    finally:
        stream.cancel()
    await response.write_eof()
    return response
