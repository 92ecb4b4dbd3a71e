"""gRPC status codes, their HTTP statuses, and the one google.rpc.Status error renderer."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web
from grpc import StatusCode

# The only gRPC -> HTTP mapping in the codebase (same table as grpc-gateway and Envoy).
_HTTP_STATUS: Final[dict[int, int]] = {
    0: 200,  # OK
    1: 499,  # CANCELLED: nginx's "client closed request"; the client gave up, not the server
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION: the client must change the system state first, like a 400
    10: 409,  # ABORTED: a concurrency conflict the client can retry, like a 409
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}

CODE_BY_NAME: Final[dict[str, int]] = {c.name: c.value[0] for c in StatusCode}
NAME_BY_CODE: Final[dict[int, str]] = {v: k for k, v in CODE_BY_NAME.items()}

OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16

# RFC 9110 section 11.6.1: every 401 carries a challenge. Errors that bring their own (the admin
# API's, an auth policy's) keep it; any other 401, a backend's UNAUTHENTICATED among them, gets
# this one: the bridge forwards bearer tokens (``authorization``) to the backends.
DEFAULT_CHALLENGE: Final = 'Bearer realm="bridge"'


def http_status(code: int) -> int:
    """The HTTP status for a gRPC status code (unknown codes are a 500, as grpc-gateway does)."""
    return _HTTP_STATUS.get(code, 500)


class BridgeError(Exception):
    """An expected failure with a gRPC status: bad input, no route, a backend error."""

    def __init__(
        self,
        code: int,
        message: str,
        details: Sequence[dict[str, Any]] = (),
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.extra = extra or {}  # more top-level fields of the body, e.g. compile "errors"
        self.status = status or http_status(code)  # an explicit status only for HTTP-level errors
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = headers or {}
        # A backend's trailing metadata: HTTP sends it as Grpc-Trailer-* headers (in
        # ``headers``), a WebSocket call in its status frame.
        self.trailers: list[tuple[str, str | bytes]] = []

    def to_status(self) -> dict[str, Any]:
        """The google.rpc.Status JSON object of this error."""
        return {"code": self.code, "message": self.message, "details": self.details, **self.extra}


def internal(log: logging.Logger, what: str, request_id: str) -> BridgeError:
    """A bug met while serving a call: logged once, with its traceback and request id, and
    returned as the INTERNAL status the client gets instead (every transport uses this)."""
    log.exception("%s failed (request id %s)", what, request_id)
    return BridgeError(INTERNAL, f"internal error in the bridge (request id {request_id})")


def invalid_argument(message: str) -> BridgeError:
    return BridgeError(INVALID_ARGUMENT, message)


def error_response(error: BridgeError, headers: dict[str, str] | None = None) -> web.Response:
    """Render an error as its HTTP status with a google.rpc.Status JSON body."""
    merged = {**error.headers, **(headers or {})}
    if error.status == 401 and not any(k.lower() == "www-authenticate" for k in merged):
        merged["WWW-Authenticate"] = DEFAULT_CHALLENGE
    return web.Response(
        status=error.status,
        body=json.dumps(error.to_status()).encode(),
        content_type="application/json",
        headers=merged,
    )
