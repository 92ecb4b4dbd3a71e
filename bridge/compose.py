"""Routes the config composes: aggregates (one HTTP route, several gRPC calls) and static answers.

An aggregate's calls are `Call` values made through ``binding.invoke`` of the snapshot the
request started on, exactly as a REST call of the same method would be, so every policy (auth,
rate limits, cache, fallbacks) applies to each child. The children carry the parent's headers
(its credentials), metadata, peer and request id, and run in one task group: each starts as
soon as the calls whose answers it reads have answered, and a required call that fails
cancels the ones still running.

What the file decides (templates, dependency order) was parsed by `bridge.config.composition`;
what needs the protos (methods, request fields, response field paths) is compiled here once
per snapshot, so a request only fills values in. The start-up snapshot is checked strictly (a
problem is a `ConfigError` naming the aggregate and the call); a later snapshot that lost a
method, or changed a message so a template no longer fits, leaves that call failing with
UNIMPLEMENTED (or INVALID_ARGUMENT for the template) naming it, at request time.

Config routes share one route table with the snapshot's routes, so matching is most-specific
first across both; a config route and a proto route with the same method and path shape are
an error at start, and a later registration that would add such a route is refused (409).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from multidict import MultiMapping

from bridge import errors
from bridge.call import AGGREGATE, Call
from bridge.config import ConfigError, Settings
from bridge.config.composition import (
    CALL,
    ERRORS_KEY,
    PATH,
    Aggregate,
    PlannedCall,
    Ref,
    StaticRoute,
    Text,
)
from bridge.config.values import Problem
from bridge.errors import BridgeError
from bridge.registry.snapshot import Binding, Snapshot, SnapshotError
from bridge.routing import Route, RouteTable
from bridge.transcode.fields import FieldError, find_field, from_text, is_map, resolve
from bridge.upstream.metadata import Metadata

MISSING: Final = object()  # a reference with no value: the field is left out of the request
FALLBACK_HEADER: Final = "x-bridge-fallback"
_WRAPPED: Final = ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
# Message types whose JSON form is a scalar (a string, a number): URL text can set them.
_SCALAR_MESSAGES: Final = frozenset(
    f"google.protobuf.{n}" for n in ("Timestamp", "Duration", "FieldMask", "BytesValue")
) | frozenset(f"google.protobuf.{n}Value" for n in _WRAPPED)
_ANY_JSON: Final = frozenset(
    f"google.protobuf.{n}" for n in ("Struct", "Value", "ListValue", "Any")
)


@dataclass(frozen=True, slots=True)
class Parent:
    """What every child of one aggregate request shares: the HTTP request's call context."""

    metadata: Metadata
    timeout: float | None  # the client's grpc-timeout, for the whole aggregate
    peer: str | None
    request_id: str
    headers: Mapping[str, str]


class _Values:
    """What a request template reads: path variables, query parameters, earlier answers."""

    __slots__ = ("params", "query", "replies")

    def __init__(self, params: Mapping[tuple[str, ...], str], query: MultiMapping[str]) -> None:
        self.params = params
        self.query = query
        self.replies: dict[str, Any] = {}


Fill = Callable[[_Values], Any]


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

    def __init__(self, aggregate: Aggregate, source: str) -> None:
        self.aggregate = aggregate
        self.source = source
        self._compiled: weakref.WeakKeyDictionary[Snapshot, tuple[_Child, ...]] = (
            weakref.WeakKeyDictionary()
        )

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
        compiler = _Compiler(where, outputs)
        try:
            fill = compiler.message(call.request, binding.request.descriptor)
        except Problem as exc:
            raise Problem(f"{where}: {exc}", "request", *exc.at) from None
        _check_literals(call.request, binding, where)
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
        run = _Run(self.children(snapshot), parent, _Values(params, query))
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
        return answer, headers


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

    def __init__(self, children: tuple[_Child, ...], parent: Parent, values: _Values) -> None:
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
        reply = await binding.invoke(call)
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


# --- request templates against the request message ---------------------------------------------


def _shape(field: FieldDescriptor | None, element: bool = False) -> str:
    """What a field's JSON value is: "scalar", "object", "list", or "any" (Struct, Value...)."""
    if field is None:
        return "object"  # a whole response message
    if field.is_repeated and not element:
        return "object" if is_map(field) else "list"
    message = field.message_type
    if message is None or message.full_name in _SCALAR_MESSAGES:
        return "scalar"
    return "any" if message.full_name in _ANY_JSON else "object"


class _Compiler:
    """Turns a parsed request template into fill functions, checking it against the message."""

    def __init__(self, where: str, outputs: Mapping[str, Binding]) -> None:
        self.where = where
        self.outputs = outputs

    def message(self, node: dict[str, Any], message: Descriptor) -> Fill:
        fills: list[tuple[str, Fill]] = []
        for key, value in node.items():
            target = find_field(message, key)
            if target is None:
                raise Problem(f"no field '{key}' in {message.full_name}", key)
            fills.append((key, _placed(key, self.field, value, target, False)))
        return _mapping(fills)

    def field(self, node: Any, target: FieldDescriptor, element: bool) -> Fill:
        shape = _shape(target, element)
        if isinstance(node, Ref):
            return self.ref(node, target, shape)
        if isinstance(node, Text):
            return self.text(node, target, shape)
        if shape == "any":
            return self.opaque(node)
        if isinstance(node, dict):
            if shape != "object":
                raise Problem(
                    f"field '{target.name}' is not a message or map, it takes {_a(shape)}"
                )
            if is_map(target) and not element:
                value_field = target.message_type.fields_by_name["value"]
                items = [(k, _placed(k, self.field, v, value_field, True)) for k, v in node.items()]
                return _mapping(items)
            return self.message(node, target.message_type)
        if isinstance(node, list):
            if shape != "list":
                raise Problem(f"field '{target.name}' is not repeated")
            return _listing([_placed(i, self.field, v, target, True) for i, v in enumerate(node)])
        return lambda _values: node  # a literal: json_format checks it (_check_literals)

    def opaque(self, node: Any) -> Fill:
        """A value for a Struct, Value, ListValue or Any: any JSON, references filled in."""
        if isinstance(node, Ref):
            return self.ref(node, None, "any")
        if isinstance(node, Text):
            return self.text(node, None, "any")
        if isinstance(node, dict):
            return _mapping([(k, _placed(k, self.opaque, v)) for k, v in node.items()])
        if isinstance(node, list):
            return _listing([_placed(i, self.opaque, v) for i, v in enumerate(node)])
        return lambda _values: node

    def ref(self, ref: Ref, target: FieldDescriptor | None, shape: str) -> Fill:
        if ref.kind == CALL:
            return self.reply_ref(ref, shape)
        if shape not in ("scalar", "list", "any"):
            raise Problem(f"{ref} is URL text; field '{target and target.name}' takes {_a(shape)}")
        convert = _converter(target, ref, self.where) if shape != "any" else _as_is
        listed = shape == "list"
        if ref.kind == PATH:
            key = tuple(ref.name.split("."))

            def from_path(values: _Values) -> Any:
                text = values.params.get(key)
                if text is None:
                    return MISSING
                return [convert(text)] if listed else convert(text)

            return from_path
        name = ref.name

        def from_query(values: _Values) -> Any:
            given = values.query.getall(name, ())
            if not given:
                return MISSING
            if listed:
                return [convert(text) for text in given]
            if len(given) > 1:
                raise errors.invalid_argument(
                    f"query parameter '{name}' given {len(given)} times; {self.where} takes one"
                )
            return convert(given[0])

        return from_query

    def reply_ref(self, ref: Ref, shape: str) -> Fill:
        """A field of an earlier call's answer, by the names its JSON rendering uses."""
        binding = self.outputs[ref.name]
        output = binding.method.output.DESCRIPTOR
        try:
            path = resolve(output, ref.field) if ref.field else ()
        except FieldError as exc:
            raise Problem(f"{ref}: {exc}") from None
        source = _shape(path[-1] if path else None)
        if "any" not in (shape, source) and source != shape:
            raise Problem(f"{ref} is {_a(source)}; the field it sets takes {_a(shape)}")
        proto_names = binding.response.use_proto_names
        keys = tuple(f.name if proto_names else f.json_name for f in path)
        name = ref.name

        def from_reply(values: _Values) -> Any:
            value = values.replies[name]
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return MISSING if value is None else value

        return from_reply

    def text(self, text: Text, target: FieldDescriptor | None, shape: str) -> Fill:
        if shape not in ("scalar", "any"):
            raise Problem(f"text with references makes a string; the field takes {_a(shape)}")
        parts: list[Fill | str] = []
        for part in text.parts:
            if not isinstance(part, Ref):
                parts.append(part)
            elif part.kind == CALL:
                parts.append(self.reply_ref(part, "scalar"))
            else:
                parts.append(self.ref(part, None, "any"))
        convert = _converter(target, None, self.where) if target is not None else _as_is

        def joined(values: _Values) -> Any:
            out = []
            for part in parts:
                value = part if isinstance(part, str) else part(values)
                out.append("" if value is MISSING else _text(value))
            return convert("".join(out))

        return joined


def _a(shape: str) -> str:
    return f"an {shape}" if shape[0] in "aeiou" else f"a {shape}"


def _placed(key: str | int, compile: Callable[..., Fill], *args: Any) -> Fill:
    """``compile(*args)``, a Problem inside it placed below ``key``."""
    try:
        return compile(*args)
    except Problem as exc:
        raise Problem(str(exc), key, *exc.at) from None


def _mapping(items: list[tuple[str, Fill]]) -> Fill:
    def fill(values: _Values) -> dict[str, Any]:
        out = {}
        for key, one in items:
            value = one(values)
            if value is not MISSING:
                out[key] = value
        return out

    return fill


def _listing(items: list[Fill]) -> Fill:
    def fill(values: _Values) -> list[Any]:
        return [v for v in (one(values) for one in items) if v is not MISSING]

    return fill


def _as_is(text: str) -> str:
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _converter(target: FieldDescriptor, ref: Ref | None, where: str) -> Callable[[str], Any]:
    """URL text -> the JSON value of ``target`` (a boolean, an enum number...); a 400 if bad."""
    name = target.name

    def convert(text: str) -> Any:
        try:
            return from_text(target, text, name)
        except FieldError as exc:
            raise errors.invalid_argument(f"{where}: {ref or 'text'}: {exc}") from None

    return convert


def _check_literals(request: dict[str, Any], binding: Binding, where: str) -> None:
    """Parse the template's literal values alone (references left out): a Problem if wrong."""
    try:
        binding.request.from_json(_literals(request))
    except BridgeError as exc:
        raise Problem(f"{where}: {exc.message}", "request") from None


def _literals(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items() if not isinstance(v, Ref | Text)}
    if isinstance(node, list):
        return [_literals(v) for v in node if not isinstance(v, Ref | Text)]
    return node


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
        aggregates = tuple(AggregateRoute(a, source) for a in settings.aggregates)
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
