"""Routes the config composes: aggregates (one HTTP route, several gRPC calls) and static answers.

An aggregate's calls are `Call` values made through ``binding.invoke`` of the snapshot the
request started on, exactly as a REST call of the same method would be, so every policy (auth,
rate limits, cache, fallbacks) applies to each child. The children carry the parent's headers
(its credentials), metadata, peer and request id, and run in one task group: each starts as
soon as the calls whose answers it reads have answered, and a required call that fails
cancels the ones still running.

What the file decides (templates, dependency order) was parsed by `bridge.config.composition`;
what needs the protos (methods, request fields, response field paths) is compiled here once
per snapshot (the templates by `bridge.transcode.templates`), so a request only fills values
in. The start-up snapshot is checked strictly (a problem is a `ConfigError` naming the
aggregate and the call); a later snapshot that lost a method, or changed a message so a
template no longer fits, leaves that call failing with UNIMPLEMENTED (or INVALID_ARGUMENT for
the template) naming it, at request time.

Config routes share one route table with the snapshot's routes, so matching is most-specific
first across both; a config route and a proto route with the same method and path shape are
an error at start, and a later registration that would add such a route is refused (409).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from google.protobuf.descriptor import Descriptor
from multidict import MultiMapping

from bridge import errors
from bridge.call import AGGREGATE, Call, Principal
from bridge.config import ConfigError, Settings
from bridge.config.composition import (
    ERRORS_KEY,
    QUERY,
    Aggregate,
    PlannedCall,
    StaticRoute,
    references,
)
from bridge.config.values import Problem
from bridge.errors import BridgeError
from bridge.registry.snapshot import Binding, Snapshot, SnapshotError
from bridge.routing import Route, RouteTable
from bridge.transcode.partial import KEYS, Trim, Trims, for_object, selection_text
from bridge.transcode.templates import Compiler, Fill, Values, check_literals
from bridge.upstream.metadata import Metadata

FALLBACK_HEADER: Final = "x-bridge-fallback"


@dataclass(slots=True)
class Parent:
    """What every child of one aggregate request shares: the HTTP request's call context."""

    metadata: Metadata
    timeout: float | None  # the client's grpc-timeout, for the whole aggregate
    peer: str | None
    request_id: str
    headers: Mapping[str, str]
    # The caller, once a child's auth step proved it (the children share the credentials):
    # the aggregate's access-log subject.
    principal: Principal | None = None


# --- static routes ---------------------------------------------------------------------------


class StaticAnswer:
    """A static route's answer, rendered once."""

    def __init__(self, route: StaticRoute) -> None:
        self.status = route.status
        self.body = route.rendered()
        self.headers = {"Content-Type": "application/json"} if route.body is not None else {}
        self.headers.update(route.headers)
        if "content-type" in route.headers:
            del self.headers["Content-Type"]

    def response(self, request_id: str) -> web.Response:
        headers = {**self.headers, "X-Request-Id": request_id}
        return web.Response(status=self.status, body=self.body or None, headers=headers)


# --- aggregates: compiled against a snapshot --------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Child:
    """One call of an aggregate, ready to be made against one snapshot."""

    name: str
    method: str
    optional: bool
    needs: tuple[str, ...]
    where: str
    binding: Binding | None = None
    fill: Fill | None = None
    problem: BridgeError | None = None  # why it cannot be made with this snapshot


class AggregateRoute:
    """An aggregate route: its plan from the config, compiled once per snapshot."""

    def __init__(self, aggregate: Aggregate, source: str, proto_names: bool = False) -> None:
        self.aggregate = aggregate
        self.source = source
        self._compiled: weakref.WeakKeyDictionary[Snapshot, tuple[_Child, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._trims: weakref.WeakKeyDictionary[Snapshot, Trims] = weakref.WeakKeyDictionary()
        self._proto_names = proto_names
        reads = {r.name for c in aggregate.calls for r in references(c.request) if r.kind == QUERY}
        self._selection_keys = ("$fields",) if "fields" in reads else KEYS

    def check(self, snapshot: Snapshot, unserved: list[str] | None = None) -> None:
        """Compile against ``snapshot``, a ConfigError for the first problem (start-up).

        With ``unserved``, a method the snapshot lacks is listed there instead (``bridge
        check`` sees only protos.include; reflection and registrations come at serve time).
        """
        self._compiled[snapshot] = self._compile(snapshot, strict=True, unserved=unserved)

    def children(self, snapshot: Snapshot) -> tuple[_Child, ...]:
        compiled = self._compiled.get(snapshot)
        if compiled is None:
            compiled = self._compiled[snapshot] = self._compile(snapshot, strict=False)
        return compiled

    def _compile(
        self, snapshot: Snapshot, *, strict: bool, unserved: list[str] | None = None
    ) -> tuple[_Child, ...]:
        children: dict[str, _Child] = {}
        for call in self.aggregate.calls:
            try:
                child = self._child(call, snapshot, children)
            except Problem as exc:
                key = self._key(call, exc.at)
                if unserved is not None and isinstance(exc, _Unserved):
                    unserved.append(f"{self.source}: {key}: {exc}")
                elif strict:
                    raise ConfigError(self.source, key, str(exc)) from None
                code = exc.code if isinstance(exc, _Unserved) else errors.INVALID_ARGUMENT
                child = _Child(call.name, call.method, call.optional,
                               tuple(call.needs), self.aggregate.where(call.name),
                               problem=BridgeError(code, str(exc)))  # fmt: skip
            children[call.name] = child
        return tuple(children.values())

    def _key(self, call: PlannedCall, at: tuple[str | int, ...]) -> str:
        """The config key of a problem: ``aggregates[0].calls.user.request.id``."""
        key = f"aggregates[{self.aggregate.index}].calls.{call.name}"
        return key + "".join(f"[{a}]" if isinstance(a, int) else f".{a}" for a in at)

    def _child(
        self, call: PlannedCall, snapshot: Snapshot, earlier: Mapping[str, _Child]
    ) -> _Child:
        where = self.aggregate.where(call.name)
        binding = snapshot.bindings.get(call.method)
        if binding is None:
            raise _Unserved(errors.UNIMPLEMENTED, f"{where}: method {call.method} is not served",
                            "method")  # fmt: skip
        if binding.method.kind != "unary":
            raise _Unserved(errors.UNIMPLEMENTED,
                            f"{where}: {call.method} is {binding.method.kind.replace('_', ' ')}; "
                            "only unary methods can be aggregated", "method")  # fmt: skip
        outputs = {n: b for n in call.needs if (b := earlier[n].binding) is not None}
        missing = sorted(set(call.needs) - set(outputs))
        if missing:  # not served either: that call's own problem says why
            raise _Unserved(errors.UNIMPLEMENTED, f"{where}: needs call '{missing[0]}'", "request")
        compiler = Compiler(where, outputs)
        try:
            fill = compiler.message(call.request, binding.request.descriptor)
        except Problem as exc:
            raise Problem(f"{where}: {exc}", "request", *exc.at) from None
        check_literals(call.request, binding, where)
        needs = tuple(call.needs)
        return _Child(call.name, call.method, call.optional, needs, where, binding, fill)

    async def run(
        self,
        snapshot: Snapshot,
        parent: Parent,
        params: Mapping[tuple[str, ...], str],
        query: MultiMapping[str],
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The aggregate's answer (keyed by call name, ``errors`` for failed optional calls)
        and its headers; a failed required call is raised as its BridgeError."""
        children = self.children(snapshot)
        trim = self._trim(snapshot, children, query) if query else None  # a 400 before any call
        run = _Run(children, parent, Values(params, query))
        try:
            async with asyncio.TaskGroup() as group:
                for child in run.children:
                    group.create_task(run.make(child))
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        replies = run.values.replies
        answer = {c.name: replies[c.name] for c in run.children if c.name in replies}
        if run.failed:
            answer[ERRORS_KEY] = {name: e.to_status() for name, e in run.failed.items()}
        headers = {"X-Bridge-Fallback": "true"} if run.fallback else {}
        return (answer if trim is None else trim.apply(answer)), headers

    def _trim(
        self, snapshot: Snapshot, children: tuple[_Child, ...], query: MultiMapping[str]
    ) -> Trim | None:
        """The client's ``fields`` selection of the answer (``$fields`` only when a template
        reads a query parameter called ``fields``); None without one."""
        text = selection_text(query, self._selection_keys)
        if not text:
            return None
        trims = self._trims.get(snapshot)
        if trims is None:
            trims = self._trims[snapshot] = Trims()
        members: dict[str, Descriptor | None] = {
            c.name: None if c.binding is None else c.binding.method.output.DESCRIPTOR
            for c in children
        }
        members[ERRORS_KEY] = None
        return trims.get(text, lambda s: for_object(s, members, self._proto_names))


class _Unserved(Problem):
    """A call the snapshot cannot make at all: no such method, or not a unary one."""

    def __init__(self, code: int, message: str, *at: str | int) -> None:
        super().__init__(message, *at)
        self.code = code


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first BridgeError of a task group's failures, else its first exception (a bug)."""
    flat: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            flat.append(exc)

    walk(group)
    return next((e for e in flat if isinstance(e, BridgeError)), flat[0])


class _Run:
    """One aggregate request: the children's answers and failures as they come in."""

    def __init__(self, children: tuple[_Child, ...], parent: Parent, values: Values) -> None:
        self.children = children
        self.parent = parent
        self.values = values
        self.failed: dict[str, BridgeError] = {}
        self.done = {child.name: asyncio.Event() for child in children}
        self.fallback = False
        loop = asyncio.get_running_loop()
        self.deadline = None if parent.timeout is None else loop.time() + parent.timeout

    async def make(self, child: _Child) -> None:
        """Make one call once its needs answered; a required failure is raised (ending all)."""
        try:
            for need in child.needs:
                await self.done[need].wait()
            self.values.replies[child.name] = await self._call(child)
        except BridgeError as exc:
            if not child.optional:
                raise _named(exc, child) from None
            self.failed[child.name] = exc
        finally:
            self.done[child.name].set()

    async def _call(self, child: _Child) -> Any:
        failed = next((n for n in child.needs if n in self.failed), None)
        if failed is not None:
            error = self.failed[failed]
            raise BridgeError(error.code, f"not made: call '{failed}' failed: {error.message}")
        if child.problem is not None:
            raise child.problem
        assert child.binding is not None and child.fill is not None
        binding, parent = child.binding, self.parent
        request = binding.request.from_json(child.fill(self.values), f"{child.where} request")
        call = Call(binding, request, list(parent.metadata), self._timeout(), parent.peer,
                    AGGREGATE, parent.request_id, parent.headers)  # fmt: skip
        try:
            reply = await binding.invoke(call)
        except BridgeError as error:
            error.headers.update(call.response_headers)  # RateLimit-* on a refusal, as REST does
            raise
        finally:
            parent.principal = parent.principal or call.principal
        message = await reply.next()
        assert message is not None  # a unary reply is a stream of exactly one
        if any(k.lower() == FALLBACK_HEADER for k in call.response_headers):
            self.fallback = True
        return binding.response.to_dict(message)

    def _timeout(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - asyncio.get_running_loop().time(), 0.001)


def _named(error: BridgeError, child: _Child) -> BridgeError:
    """A child's failure as the aggregate's: same status and headers, the call named."""
    named = BridgeError(
        error.code,
        f"call '{child.name}' ({child.method}): {error.message}",
        error.details,
        headers=dict(error.headers),
        status=error.status,
        extra=error.extra,
    )
    named.trailers = error.trailers
    return named


# --- the config routes next to the snapshot's ---------------------------------------------------


@dataclass(eq=False)
class Composition:
    """The config's aggregate and static routes, matched in one table with a snapshot's."""

    routes: tuple[Route, ...]
    aggregates: tuple[AggregateRoute, ...]
    source: str  # the config file, for errors
    _last: tuple[Snapshot, RouteTable] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> Composition:
        source = str(settings.source)
        proto_names = settings.json.use_proto_names
        aggregates = tuple(AggregateRoute(a, source, proto_names) for a in settings.aggregates)
        routes = [
            Route(a.aggregate.route.verb, a.aggregate.route.template, a, f"aggregates[{i}]")
            for i, a in enumerate(aggregates)
        ]
        routes += [
            Route(s.route.verb, s.route.template, StaticAnswer(s), f"static[{i}]")
            for i, s in enumerate(settings.static)
        ]
        return cls(tuple(routes), aggregates, source)

    def describe(self) -> list[str]:
        """One line per config route, as ``bridge check`` prints the routes."""
        lines = []
        for route in self.routes:
            head = f"{route.verb:7} {route.template.source}  ->  "
            if isinstance(route.target, AggregateRoute):
                calls = ", ".join(_described(c) for c in route.target.aggregate.calls)
                lines.append(f"{head}aggregate of {calls} ({route.owner})")
            else:
                lines.append(f"{head}static {route.target.status} ({route.owner})")
        return lines

    def table(self, snapshot: Snapshot) -> RouteTable:
        """The routes a request is matched against: the config's and the snapshot's."""
        if not self.routes:
            return snapshot.routes
        last = self._last
        if last is not None and last[0] is snapshot:
            return last[1]
        ours = {(r.verb, r.template.shape) for r in self.routes}
        theirs = (r for r in snapshot.routes.routes if (r.verb, r.template.shape) not in ours)
        table = RouteTable([*self.routes, *theirs])  # a collision was refused by admit()
        self._last = (snapshot, table)
        return table

    def admit(self, snapshot: Snapshot) -> None:
        """Refuse a snapshot with a route that collides with a config route (SnapshotError)."""
        collision = _collision(self.routes, snapshot.routes.routes)
        if collision is not None:
            ours, theirs = collision
            raise SnapshotError(
                f"route {theirs} collides with the config's {ours.owner} ({ours.verb} "
                f"{ours.template.source}): config routes cannot be replaced",
                conflict=True,
            )

    def check(self, snapshot: Snapshot, unserved: list[str] | None = None) -> None:
        """At start: route collisions and every aggregate against ``snapshot`` (ConfigError);
        ``unserved`` as `AggregateRoute.check` takes it."""
        collision = _collision(self.routes, snapshot.routes.routes)
        if collision is not None:
            ours, theirs = collision
            raise ConfigError(
                self.source, f"{ours.owner}.route",
                f"'{ours.verb} {ours.template.source}' matches the same requests as the proto "
                f"route {theirs}",
            )  # fmt: skip
        for aggregate in self.aggregates:
            aggregate.check(snapshot, unserved)


def _described(call: PlannedCall) -> str:
    notes = [call.method]
    if call.needs:
        notes.append("after " + " and ".join(sorted(call.needs)))
    if call.optional:
        notes.append("optional")
    return f"{call.name} ({', '.join(notes)})"


def _collision(ours: Iterable[Route], theirs: Iterable[Route]) -> tuple[Route, Route] | None:
    shapes = {(r.verb, r.template.shape): r for r in ours}
    for route in theirs:
        mine = shapes.get((route.verb, route.template.shape))
        if mine is not None:
            return mine, route
    return None
