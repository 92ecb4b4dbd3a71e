"""What every request meets before routing (version, declared length, Expect), and body reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from bridge import errors
from bridge.call import HTTP
from bridge.config import Limits
from bridge.edge.cors import Cors
from bridge.edge.protocol import parse_error, quote, version_error
from bridge.errors import BridgeError, error_response
from bridge.observe import log as access_log
from bridge.observe import metrics
from bridge.observe.metrics import REJECTED_LIMIT
from bridge.upstream.metadata import request_id

LIMITS: Final = web.AppKey("limits", Limits)  # read by read_body for limits.body_timeout

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class RequestGate:
    """Checks a request's head before aiohttp routes it, for every route alike.

    It runs before the route's expect handler, so a body that will be refused is refused
    before aiohttp can send ``100 Continue`` for it. Its cost to a request that passes is a few
    attribute reads and one header lookup: it returns the application's own coroutine rather
    than wrapping it in another. With ``cors`` (the app's, when configured) its refusals are
    marked for an allowed origin as the app's responses are: no response signal runs here.
    """

    def __init__(
        self, handler: Handler, limits: Limits, *, admin: bool, cors: Cors | None = None
    ) -> None:
        self._handler = handler
        self._cors = cors
        self._max_body = limits.max_body
        self._admin_max_body = limits.admin_max_body
        self._admin = admin  # without an admin token there are no admin routes
        self._lowest = min(self._max_body, self._admin_max_body if admin else self._max_body)

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        body = request.content
        request.protocol.begin(body)  # type: ignore[attr-defined]  # always an EdgeProtocol
        version = request.version
        if version is not HttpVersion11 and version != HttpVersion10 and version != HttpVersion11:
            return self._refuse_version(request)
        if body is not EMPTY_PAYLOAD:
            declared = request.headers.get(hdrs.CONTENT_LENGTH)
            if declared is not None and int(declared) > self._lowest:
                refusal = self._too_large(request, int(declared))
                if refusal is not None:
                    return self._refuse(request, refusal)
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and expect.strip().lower() != "100-continue":
            return self._refuse(request, BridgeError(
                errors.FAILED_PRECONDITION,
                f"Expect: {quote(expect)} cannot be met; only 100-continue is supported",
                status=417,
            ))  # fmt: skip
        return self._handler(request)

    def _too_large(self, request: web.BaseRequest, declared: int) -> BridgeError | None:
        admin = self._admin and request.raw_path.startswith("/admin/")
        limit = self._admin_max_body if admin else self._max_body
        if declared <= limit:
            return None
        key = "limits.admin_max_body" if admin else "limits.max_body"
        REJECTED_LIMIT.inc()
        return BridgeError(
            errors.RESOURCE_EXHAUSTED,
            f"request body of {declared} bytes is over {limit} bytes ({key})",
            status=413,
        )

    async def _refuse(self, request: web.BaseRequest, error: BridgeError) -> web.StreamResponse:
        """The refusal, and the connection closes after it: an unread body cannot be skipped.

        Counted and logged like a request no route matched: it never reached one.
        """
        started = time.perf_counter()
        rid = request_id(request.headers)
        response = error_response(error, {"Connection": "close", "X-Request-Id": rid})
        response.force_close()
        if self._cors is not None:
            await self._cors.on_response_prepare(request, response)
        metrics.refused(HTTP, error.code, started)
        body = response.body
        access_log.access(
            request_id=rid, subject=None, transport=HTTP, method=None, route=None,
            http_status=error.status, grpc_code=error.code, started=started, bytes_in=0,
            bytes_out=len(body) if isinstance(body, bytes) else 0,
        )  # fmt: skip
        return response

    def _refuse_version(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        version = f"{request.version.major}.{request.version.minor}"
        # aiohttp writes the request's version in the status line; this answer is HTTP/1.1, so
        # the request's cached `version` is made to say so (see protocol.check_aiohttp).
        request._cache["version"] = HttpVersion11  # type: ignore[attr-defined]
        return self._refuse(request, version_error(version))


async def read_body(request: web.Request, limit: int, what: str, key: str) -> bytes:
    """The whole request body: at most `limit` bytes, all within ``limits.body_timeout``.

    A body that arrived with its head is taken at once, with no timer. Past the limit it is a
    413; a body still incomplete when the timeout ends is a 408; a body the parser cannot read
    (a bad chunk, an oversized trailer) is a 400. After any of them the connection closes.
    """
    try:
        return await _read(request, limit, what, key)
    except BridgeError as error:
        request.protocol.close()  # the rest of the body will not be read: end after the answer
        error.headers["Connection"] = "close"
        raise


async def _read(request: web.Request, limit: int, what: str, key: str) -> bytes:
    content = request.content
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(what, limit, key)
    try:
        if content.is_eof():
            body = content.read_nowait()
        else:
            timeout = request.app[LIMITS].body_timeout
            async with asyncio.timeout(timeout):
                body = await _read_up_to(content, limit, what, key)
    except TimeoutError:
        REJECTED_LIMIT.inc()
        raise BridgeError(
            errors.DEADLINE_EXCEEDED,
            f"the {what} did not arrive within {timeout:g}s (limits.body_timeout)",
            status=408,
        ) from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        raise parse_error(cause, f"malformed {what}") from None
    if len(body) > limit:
        raise _too_large(what, limit, key)
    return body


async def _read_up_to(content: StreamReader, limit: int, what: str, key: str) -> bytes:
    data = bytearray()
    while chunk := await content.readany():
        data += chunk
        if len(data) > limit:
            raise _too_large(what, limit, key)
    return bytes(data)


def _too_large(what: str, limit: int, key: str) -> BridgeError:
    REJECTED_LIMIT.inc()
    return BridgeError(errors.RESOURCE_EXHAUSTED, f"{what} over {limit} bytes ({key})", status=413)
