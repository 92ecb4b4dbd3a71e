"""create_app(settings): wires the registry, upstreams and handlers; owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge import edge, errors
from bridge.admin import AdminApi
from bridge.compose import Composition
from bridge.config import Settings
from bridge.edge.cors import CORS, Cors, route_methods
from bridge.edge.proxies import TrustedProxies, client_address
from bridge.errors import error_response
from bridge.http import RID, RestGateway
from bridge.observe import metrics
from bridge.openapi import openapi_document
from bridge.policy import Chains
from bridge.policy.chains import Policies
from bridge.registry import (
    JsonShape,
    ProtoSet,
    Registry,
    Snapshot,
    build_snapshot,
    load_includes,
)
from bridge.registry.registrar import Registrar
from bridge.shared.link import RedisLinks
from bridge.upstream.call import Upstream
from bridge.upstream.metadata import request_id
from bridge.upstream.pool import Upstreams
from bridge.ws import WebSocketGateway

log = logging.getLogger("bridge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC: Final = Path(__file__).resolve().parent / "static"

SETTINGS: Final = web.AppKey("settings", Settings)
REGISTRY: Final = web.AppKey("registry", Registry)
UPSTREAMS: Final = web.AppKey("upstreams", Upstreams)
REGISTRAR: Final = web.AppKey("registrar", Registrar)
COMPOSITION: Final = web.AppKey("composition", Composition)
LINKS: Final = web.AppKey("links", RedisLinks)


def json_shape(settings: Settings) -> JsonShape:
    j = settings.json
    return JsonShape(j.emit_unpopulated, j.use_proto_names, j.discard_unknown)


async def load_registry(
    settings: Settings, chains: Chains | None = None, include: ProtoSet | None = None
) -> Registry:
    """Compile ``protos.include`` and build the first snapshot (CompileError, SnapshotError).

    ``include``, already compiled, skips the compile; without ``chains`` the registry
    describes the routes (``bridge check``) but cannot serve them.
    """
    if include is None:
        include = await load_includes(settings.protos_include)
    snapshot = build_snapshot([include], settings.upstream_for, json_shape(settings), chains)
    return Registry(snapshot, chains)


async def create_app(settings: Settings, include: ProtoSet | None = None) -> web.Application:
    """The bridge as an aiohttp application; must be called with the event loop running.

    ``include`` is the config's ``protos.include``, when the caller compiled it already.
    """
    if include is None:  # before any channel opens: protoc runs in a forked process
        include = await load_includes(settings.protos_include)
    upstreams = Upstreams(settings.upstreams.values())
    links = RedisLinks()  # the Redis stores the config names (SPEC 10), one pool per URL
    policies = Policies(settings, Upstream(upstreams), links)
    registry = await load_registry(settings, policies.chain, include)
    composition = Composition.of(settings)
    registry.admit = composition.admit  # a registration may not take a config route
    middlewares: list[Middleware] = [_guard]
    cors = None
    if settings.cors.allow_origins:  # without it, no CORS code runs at all
        cors = Cors(settings.cors, route_methods(lambda: composition.table(registry.snapshot)))
        middlewares.append(cors.middleware)
    app = web.Application(client_max_size=settings.limits.max_body, middlewares=middlewares)
    if cors is not None:
        app.on_response_prepare.append(cors.on_response_prepare)
        app[CORS] = cors  # the edge marks its refusals before routing with it too
    app[SETTINGS] = settings
    app[edge.LIMITS] = settings.limits
    app[REGISTRY] = registry
    app[COMPOSITION] = composition
    app[UPSTREAMS] = upstreams
    app[LINKS] = links
    address = client_address(TrustedProxies(settings.trusted_proxies))
    gateway = RestGateway(
        registry,
        forward_headers=frozenset(settings.forward_headers),
        max_metadata=settings.limits.max_metadata,
        client_address=address,
        routes=composition.table,
    )
    sockets = WebSocketGateway(settings, registry, address, policies.auth)
    registrar = Registrar(settings, registry, upstreams, registry.snapshot.sets[0], links)
    app[REGISTRAR] = registrar
    app.cleanup_ctx.append(lambda _: policies.running())
    app.cleanup_ctx.append(lambda _: _registrations(registrar))
    app.on_startup.append(lambda _: _composed(composition, registry))
    if settings.admin_token:
        AdminApi(settings.admin_token, registrar, settings.limits.admin_max_body).add_routes(
            app.router
        )
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    shown = metrics.exposition_registry(metrics.State(upstreams, registry))
    app.router.add_get("/metrics", metrics.handler(shown))
    app.router.add_get("/ws", sockets.handle)
    app.router.add_get("/demo", _demo)
    app.router.add_get("/docs", _docs)
    app.router.add_get("/", _to_docs)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_static("/static", STATIC)
    # [\s\S], not ".": a path may hold a newline (%0A), which "." would leave to aiohttp's 404.
    app.router.add_route("*", r"/{tail:[\s\S]*}", gateway.handle)
    app.on_shutdown.append(lambda _: sockets.shutdown())
    app.on_startup.append(lambda app: app[UPSTREAMS].start())
    app.on_cleanup.append(_close_upstreams)
    app.on_cleanup.append(lambda _: links.close())
    return app


async def _composed(composition: Composition, registry: Registry) -> None:
    """Check the aggregates against the methods served once registrations are restored."""
    composition.check(registry.snapshot)


async def _registrations(registrar: Registrar) -> AsyncIterator[None]:
    """Restore stored registrations before listening, then follow the store until shutdown."""
    await registrar.restore()
    watcher = asyncio.create_task(registrar.watch())
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a bug in any handler into a logged INTERNAL Status, not aiohttp's bare 500 page."""
    try:
        return await handler(request)
    except (asyncio.CancelledError, web.HTTPException, ConnectionResetError):
        raise
    except Exception:
        rid = request.get(RID) or request_id(request.headers)
        error = errors.internal(log, f"{request.method} {request.path}", rid)
        return error_response(error, {"X-Request-Id": rid})


_DOCUMENTS: weakref.WeakKeyDictionary[Snapshot, bytes] = weakref.WeakKeyDictionary()


async def _openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of the live routes, built once per snapshot."""
    snapshot = request.app[REGISTRY].snapshot
    body = _DOCUMENTS.get(snapshot)
    if body is None:
        settings, composed = request.app[SETTINGS], request.app[COMPOSITION].routes
        document = openapi_document(
            snapshot, use_proto_names=settings.json.use_proto_names, composed=composed,
            auth=settings.auth,
        )  # fmt: skip
        body = json.dumps(document).encode()
        _DOCUMENTS[snapshot] = body
    return web.Response(body=body, content_type="application/json")


async def _demo(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "demo.html")


async def _docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "docs.html")


async def _to_docs(request: web.Request) -> web.Response:
    """``/`` leads people to the page that lists what this bridge serves."""
    return web.Response(status=302, headers={"Location": "/docs"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """200 once serving, with every upstream's detail; ``?upstreams=all`` also needs them all up.

    One team's dead backend must not make a load balancer take every route away, so by
    default an unreachable upstream is reported, not a reason to be unready. Neither is an
    unreachable shared store (SPEC 10): the bridge serves on with this instance's state.
    """
    strict = request.query.get("upstreams") == "all"
    detail = await request.app[UPSTREAMS].readiness()
    all_up = all(u["ready"] for u in detail.values())
    ready = all_up or not strict
    body = {"ready": ready, "upstreams_ready": all_up, "upstreams": detail}
    links = request.app[LINKS]
    if links:
        body["stores"] = await links.readiness()
    return web.Response(
        status=200 if ready else 503, text=json.dumps(body), content_type="application/json"
    )


async def _close_upstreams(app: web.Application) -> None:
    await app[UPSTREAMS].close()


async def start(
    settings: Settings,
    host: str,
    port: int,
    include: ProtoSet | None = None,
    reuse_port: bool = False,
) -> tuple[edge.EdgeRunner, int]:
    """Start serving on host:port (0 = any free port); returns the runner and the bound port."""
    app = await create_app(settings, include)
    # aiohttp refuses a header over 8 KiB with a plain-text 400 before any handler runs; let
    # headers up to twice the metadata limit through so the bridge answers with a Status body.
    field_size = max(16 * 1024, 2 * settings.limits.max_metadata)
    runner = edge.EdgeRunner(
        app,
        settings.limits,
        admin=settings.admin_token is not None,
        handler_cancellation=True,
        access_log=None,
        max_field_size=field_size,
        max_line_size=field_size,
    )
    try:
        await runner.setup()
    except BaseException:  # a start-up check failed: close what had started already
        await runner.cleanup()
        raise
    # A deep accept queue: browsers open many WebSockets at once, and aiohttp's default of 128
    # overflows, leaving clients to retry their SYN a second later.
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=4096)
    await site.start()
    server = cast(asyncio.Server, site._server)  # aiohttp exposes the bound socket only here
    return runner, server.sockets[0].getsockname()[1]
