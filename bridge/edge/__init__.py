"""The HTTP connection edge: timeouts, the connection limit, head checks, parse errors.

Everything a client can do before a route's handler runs is decided here, the same way for
REST, the admin API, ``/ws`` upgrades and the health endpoints:

- `connections.ConnectionTable` counts connections, times out waits for a request head
  (``limits.header_timeout``) and idle keep-alive connections (``limits.idle_timeout``), and
  at ``limits.max_connections`` closes the one that has waited longest to make room;
- `stalls.SendWatch` drops a connection whose client takes none of the output waiting for it
  for ``limits.send_timeout`` (a REST stream or a WebSocket it stopped reading);
- `protocol.EdgeProtocol` is aiohttp's connection handler with those hooks, and answers what
  aiohttp cannot parse with a Status JSON body and one DEBUG line;
- `requests.RequestGate` refuses, before routing, an HTTP version other than 1.0/1.1 (505),
  a declared body over the route's limit (413, without ``100 Continue``) and an unknown
  expectation (417); `requests.read_body` reads a body within ``limits.body_timeout``;
- `cors.Cors` answers browser preflights for every route and marks responses to allowed
  origins (installed by the app only when ``cors.allow_origins`` is set);
- `proxies.TrustedProxies` decides the client's address (X-Forwarded-For only through
  ``trusted_proxies``), which every transport puts in its call.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Final

from aiohttp import web

from bridge.config import Limits
from bridge.edge.connections import ConnectionTable
from bridge.edge.cors import CORS
from bridge.edge.protocol import LINGER, LINGER_SLOTS, EdgeServer, check_aiohttp
from bridge.edge.requests import LIMITS, RequestGate, read_body

__all__ = ["LIMITS", "EdgeRunner", "connection_capacity", "read_body"]

log = logging.getLogger("bridge")

# Descriptors kept for everything but client connections: listening sockets, upstream
# channels, the event loop, log and store files, protoc's pipes, and the lingering answers.
RESERVED_FDS: Final = 192 + LINGER_SLOTS


class EdgeRunner(web.AppRunner):
    """An AppRunner whose connections are EdgeProtocols behind a RequestGate."""

    __slots__ = ("_admin", "_limits", "table")

    def __init__(self, app: web.Application, limits: Limits, *, admin: bool, **kwargs: Any):
        # aiohttp's own keep-alive timer stays as a backstop behind the table's timeouts; its
        # lingering read of an unread body (after a 413, say) is shortened to the edge's.
        kwargs.setdefault("keepalive_timeout", limits.idle_timeout + limits.header_timeout)
        kwargs.setdefault("lingering_time", LINGER)
        super().__init__(app, **kwargs)
        self._limits = limits
        self._admin = admin
        self.table: ConnectionTable | None = None

    async def _make_server(self) -> web.Server:
        # AppRunner builds a plain web.Server around the application (after running its
        # start-up); the edge rebuilds it from the same parts with its own protocol class.
        check_aiohttp()
        base = await super()._make_server()
        limits = self._limits
        table = self.table = ConnectionTable(
            asyncio.get_running_loop(),
            capacity=connection_capacity(limits.max_connections),
            header_timeout=limits.header_timeout,
            idle_timeout=limits.idle_timeout,
        )
        cors = self.app.get(CORS)  # set only when cors.allow_origins is
        gate = RequestGate(base.request_handler, limits, admin=self._admin, cors=cors)
        server = EdgeServer(
            table,
            gate,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            send_timeout=limits.send_timeout,
            loop=base._loop,
            **base._kwargs,
        )
        return server

    async def _cleanup_server(self) -> None:
        if self.table is not None:
            self.table.close()
        await super()._cleanup_server()


def connection_capacity(wanted: int) -> int:
    """``limits.max_connections``, lowered to what the open-file limit has room for.

    Past the descriptor limit accept() fails and every new client is turned away, which is
    what the connection limit exists to prevent; so the limit must be reached first.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_FDS <= soft:
        return wanted
    room = max(1, soft - RESERVED_FDS)
    log.warning(
        "limits.max_connections is %d, but the open-file limit of %d descriptors leaves room "
        "for %d client connections; the limit is %d (raise `ulimit -n` for more)",
        wanted, soft, room, room,
    )  # fmt: skip
    return room
