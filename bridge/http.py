"""The REST handler, where match -> transcode -> call -> render meet."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web
from google.protobuf.message import Message

from bridge import errors
from bridge.call import AGGREGATE, HTTP, Call, Reply
from bridge.compose import AggregateRoute, Parent, StaticAnswer
from bridge.edge import read_body
from bridge.edge.proxies import ClientAddress
from bridge.errors import BridgeError, error_response
from bridge.observe import log as access_log
from bridge.observe import metrics
from bridge.observe.trace import traced
from bridge.registry import Registry
from bridge.registry.snapshot import Binding, Snapshot
from bridge.routing import MatchKind, Route, RouteTable
from bridge.transcode.partial import Trim, response_trim, selection_text
from bridge.transcode.request import decode_json
from bridge.transcode.response import OCTET_STREAM, dumps, ndjson_line, sse_event
from bridge.upstream.metadata import (
    parse_grpc_timeout,
    request_id,
    request_metadata,
    response_headers,
)

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
SSE: Final = "text/event-stream"
log = logging.getLogger("bridge.http")
RID: Final = web.RequestKey("request_id", str)  # the call's x-request-id, for the guard's log
# What the access log reads once the answer is ready: the matched route, the call made, and
# the status a stream ended with after its headers went out.
ROUTE: Final = web.RequestKey("route", Route)
CALL: Final = web.RequestKey("call", Call)
STREAM_CODE: Final = web.RequestKey("stream_code", int)
STREAMED: Final = web.RequestKey("streamed", int)  # body bytes a stream wrote
PARENT: Final = web.RequestKey("parent", Parent)  # an aggregate's context: its caller's subject
Target = Binding | AggregateRoute | StaticAnswer  # what a matched route serves
Params = dict[tuple[str, ...], str]


class RestGateway:
    """Serves every HTTP route of the live snapshot; one instance per application."""

    def __init__(
        self,
        registry: Registry,
        *,
        forward_headers: frozenset[str],
        max_metadata: int,
        client_address: ClientAddress,
        routes: Callable[[Snapshot], RouteTable] | None = None,
    ) -> None:
        self.registry = registry
        # The table requests are matched in: the snapshot's, or with the config's routes too.
        self.routes = routes or (lambda snapshot: snapshot.routes)
        self.forward_headers = forward_headers
        self.max_metadata = max_metadata
        self.client_address = client_address

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request[RID] = request_id(request.headers)  # the guard logs it on a bug
        started = time.perf_counter()
        code = errors.OK
        try:
            response = await self._handle(request, rid)
        except BridgeError as error:
            code = error.code
            response = error_response(error, {"X-Request-Id": rid})
            if CALL not in request:
                _count_refusal(request, code, started)
        _log(request, response, rid, request.get(STREAM_CODE, code), started)
        return response

    async def _handle(self, request: web.Request, rid: str) -> web.StreamResponse:
        snapshot = self.registry.snapshot
        binding, params = self._match(request, snapshot)
        if isinstance(binding, StaticAnswer):
            return binding.response(rid)
        peer = self.client_address(request)
        metadata = traced(
            request_metadata(
                request.headers.items(),
                self.forward_headers,
                peer=peer,
                request_id=rid,
                max_bytes=self.max_metadata,
            )
        )
        given = request.headers.get("grpc-timeout")
        timeout = None if given is None else parse_grpc_timeout(given)
        if isinstance(binding, AggregateRoute):
            parent = request[PARENT] = Parent(metadata, timeout, peer, rid, request.headers)
            composed, headers = await binding.run(snapshot, parent, params, request.query)
            headers["X-Request-Id"] = rid
            return web.Response(body=dumps(composed), content_type=JSON, headers=headers)
        requests = await self._request(request, binding, params)
        trim = _trim(request, binding)  # checked before the call: a bad selection is a 400
        call = request[CALL] = Call(
            binding, requests, metadata, timeout, peer, HTTP, rid, request.headers
        )
        try:
            reply = await binding.invoke(call)
        except BridgeError as error:
            error.headers.update(call.response_headers)  # RateLimit-* on refusals too
            raise
        if binding.method.server_streaming:
            return await _stream_out(request, call, reply, trim)
        answer = await reply.next()
        assert answer is not None  # a unary reply is a stream of exactly one
        headers = response_headers(reply.initial, await reply.trailers())
        headers.update(call.response_headers)
        return _json_reply(binding, answer, headers, rid, trim)

    async def _request(
        self, request: web.Request, binding: Binding, params: dict[tuple[str, ...], str]
    ) -> Message | list[Message]:
        """The request message (or a client stream's messages) from path, query and body."""
        plan = binding.request
        streaming = binding.method.client_streaming
        body = await _read_body(request) if plan.body or streaming else b""
        if streaming:
            return _ndjson_messages(binding, body)
        content_type = request.headers.get("Content-Type", "") if plan.raw_body is not None else ""
        return plan.to_message(params, body, request.query, content_type)

    def _match(self, request: web.Request, snapshot: Snapshot) -> tuple[Target, Params]:
        path = request.rel_url.raw_path
        match = self.routes(snapshot).match(request.method, path)
        if match.kind is MatchKind.FULL:
            assert match.route is not None
            request[ROUTE] = match.route
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


def _trim(request: web.Request, binding: Binding) -> Trim | None:
    """The client's ``fields`` selection for this route's reply; None (no cost) without one."""
    query = request.query
    text = selection_text(query, binding.request.selection_keys) if query else None
    if not text:
        return None  # absent or empty: the whole reply
    return response_trim(binding.response, binding.method.output.DESCRIPTOR, text)


def _json_reply(
    binding: Binding, reply: Message, headers: dict[str, str], rid: str, trim: Trim | None
) -> web.Response:
    """The reply as JSON (trimmed to the selection), or the raw bytes of an HttpBody reply."""
    headers["X-Request-Id"] = rid
    plan = binding.response
    if plan.raw:
        body, headers["Content-Type"] = plan.raw_body(reply)
        return web.Response(body=body, headers=headers)
    body = plan.to_json(reply) if trim is None else dumps(trim.apply(plan.to_dict(reply)))
    return web.Response(body=body, content_type=JSON, headers=headers)


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
    request: web.Request, call: Call, stream: Reply, trim: Trim | None
) -> web.StreamResponse:
    """Write each response message as it arrives (trimmed), as NDJSON or Server-Sent Events."""
    try:
        first = await stream.next()
    except BaseException:
        stream.cancel()
        raise
    binding = call.binding
    headers = response_headers(stream.initial, None)
    headers.update(call.response_headers)
    headers["X-Request-Id"] = call.request_id
    if binding.response.raw:
        return await _raw_stream_out(request, call, stream, first, headers)
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
            if trim is not None:
                value = trim.apply(value)
            line = sse_event(value) if sse else ndjson_line("result", value)
            await _write(request, response, line)
            message = await stream.next()
    except ConnectionResetError:  # the client left, or took nothing for limits.send_timeout
        request[STREAM_CODE] = errors.CANCELLED
        return response  # the finally clause cancels the backend call
    except Exception as exc:  # after the first byte the status can only go in the body
        status = _stream_error(exc, call, request).to_status()
        error = sse_event(status, "error") if sse else ndjson_line("error", status)
        await _write(request, response, error)
    finally:
        stream.cancel()
    await response.write_eof()
    return response


def _stream_error(exc: Exception, call: Call, request: web.Request) -> BridgeError:
    """The status a stream ends with once its headers went out: the error's, or INTERNAL for
    a bug (logged once; the guard in front cannot answer a response already started)."""
    if not isinstance(exc, BridgeError):
        exc = errors.internal(log, f"streaming {call.binding.method.full_name}", call.request_id)
    request[STREAM_CODE] = exc.code
    return exc


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write part of a streamed body, counted for the access log."""
    request[STREAMED] = request.get(STREAMED, 0) + len(data)
    await response.write(data)


def _count_refusal(request: web.Request, code: int, started: float) -> None:
    """Count a request refused before a method's chain counted it: no route (405 too), a bad
    body or selection. An aggregate's failure is not one: its calls were counted each."""
    route = request.get(ROUTE)
    if route is None:
        metrics.refused(HTTP, code, started)
    elif isinstance(route.target, Binding):
        metrics.refused(HTTP, code, started, route.target)


def _log(
    request: web.Request, response: web.StreamResponse, rid: str, code: int, started: float
) -> None:
    """The request's access-log line: its route template (never the raw path, which may hold
    a secret), and an aggregate as one line (its calls share its request id and trace)."""
    route = request.get(ROUTE)
    target = None if route is None else route.target
    call = request.get(CALL) or request.get(PARENT)
    principal = None if call is None else call.principal
    body = getattr(response, "body", None)  # a Response not sent yet; a stream counted its own
    sent = len(body) if isinstance(body, bytes) else request.get(STREAMED, 0)
    access_log.access(
        request_id=rid,
        subject=None if principal is None else principal.subject,
        transport=AGGREGATE if isinstance(target, AggregateRoute) else HTTP,
        method=target.method.full_name if isinstance(target, Binding) else None,
        route=None if route is None else f"{route.verb} {route.template.source}",
        http_status=response.status,
        grpc_code=code,
        started=started,
        bytes_in=request.content.total_bytes,
        bytes_out=sent,
    )


async def _raw_stream_out(
    request: web.Request,
    call: Call,
    stream: Reply,
    first: Message | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Write a stream of HttpBody messages as one raw body, each chunk as it arrives.

    The first chunk's content type is the response's. A failure after the headers went out is
    written as a last NDJSON line ``{"error": <status>}`` (as grpc-gateway does), and then the
    connection is closed without the final empty chunk, so that any HTTP client also sees the
    body as cut short instead of complete.
    """
    plan = call.binding.response
    headers["Content-Type"] = plan.raw_body(first)[1] if first is not None else OCTET_STREAM
    response = web.StreamResponse(headers=headers)
    try:
        await response.prepare(request)
        message = first
        while message is not None:
            data = plan.raw_body(message)[0]
            if data:
                await _write(request, response, data)
            message = await stream.next()
    except ConnectionResetError:  # the client left, or took nothing for limits.send_timeout
        request[STREAM_CODE] = errors.CANCELLED
        return response  # the finally clause cancels the backend call
    except Exception as exc:
        error = ndjson_line("error", _stream_error(exc, call, request).to_status())
        await _write(request, response, error)
        request.protocol.force_close()  # no terminating chunk: the body is incomplete
        return response
    finally:
        stream.cancel()
    await response.write_eof()
    return response
