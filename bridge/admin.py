"""The admin API (SPEC section 5): proto registrations, the route table, reflection refresh.

Every call needs ``Authorization: Bearer <admin.token>``; without a configured token the
routes are not added at all, so /admin/ answers 404 like any unknown path.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from bridge import errors
from bridge.edge import read_body
from bridge.errors import BridgeError, error_response
from bridge.observe.log import audit
from bridge.registry.registrar import Registrar
from bridge.registry.store import Registration
from bridge.transcode import json_text


class AdminApi:
    """Handlers of /admin/*, guarded by the bearer token (compared in constant time)."""

    def __init__(self, token: str, registrar: Registrar, max_body: int) -> None:
        self._token = f"Bearer {token}".encode()
        self.registrar = registrar
        self.max_body = max_body

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for verb, path, handler in (
            ("POST", "/admin/protos", self.register),
            ("GET", "/admin/protos", self.list),
            ("GET", "/admin/protos/{name}", self.show),
            ("DELETE", "/admin/protos/{name}", self.remove),
            ("GET", "/admin/routes", self.routes),
            ("POST", "/admin/upstreams/{name}/refresh", self.refresh),
        ):
            router.add_route(verb, path, self._guarded(handler))

    def _guarded(self, handler):  # type: ignore[no-untyped-def]
        async def guarded(request: web.Request) -> web.StreamResponse:
            # aiohttp keeps bytes that are not UTF-8 as surrogates; they must refuse, not crash.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, self._token):
                return error_response(BridgeError(
                    errors.UNAUTHENTICATED, "the admin API needs the admin bearer token",
                    headers={"WWW-Authenticate": 'Bearer realm="bridge-admin"'},
                ))  # fmt: skip
            try:
                status, body = await handler(request)
            except BridgeError as exc:
                return error_response(exc)  # a bug goes on to the app's guard: INTERNAL
            return web.json_response(body, status=status, dumps=_dumps)

        return guarded

    async def register(self, request: web.Request) -> tuple[int, Any]:
        registration = _registration(await self._json(request))
        replaced, snapshot = await self.registrar.register(registration)
        audit("replace" if replaced else "register", registration.name, request.remote,
              files=sorted(registration.files), **_where(registration))  # fmt: skip
        return (200 if replaced else 201), self.registrar.summary(registration.name, snapshot)

    async def list(self, request: web.Request) -> tuple[int, Any]:
        snapshot = self.registrar.registry.snapshot
        items = [
            {**_where(e.registration), "name": name, "files": sorted(e.registration.files),
             "services": snapshot.services(name)}
            for name, e in sorted(self.registrar.entries.items())
        ]  # fmt: skip
        return 200, {"protos": items}

    async def show(self, request: web.Request) -> tuple[int, Any]:
        name = request.match_info["name"]
        entry = self.registrar.entries.get(name)
        if entry is None:
            raise BridgeError(errors.NOT_FOUND, f"no registration named '{name}'")
        summary = self.registrar.summary(name, self.registrar.registry.snapshot)
        return 200, {
            **summary,
            **_where(entry.registration),
            "files": dict(entry.registration.files),
        }

    async def remove(self, request: web.Request) -> tuple[int, Any]:
        name = request.match_info["name"]
        await self.registrar.remove(name)
        audit("remove", name, request.remote)
        return 200, {"name": name, "removed": True}

    async def routes(self, request: web.Request) -> tuple[int, Any]:
        snapshot = self.registrar.registry.snapshot
        routes = [
            {"method": r.owner, "verb": r.verb, "path": r.template.source,
             "kind": r.target.method.kind, "upstream": r.target.method.upstream,
             "source": r.target.method.source}
            for r in snapshot.routes.routes
        ]  # fmt: skip
        return 200, {"routes": routes}

    async def refresh(self, request: web.Request) -> tuple[int, Any]:
        name = request.match_info["name"]
        protos = await self.registrar.refresh(name)
        audit("refresh", name, request.remote)
        services = sorted(
            m.service for m in self.registrar.registry.snapshot.methods.values()
            if m.source == protos.name
        )  # fmt: skip
        return 200, {"upstream": name, "services": sorted(set(services))}

    async def _json(self, request: web.Request) -> Any:
        """The request body as JSON, read up to the admin body limit."""
        data = await read_body(
            request, self.max_body, "admin request body", "limits.admin_max_body"
        )
        try:
            return json_text.loads(data)
        except json_text.JsonError as exc:
            raise errors.invalid_argument(f"request body is not valid JSON: {exc}") from None


def _registration(data: Any) -> Registration:
    if not isinstance(data, dict):
        raise errors.invalid_argument("body must be a JSON object with name, files and upstream")
    unknown = set(data) - {"name", "files", "upstream", "targets"}
    if unknown:
        raise errors.invalid_argument(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not isinstance(data.get("name"), str):
        raise errors.invalid_argument("name: a string is required")
    if data.get("upstream") is not None and not isinstance(data["upstream"], str):
        raise errors.invalid_argument("upstream: must be the name of a configured upstream")
    try:
        return Registration.from_json(data)
    except ValueError as exc:
        raise errors.invalid_argument(str(exc)) from None


def _where(registration: Registration) -> dict[str, Any]:
    if registration.upstream:
        return {"upstream": registration.upstream}
    return {"targets": list(registration.targets)}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
