"""CORS at the HTTP edge (SPEC section 6): preflights, and the headers of real responses.

Browsers enforce CORS, not servers: a request from an origin that is not allowed is still
served, only without the headers that would let the page read the answer. The bridge's part is
to answer preflights for every route and to mark the responses an allowed origin may read.

`Cors` has two halves, both installed only when ``cors.allow_origins`` is not empty:

- `Cors.middleware` answers preflights (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) before any handler runs, with the methods the path really
  serves (`route_methods`: the bridge's own aiohttp routes and the live snapshot's REST routes).
  Any other request passes straight through.
- `Cors.on_response_prepare` adds ``Access-Control-Allow-Origin`` and its companions to every
  other response as its headers go out. A signal, not a middleware looking at the returned
  response: streaming replies send their headers long before their handler returns. The edge
  calls it too (the app's `CORS`) for the refusals it makes before routing, where no signal
  runs, so a page can read a 413 as the Status it is rather than as a network error.

A request without ``Origin`` costs a method comparison in the middleware and one header
lookup in the signal (measured: well under a microsecond each).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from multidict import CIMultiDict

from bridge import errors
from bridge.config import CorsSettings
from bridge.edge.protocol import quote
from bridge.errors import BridgeError, error_response
from bridge.routing import RouteTable

__all__ = ["CORS", "Cors", "MethodsFor", "route_methods"]

MethodsFor = Callable[[web.Request], Awaitable[tuple[str, ...]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, names
# Expose-Headers has no prefix wildcard, so the default set is picked from each response.
_EXPOSED_NAMES: Final = frozenset({"x-request-id", "retry-after", "x-cache", "x-bridge-fallback"})
_EXPOSED_PREFIXES: Final = ("grpc-metadata-", "grpc-trailer-", "ratelimit-")


def route_methods(table: Callable[[], RouteTable]) -> MethodsFor:
    """The methods served at a request's path: the bridge's own routes and the REST routes.

    Own routes (health, OpenAPI, ``/ws``, the admin API, static files) are asked through
    aiohttp's resources, as the router would; the catch-all ``*`` route that hands everything
    else to the REST gateway counts only through ``table()``, the live snapshot's routes.
    """

    async def methods_for(request: web.Request) -> tuple[str, ...]:
        served = set(table().methods(request.rel_url.raw_path))
        for resource in request.app.router.resources():
            served |= (await resource.resolve(request))[1]
        served.discard(hdrs.METH_ANY)
        return tuple(sorted(served))

    return methods_for


class Cors:
    """The ``cors`` settings applied to preflights and responses; see the module docstring."""

    def __init__(self, settings: CorsSettings, methods_for: MethodsFor) -> None:
        self._origins = frozenset(settings.allow_origins)
        self._star = "*" in self._origins  # config refuses "*" with allow_credentials
        self._credentials = settings.allow_credentials
        self._allow_headers = _joined(settings.allow_headers)
        self._expose = _joined(settings.expose_headers)
        self._max_age = str(int(settings.max_age))
        self._methods_for = methods_for

    def allow_origin(self, origin: str) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for an origin, or None if it is not allowed."""
        if self._star:
            return "*"
        origin = origin.lower()
        return origin if origin in self._origins else None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer preflights; an ``OPTIONS`` without Access-Control-Request-Method is not one."""
        if request.method != hdrs.METH_OPTIONS:
            return await handler(request)
        headers = request.headers
        origin = headers.get(hdrs.ORIGIN)
        wanted = headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
        if origin is None or wanted is None:
            return await handler(request)
        allowed = self.allow_origin(origin)
        if allowed is None:
            return error_response(BridgeError(
                errors.PERMISSION_DENIED,
                f"origin '{quote(origin)}' is not allowed (cors.allow_origins)",
            ))  # fmt: skip
        response: web.StreamResponse
        try:
            response = await self._preflight(request, wanted)
        except BridgeError as error:
            response = error_response(error)
        self._mark(response.headers, allowed)
        return response

    async def on_response_prepare(
        self, request: web.BaseRequest, response: web.StreamResponse
    ) -> None:
        """Mark a response an allowed origin may read (the app's on_response_prepare signal,
        and the edge's refusals before routing)."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or _is_preflight(request):
            return  # no CORS request, or a preflight the middleware has answered already
        allowed = self.allow_origin(origin)
        if allowed is None:
            return
        headers = response.headers
        self._mark(headers, allowed)
        expose = self._expose if self._expose is not None else _exposed(headers)
        if expose:
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = expose

    async def _preflight(self, request: web.Request, wanted: str) -> web.Response:
        if not _TOKEN.fullmatch(wanted):
            raise errors.invalid_argument(
                f"Access-Control-Request-Method {quote(wanted)} is not a method name"
            )
        path = request.rel_url.raw_path
        served = await self._methods_for(request)
        if not served:
            raise BridgeError(errors.NOT_FOUND, f"no route for {quote(path)}")
        if wanted not in served:
            allow = ", ".join(served)
            raise BridgeError(
                errors.UNIMPLEMENTED,
                f"method {wanted} not allowed for {quote(path)} (allowed: {allow})",
                headers={hdrs.ALLOW: allow},
                status=405,
            )
        response = web.Response(status=204)
        headers = response.headers
        headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(served)
        allow_headers = self._allow_headers
        if allow_headers is None:
            allow_headers = _requested_headers(request)
        if allow_headers:
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = allow_headers
        headers[hdrs.ACCESS_CONTROL_MAX_AGE] = self._max_age
        return response

    def _mark(self, headers: CIMultiDict[str], allowed: str) -> None:
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        if allowed != "*":
            headers.add(hdrs.VARY, "Origin")
        if self._credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"


# The app's Cors, present only when ``cors.allow_origins`` is set: the edge marks its refusals.
CORS: Final = web.AppKey("cors", Cors)


def _is_preflight(request: web.BaseRequest) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def _requested_headers(request: web.Request) -> str:
    """The preflight's ``Access-Control-Request-Headers``, checked, lowercased, deduplicated."""
    names: dict[str, None] = {}  # an ordered set
    for value in request.headers.getall(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, ()):
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue  # an empty list element, which RFC 9110 says to ignore
            if not _TOKEN.fullmatch(name):
                raise errors.invalid_argument(
                    f"Access-Control-Request-Headers: {quote(name)} is not a header name"
                )
            names[name.lower()] = None
    return ", ".join(names)


def _exposed(headers: CIMultiDict[str]) -> str:
    """The default Expose-Headers: the request id, metadata, rate-limit and cache headers
    present."""
    names: dict[str, None] = {}
    for name in headers:
        lower = name.lower()
        if lower in _EXPOSED_NAMES or lower.startswith(_EXPOSED_PREFIXES):
            names[name] = None
    return ", ".join(names)


def _joined(names: tuple[str, ...] | None) -> str | None:
    return None if names is None else ", ".join(names)
