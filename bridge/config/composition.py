"""The config file's composed routes (SPEC section 7): `aggregates` and `static`.

Everything about them that the file alone decides is decided here, once: the route template,
each request template parsed into its references (path variables, query parameters, other
calls' response fields), the order the calls may run in, and every mistake a file can make on
its own (a cycle, an unknown call, a bad template) as a `Problem` naming the aggregate and the
call. What needs the protos (methods, message fields) is checked by `bridge.compose` against
the snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, ConfigDict, PrivateAttr, WithJsonSchema
from pydantic import model_validator as checks

from bridge.config.values import Bool, HeaderName, Problem, Section, describe, text, written
from bridge.routing.template import Template, TemplateError, parse_template

ERRORS_KEY: Final = "errors"  # where an aggregate's answer lists the optional calls that failed
_VERB: Final = re.compile(r"[A-Z]+")
_IDENT: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_METHOD: Final = re.compile(rf"{_IDENT}(?:\.{_IDENT})+/{_IDENT}")
_CALL_NAME: Final = re.compile(_IDENT)
_REFERENCE: Final = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
# Headers the HTTP server writes itself; a static route may not set them.
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True, slots=True)
class ConfigRoute:
    """An HTTP method and a google.api.http path template, as ``GET /v1/status`` writes it."""

    verb: str
    template: Template

    def __str__(self) -> str:
        return f"{self.verb} {self.template.source}"


def _route(value: Any) -> ConfigRoute:
    if isinstance(value, ConfigRoute):
        return value
    verb, _, path = text(value, "'METHOD /path'").partition(" ")
    if not _VERB.fullmatch(verb) or not path.strip():
        raise Problem(f"{value!r} is not 'METHOD /path' (like 'GET /v1/status')")
    try:
        return ConfigRoute(verb, parse_template(path.strip()))
    except TemplateError as exc:
        raise Problem(f"bad path template {exc}") from None


RouteSpec = Annotated[
    ConfigRoute,
    BeforeValidator(_route),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Z]+ /"}),
]


# --- request templates -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """A ``{...}`` reference: a path variable, a query parameter, or a field of a call's reply."""

    kind: str  # PATH, QUERY or CALL
    name: str  # the variable's dotted field path, the query parameter, or the call
    field: tuple[str, ...] = ()  # CALL: JSON field names into that call's response

    def __str__(self) -> str:
        return "{" + ".".join((self.name, *self.field)) + "}"


PATH: Final = "path"
QUERY: Final = "query"
CALL: Final = "call"


@dataclass(frozen=True, slots=True)
class Text:
    """A string holding references among literal text (``"user-{id}"``): always a string."""

    parts: tuple[str | Ref, ...]


# A request template node: a JSON literal, one whole reference (its value keeps its JSON
# type), a Text, or a mapping / list of nodes.
Node = Any


def parse_text(value: str) -> str | Ref | Text:
    """A template string: plain text, exactly one reference, or text with references in it.

    ``{name}`` and ``{name.field...}`` are references; ``{{`` and ``}}`` stand for braces.
    The references come back as CALL refs with the dotted name split; `classify` decides
    what each one names.
    """
    parts: list[str | Ref] = []
    literal: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if value.startswith(("{{", "}}"), i):
            literal.append(char)
            i += 2
        elif char == "{":
            end = value.find("}", i)
            inner = value[i + 1 : end] if end != -1 else ""
            if not _REFERENCE.fullmatch(inner):
                raise Problem(
                    f"{value!r}: expected a reference like {{id}} or {{call.field}} at offset "
                    f"{i} (write {{{{ for a literal brace)"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            head, *rest = inner.split(".")
            parts.append(Ref(CALL, head, tuple(rest)))
            i = end + 1
        elif char == "}":
            raise Problem(f"{value!r}: unmatched '}}' at offset {i} (write }}}} for a literal one)")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return parts[0]
    if not any(isinstance(p, Ref) for p in parts):
        return "".join(p for p in parts if isinstance(p, str))
    return Text(tuple(parts))


def classify(ref: Ref, variables: frozenset[str], calls: frozenset[str]) -> Ref:
    """What a parsed reference names: a path variable first, then a call, else a query name.

    A dotted reference must name a path variable or a call (a typo in a call's name is an
    error, not a query parameter nobody sends); a bare name may be a query parameter.
    """
    dotted = ".".join((ref.name, *ref.field))
    if dotted in variables:
        return Ref(PATH, dotted)
    if ref.name in calls:
        return ref
    if ref.field:
        known = ", ".join(sorted(calls))
        raise Problem(f"{ref} names no call ({known}) and no path variable")
    return Ref(QUERY, ref.name)


def parse_node(value: Any, variables: frozenset[str], calls: frozenset[str]) -> Node:
    """A request template value, its strings parsed and their references classified."""
    if isinstance(value, str):
        parsed = parse_text(value)
        if isinstance(parsed, Ref):
            return classify(parsed, variables, calls)
        if isinstance(parsed, Text):
            return Text(tuple(_classified(p, variables, calls) for p in parsed.parts))
        return parsed
    if isinstance(value, Mapping):
        return {str(k): _at(k, parse_node, v, variables, calls) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_at(i, parse_node, v, variables, calls) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise Problem(f"expected a JSON value, got {describe(value)}")


def _classified(part: str | Ref, variables: frozenset[str], calls: frozenset[str]) -> str | Ref:
    return classify(part, variables, calls) if isinstance(part, Ref) else part


def _at(key: str | int, read: Any, *args: Any) -> Any:
    """``read(*args)``, a Problem raised inside it placed below ``key``."""
    try:
        return read(*args)
    except Problem as exc:
        raise Problem(str(exc), key, *exc.at) from None


def references(node: Node) -> Iterator[Ref]:
    """Every reference in a parsed template, depth first."""
    if isinstance(node, Ref):
        yield node
    elif isinstance(node, Text):
        yield from (p for p in node.parts if isinstance(p, Ref))
    elif isinstance(node, dict):
        for item in node.values():
            yield from references(item)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


class CycleError(ValueError):
    """Calls that wait for each other, in the order they wait."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(" -> ".join(cycle))
        self.cycle = cycle


def dependency_order(needs: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
    """The calls ordered so that each comes after the calls it needs; CycleError if none is.

    Ties keep the file's order, so the order is the same on every start.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise CycleError([*path[path.index(name) :], name])
        state[name] = 1
        for need in sorted(needs[name], key=list(needs).index):
            visit(need, [*path, name])
        state[name] = 2
        order.append(name)

    for name in needs:
        visit(name, [])
    return tuple(order)


# --- the sections ----------------------------------------------------------------------------


def _method_name(value: Any) -> str:
    name = text(value, "a method like demo.users.v1.UserService/GetUser")
    if not _METHOD.fullmatch(name):
        raise Problem(f"{name!r} is not a method name like demo.users.v1.UserService/GetUser")
    return name


def _call_name(value: Any) -> str:
    if not isinstance(value, str) or not _CALL_NAME.fullmatch(value):
        raise Problem("a call name is letters, digits and '_', not starting with a digit")
    if value == ERRORS_KEY:
        raise Problem(f"'{ERRORS_KEY}' is where the answer lists failed optional calls")
    return value


_JSON_OBJECT: Final = {"type": "object", "additionalProperties": True}


class AggregateCall(Section):
    """One gRPC call of an aggregate; its answer is the aggregate's key of the same name."""

    method: Annotated[str, BeforeValidator(_method_name)]
    """The unary method called, `package.Service/Method`."""
    request: Annotated[dict[str, Any], WithJsonSchema(_JSON_OBJECT)] = written({})
    """The request message as JSON. A string may hold references: `{id}` a path variable,
    `{q}` a query parameter, `{user.favoriteCategory}` a field of call `user`'s answer (its
    JSON names; the call then waits for `user`). A string that is one reference takes the
    referenced value as it is (a number, an object); `{{` and `}}` are literal braces."""
    optional: Bool = False
    """When it fails, the aggregate answers without it and lists its status under `errors`;
    a required call that fails fails the whole aggregate."""


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """A call as the file declares it, its request template parsed."""

    name: str
    method: str
    request: dict[str, Node]
    optional: bool
    needs: frozenset[str]  # the calls whose answers its template reads


@dataclass(frozen=True, slots=True)
class Aggregate:
    """An aggregate route as the code uses it: calls in an order that respects their needs."""

    route: ConfigRoute
    calls: tuple[PlannedCall, ...]  # in dependency order
    index: int  # its place in `aggregates`, for error keys

    def where(self, call: str | None = None) -> str:
        """How errors name it: ``aggregate 'GET /x' call 'user'``."""
        named = f"aggregate '{self.route}'"
        return f"{named} call '{call}'" if call else named


class AggregateSection(Section):
    """One HTTP route answered by several gRPC calls, as one JSON object keyed by call name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    route: RouteSpec
    """`METHOD /path`, the path a google.api.http template (`GET /bff/v1/users/{id}/home`)."""
    calls: dict[Annotated[str, BeforeValidator(_call_name)], AggregateCall]
    """The calls by name. Calls that need no other's answer run at once, concurrently."""
    _plan: Aggregate | None = PrivateAttr(None)

    @checks(mode="after")
    def _planned(self) -> AggregateSection:
        if not self.calls:
            raise Problem("required: name at least one call", "calls")
        variables = frozenset(v.dotted for v in self.route.template.variables)
        names = frozenset(self.calls)
        planned: dict[str, PlannedCall] = {}
        for name, call in self.calls.items():
            where = f"aggregate '{self.route}' call '{name}'"
            try:
                request = parse_node(call.request, variables, names)
            except Problem as exc:
                raise Problem(f"{where}: {exc}", "calls", name, "request", *exc.at) from None
            needs = frozenset(r.name for r in references(request) if r.kind == CALL)
            if name in needs:
                raise Problem(f"{where} reads its own answer", "calls", name, "request")
            planned[name] = PlannedCall(name, call.method, request, call.optional, needs)
        try:
            order = dependency_order({n: c.needs for n, c in planned.items()})
        except CycleError as exc:
            first = exc.cycle[0]
            raise Problem(
                f"aggregate '{self.route}' call '{first}': its calls wait for each other in a "
                f"cycle ({exc})",
                "calls",
                first,
            ) from None
        self._plan = Aggregate(self.route, tuple(planned[n] for n in order), -1)
        return self

    def plan(self, index: int) -> Aggregate:
        assert self._plan is not None  # set by validation
        return Aggregate(self._plan.route, self._plan.calls, index)


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise Problem(f"expected an HTTP status from 200 to 599, got {describe(value)}")
    return value


def _header_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Problem(f"expected a header value (a string), got {describe(value)}")
    shown = str(value)
    if not shown.isascii() or not shown.isprintable():
        raise Problem("a header value must be printable ASCII")
    return shown


class StaticRoute(Section):
    """A route the bridge answers itself with a fixed status, JSON body and headers."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    route: RouteSpec
    """`METHOD /path`, the path a google.api.http template (`GET /v1/status`)."""
    status: Annotated[int, BeforeValidator(_status)] = 200
    """The HTTP status of the answer."""
    body: Annotated[Any, WithJsonSchema({})] = None
    """The answer's body, any JSON value (sent as `application/json`); unset, no body."""
    headers: dict[HeaderName, Annotated[str, BeforeValidator(_header_value)]] = written({})
    """More headers of the answer (`Content-Type` may replace `application/json`)."""

    @checks(mode="after")
    def _sendable(self) -> StaticRoute:
        for name in self.headers:
            if name in _FRAMING:
                raise Problem("is written by the HTTP server itself", "headers", name)
        if self.body is not None and self.status in (204, 304):
            raise Problem(f"a {self.status} answer has no body", "body")
        if self.body is not None:
            try:
                json.dumps(self.body, allow_nan=False)
            except ValueError as exc:
                raise Problem(f"is not JSON: {exc}", "body") from None
        return self

    def rendered(self) -> bytes:
        """The body as sent."""
        return b"" if self.body is None else json.dumps(self.body).encode()


def check_routes(aggregates: tuple[AggregateSection, ...], static: tuple[StaticRoute, ...]) -> None:
    """Refuse two config routes that match the same requests (same method and path shape)."""
    seen: dict[tuple[str, tuple[str, ...]], str] = {}
    entries = [("aggregates", i, a.route) for i, a in enumerate(aggregates)]
    entries += [("static", i, s.route) for i, s in enumerate(static)]
    for section, i, route in entries:
        key = (route.verb, route.template.shape)
        where = f"{section}[{i}]"
        if key in seen:
            raise Problem(
                f"'{route}' matches the same requests as {seen[key]}", section, i, "route"
            )
        seen[key] = f"{where} ('{route}')"
