"""The WebSocket endpoint: GET /ws, the Origin guard, sessions, and their shutdown."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from bridge import errors
from bridge.call import WEBSOCKET
from bridge.config import Settings
from bridge.edge.proxies import ClientAddress
from bridge.errors import BridgeError, error_response
from bridge.observe import metrics
from bridge.observe.metrics import UPGRADE, WS_CONNECTIONS
from bridge.registry import Registry
from bridge.upstream.metadata import REQUEST_ID, request_metadata
from bridge.ws.session import Peer, Session
from bridge.ws.wire import ClientSocket

if TYPE_CHECKING:
    from bridge.policy.auth import Authenticator

SUBPROTOCOL: Final = "bridge.v1"
ACCESS_TOKEN: Final = "access_token"  # the upgrade's query parameter for a bearer token
AUTHORIZATION: Final = "Authorization"
_GOING_AWAY: Final = 1001


class WebSocketGateway:
    """Accepts WebSocket upgrades and keeps the live sessions for a draining shutdown."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        client_address: ClientAddress,
        auth: Authenticator | None = None,
    ) -> None:
        self.registry = registry
        self.client_address = client_address
        self.auth = auth
        self.limits = settings.limits
        self.forward = frozenset(settings.forward_headers)
        self.origins = frozenset(o.lower() for o in settings.cors.allow_origins)
        self.sessions: set[Session] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        ws = ClientSocket(
            protocols=(SUBPROTOCOL,),
            max_msg_size=self.limits.ws_max_frame,
            heartbeat=self.limits.ws_heartbeat,
            compress=False,  # per-message deflate costs CPU per frame and hides backpressure
        )
        try:
            self._check_upgrade(request, ws)
            peer = self._peer(request)
        except BridgeError as refusal:  # no call saw it: counted like REST's before a chain
            metrics.refused(WEBSOCKET, refusal.code, started, route=UPGRADE)
            return error_response(refusal)
        await ws.prepare(request)
        session = Session(
            ws, self.registry, peer,
            max_calls=self.limits.ws_max_calls, max_metadata=self.limits.max_metadata,
        )  # fmt: skip
        self.sessions.add(session)
        WS_CONNECTIONS.inc()
        try:
            await session.serve()
        finally:
            self.sessions.discard(session)
            WS_CONNECTIONS.dec()
        await ws.drained()  # returning closes the transport, draining or not
        return ws

    def _peer(self, request: web.Request) -> Peer:
        """The client, its credentials and its forwarded headers; a 400 or 401 if bad."""
        address = self.client_address(request)
        headers = self._credentials(request)
        base = request_metadata(
            headers.items(), self.forward, peer=address,
            request_id="", max_bytes=self.limits.max_metadata,
        )  # fmt: skip
        metadata = [kv for kv in base if kv[0] != REQUEST_ID]
        principal = None if self.auth is None else self.auth.identify(headers)
        return Peer(address, headers, metadata, principal)

    def _credentials(self, request: web.Request) -> Mapping[str, str]:
        """The upgrade's headers, with the credentials a browser can only put in the URL (it
        cannot set headers on a WebSocket): a bearer token as ``access_token`` and an API key
        under the API-key header's name (``?x-api-key=``, as Kong's key-auth takes it). A header
        that is sent wins. REST takes headers only: this is the upgrade's exception.
        """
        query = request.query
        given = {}
        if ACCESS_TOKEN in query:
            given[AUTHORIZATION] = f"Bearer {query[ACCESS_TOKEN]}"
        key_header = None if self.auth is None else self.auth.api_key_header
        if key_header is not None and key_header in query:
            given[key_header] = query[key_header]
        missing = {name: value for name, value in given.items() if name not in request.headers}
        if not missing:
            return request.headers
        headers = CIMultiDict(request.headers)
        headers.update(missing)
        return headers

    def _check_upgrade(self, request: web.Request, ws: ClientSocket) -> None:
        """A 400 for a request that is no WebSocket upgrade, a 403 for an origin not allowed."""
        if not ws.can_prepare(request).ok:
            raise BridgeError(errors.INVALID_ARGUMENT, "GET /ws expects a WebSocket upgrade")
        origin = request.headers.get("Origin")
        if origin is None or self._origin_allowed(origin, request.host):
            return
        raise BridgeError(errors.PERMISSION_DENIED, f"origin {origin!r} is not allowed", status=403)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Allowed: a configured origin, ``*``, or the bridge's own origin (its pages)."""
        origin = origin.lower()
        if "*" in self.origins or origin in self.origins:
            return True
        return urlsplit(origin).netloc == host.lower()

    async def shutdown(self) -> None:
        """End every open call with UNAVAILABLE, then close each socket with 1001."""
        going = BridgeError(errors.UNAVAILABLE, "the bridge is shutting down")
        for session in list(self.sessions):
            await session.stop_all(going)
            await session.ws.close(code=_GOING_AWAY, message=b"bridge shutting down")
