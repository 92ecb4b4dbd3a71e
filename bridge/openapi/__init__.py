"""The OpenAPI 3.1 document of a snapshot's HTTP routes, with schemas derived from the messages.

A patterned variable keeps its literal segments in the path: ``/v1/{name=users/*}`` becomes
``/v1/users/{name}`` whose parameter holds the last segment only, so a generated client that
fills it with ``2`` sends ``/v1/users/2``, which the bridge routes (a parameter holding
``users/2`` would be sent percent-encoded, ``users%2F2``, which no route matches). A trailing
``:verb`` stays literal. The ``.proto`` comments (``source_code_info``, kept by the compiler;
files found by reflection may lack it) become the descriptions. Schemas follow the proto3
JSON mapping the bridge speaks (int64 as string, enums by name, well-known types in their JSON
forms); a ``google.api.HttpBody`` the bridge takes or answers raw is ``*/*`` binary, not JSON.
Paths, methods and schemas come out in a fixed order, so one snapshot always gives the same
document. The message schemas live in `schemas`, the comment index in `comments`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Final

from google.protobuf.descriptor import Descriptor
from google.rpc import status_pb2

from bridge.compose import AggregateRoute
from bridge.config.composition import ERRORS_KEY, QUERY, references
from bridge.config.policies import AuthSettings
from bridge.http import JSON, NDJSON, SSE
from bridge.openapi.comments import comment_index
from bridge.openapi.schemas import BINARY, URL_TEXT, Schema, Schemas
from bridge.policy.auth import UNMATCHED
from bridge.registry.snapshot import Binding, Snapshot
from bridge.routing import Route
from bridge.routing.template import Segment, SegmentKind, Template, Variable
from bridge.transcode.fields import FieldPath

__all__ = ["OPENAPI_VERSION", "openapi_document", "openapi_path"]

OPENAPI_VERSION: Final = "3.1.0"

_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_QUERY_DEPTH: Final = 3  # longest dotted query name; deeper fields are rarely meant for URLs
_TEMPLATE_VAR: Final = re.compile(r"\{[^}]*\}")
_REGEX_SPECIAL: Final = re.compile(r"[.^$+?()\[\]|\\]")  # no "\-": invalid in ECMA-262 /u
_ANY_TYPE: Final = "*/*"  # the media type of raw HttpBody bodies: whatever the message says


def openapi_document(
    snapshot: Snapshot,
    *,
    title: str = "Bridge",
    use_proto_names: bool = False,
    version: str = "1.0.0",
    composed: Sequence[Route] = (),
    auth: AuthSettings | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) of every HTTP route of the snapshot.

    ``composed`` are the config's aggregate and static routes (`bridge.compose`); ``auth``
    gives the security schemes and each operation's requirement from its method's rule.
    """
    comments = comment_index(snapshot)
    schemas = Schemas(use_proto_names, comments)
    paths = _Paths()
    routes = snapshot.routes.routes
    ids = _operation_ids(routes)
    for route in sorted(routes, key=lambda r: (r.template.source, r.verb, r.owner)):
        build = functools.partial(_operation, route, ids[route], schemas=schemas, auth=auth)
        paths.add(route, build)
    for route in composed:
        paths.add(route, functools.partial(_composed_operation, route, snapshot, schemas))
    tags = {r.target.method.service for r in routes} | {r.owner.partition("[")[0] for r in composed}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "tags": [_tag(s, comments) for s in sorted(tags)],
        "paths": {path: paths.items[path] for path in sorted(paths.items)},
        "components": {"schemas": schemas.components()},
    }
    if auth is not None:
        document["components"]["securitySchemes"] = _security_schemes(auth)
    if paths.unlisted:  # OpenAPI cannot hold them all: custom HTTP methods, identical paths
        document["x-bridge-unlisted-routes"] = paths.unlisted
    return document


# --- paths -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PathParam:
    """A path parameter: the request field it sets (None: no field of its own), its pattern."""

    name: str
    field_path: tuple[str, ...] | None
    pattern: str | None = None
    description: str | None = None


class _Paths:
    """Path items keyed by OpenAPI path; finds each route a path no other route holds."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.shapes: dict[str, str] = {}  # the path with parameter names blanked -> the path
        self.unlisted: list[str] = []

    def add(self, route: Route, build: Callable[[list[_PathParam]], dict[str, Any]]) -> None:
        verb = route.verb.lower()
        if verb not in _METHODS:
            self.unlisted.append(f"{route}: OpenAPI has no HTTP method {route.verb}")
            return
        path, params = openapi_path(route.template, expand=True)
        taken = self.shapes.setdefault(_TEMPLATE_VAR.sub("{}", path), path)
        item = self.items.setdefault(taken, {})
        if verb not in item:
            # OpenAPI deems paths that differ only in parameter names identical: share one.
            item[verb] = build(_renamed(params, path, taken))
            self.items[taken] = {v: item[v] for v in _METHODS if v in item}
            return
        self.unlisted.append(f"{route}: another route has the same OpenAPI path and method")


def _renamed(params: list[_PathParam], path: str, taken: str) -> list[_PathParam]:
    """The parameters of ``path`` under the names that ``taken``, of the same shape, uses."""
    names = dict(zip(_TEMPLATE_VAR.findall(path), _TEMPLATE_VAR.findall(taken), strict=True))
    renamed = []
    for param in params:
        name = names["{" + param.name + "}"][1:-1]
        note = param.description
        if name != param.name:
            note = note or f"Sets `{'.'.join(param.field_path or ())}`."
            for old, new in names.items():
                note = note.replace(old, new)
        renamed.append(replace(param, name=name, description=note))
    return renamed


def openapi_path(template: Template, *, expand: bool = False) -> tuple[str, list[_PathParam]]:
    """A template in OpenAPI form (``/v1/{user.name}:verb``) and its path parameters.

    With ``expand``, the literal segments of a variable's pattern stay in the path and each
    wildcard becomes a parameter of its own (``/v1/users/{user.name}``).
    """
    starts = {v.start: v for v in template.variables}
    segments = template.segments
    parts: list[str] = []
    params: list[_PathParam] = []
    i = 0
    while i < len(segments):
        var = starts.get(i)
        if var is None:
            parts.append(_anonymous(segments[i], params))
            i += 1
            continue
        end = len(segments) if var.end is None else var.end
        parts.append(_variable(var, segments[i:end], expand, params))
        i = end
    verb = f":{template.verb}" if template.verb else ""
    return "/" + "/".join(parts) + verb, params


def _anonymous(segment: Segment, params: list[_PathParam]) -> str:
    """A literal, or a wildcard outside any variable: a parameter that sets no field."""
    if segment.kind is SegmentKind.LITERAL:
        return segment.literal
    name = f"_segment{len(params) + 1}"
    pattern = _regex((segment,)) if segment.kind is SegmentKind.MULTI else None
    params.append(_PathParam(name, None, pattern, "Any value; it sets no request field."))
    return "{" + name + "}"


def _variable(
    var: Variable, segments: tuple[Segment, ...], expand: bool, params: list[_PathParam]
) -> str:
    """``{field=pattern}``: one parameter with the pattern, or (expanded) one per wildcard."""
    shape = "/".join(s.shape for s in segments)
    if not expand or shape in ("*", "**"):
        note = f"Sets `{var.dotted}` to the part of the path matching `{shape}`."
        pattern = None if shape == "*" else _regex(segments)
        params.append(_PathParam(var.dotted, var.field_path, pattern, pattern and note))
        return "{" + var.dotted + "}"
    parts: list[str] = []
    wildcards: list[tuple[str, Segment]] = []
    for segment in segments:
        name = var.dotted if not wildcards else f"{var.dotted}_{len(wildcards) + 1}"
        if segment.kind is not SegmentKind.LITERAL:
            wildcards.append((name, segment))
        parts.append(segment.literal or "{" + name + "}")
    written = "/".join(parts)
    for name, segment in wildcards:
        pattern = _regex((segment,)) if segment.kind is SegmentKind.MULTI else None
        params.append(_PathParam(name, None, pattern, f"Sets `{var.dotted}` to `{written}`."))
    return written


def _regex(segments: Iterable[Segment]) -> str:
    """An anchored ECMA-262 pattern for a run of template segments."""
    pieces = {SegmentKind.SINGLE: "[^/]+", SegmentKind.MULTI: ".+"}
    return (
        "^"
        + "/".join(
            _REGEX_SPECIAL.sub(r"\\\g<0>", s.literal) if s.literal else pieces[s.kind]
            for s in segments
        )
        + "$"
    )


# --- operations ------------------------------------------------------------------------------


def _is_default(route: Route) -> bool:
    """Whether this is the ``POST /pkg.Service/Method`` route every method gets."""
    return route.verb == "POST" and route.template.source == route.target.method.grpc_path


def _operation_ids(routes: Iterable[Route]) -> dict[Route, str]:
    """``Service_Method`` for a method's first HTTP rule, ``_1``, ``_2`` for the others.

    The default route is ``Service_Method_rpc`` when the method has HTTP rules of its own (they
    own the plain id), else plain. A service name shared by two packages is spelled in full.
    """
    by_method: dict[str, list[Route]] = {}
    for route in routes:
        by_method.setdefault(route.target.method.full_name, []).append(route)
    services = {group[0].target.method.service for group in by_method.values()}
    short = [s.rpartition(".")[2] for s in services]
    ids: dict[Route, str] = {}
    for group in by_method.values():
        method = group[0].target.method
        service = method.service.rpartition(".")[2]
        if short.count(service) > 1:
            service = method.service.replace(".", "_")
        base = f"{service}_{method.name}"
        rules = [r for r in group if not _is_default(r)]
        ids.update((r, f"{base}_{i}" if i else base) for i, r in enumerate(rules))
        ids.update((r, f"{base}_rpc" if rules else base) for r in group if _is_default(r))
    return ids


def _operation(
    route: Route,
    operation_id: str,
    path_params: list[_PathParam],
    schemas: Schemas,
    auth: AuthSettings | None,
) -> dict[str, Any]:
    """One OpenAPI operation: the parameters, request body and responses of a route."""
    binding: Binding = route.target
    method = binding.method
    description = f"Calls `{method.full_name}` ({method.kind.replace('_', ' ')})."
    comment = schemas.comments.get(f"{method.service}.{method.name}")
    if comment:
        description = f"{comment}\n\n{description}"
    if binding.request.infer_mask:
        mask = schemas.key(binding.request.descriptor.fields_by_name["update_mask"])
        description += f" Without `{mask}`, it updates the fields present in the body."
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [method.service],
        "summary": method.name,
        "description": description,
        "x-grpc": {"method": method.full_name, "kind": method.kind},
    }
    parameters = [_path_parameter(p, binding, schemas) for p in path_params]
    parameters += _query_parameters(binding, schemas)
    if not binding.response.raw:  # raw HttpBody replies have no fields to select
        parameters.append(fields_parameter(binding.request.selection_keys[0]))
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(binding, schemas)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = _responses(binding, schemas)
    if auth is not None:
        security = _security(auth, f"{method.service}/{method.name}")
        if security:
            operation["security"] = security
    return operation


# --- security --------------------------------------------------------------------------------

_API_KEY: Final = "apiKey"
_BEARER: Final = "bearerJwt"


def _security_schemes(auth: AuthSettings) -> dict[str, Any]:
    """The credentials the config accepts: an API key header, a JWT bearer token."""
    schemes: dict[str, Any] = {}
    if auth.api_keys is not None:
        schemes[_API_KEY] = {"type": "apiKey", "in": "header", "name": auth.api_keys.header}
    if auth.jwt is not None:
        schemes[_BEARER] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    return schemes


def _security(auth: AuthSettings, method: str) -> list[dict[str, list[str]]]:
    """The method's requirement from its first matching rule (bridge/policy/auth.py): none is
    no security, ``any`` is either credential; a JWT's requirement lists the rule's scopes."""
    rule = next((r for r in auth.rules if fnmatchcase(method, r.match)), UNMATCHED)
    options: dict[str, list[dict[str, list[str]]]] = {
        "api_key": [{_API_KEY: []}] if auth.api_keys else [],
        "jwt": [{_BEARER: list(rule.scopes)}] if auth.jwt else [],
    }
    if rule.require == "none":
        return []
    if rule.require == "any":
        return options["api_key"] + options["jwt"]
    return options[rule.require]


def fields_parameter(name: str = "fields") -> dict[str, Any]:
    """The ``fields`` system parameter (bridge/transcode/partial.py) of a route answering JSON."""
    about = (
        "Google APIs' partial response: keep only these fields of the response, e.g. "
        "`id,address(city),items/title` (`*` is every field of a level). A selection inside a "
        "list or map applies to each element; a name that is not a field is a 400."
    )
    if name != "fields":
        about += " Spelled `$fields` here: the request has a field called `fields`."
    return {"name": name, "in": "query", "description": about, "schema": {"type": "string"}}


def _path_parameter(param: _PathParam, binding: Binding, schemas: Schemas) -> dict[str, Any]:
    schema: Schema = {"type": "string", "pattern": param.pattern}
    if param.pattern is None:
        fields = dict(binding.request.variables).get(param.field_path or ())
        schema = schemas.url_value(fields[-1]) if fields else {"type": "string"}
    parameter = {"name": param.name, "in": "path", "required": True, "schema": schema}
    if param.description:
        parameter["description"] = param.description
    return parameter


def _query_parameters(binding: Binding, schemas: Schemas) -> list[dict[str, Any]]:
    """Fields that no path variable or body sets, as query parameters (dotted when nested)."""
    request = binding.request
    if request.body == "*" or binding.method.client_streaming:
        return []  # a client stream is read from the body alone
    root = request.descriptor
    return [
        {"name": ".".join(schemas.key(f) for f in path), "in": "query",
         "schema": schemas.url_value(path[-1])}
        for path in _query_fields(root, request.bound, (), frozenset({root.full_name}))
    ]  # fmt: skip


def _query_fields(
    message: Descriptor,
    bound: frozenset[tuple[str, ...]],
    prefix: FieldPath,
    seen: frozenset[str],
) -> Iterator[FieldPath]:
    """Field paths a URL can set: scalars, enums, lists of them, text-valued well-known types."""
    for f in message.fields:
        path = (*prefix, f)
        nested = f.message_type
        if tuple(p.name for p in path) in bound:
            continue
        if nested is None or nested.full_name in URL_TEXT:
            yield path
        elif not (f.is_repeated or nested.full_name.startswith("google.protobuf.")) and (
            len(path) < _QUERY_DEPTH and nested.full_name not in seen  # cycles end here
        ):
            yield from _query_fields(nested, bound, path, seen | {nested.full_name})


def _request_body(binding: Binding, schemas: Schemas) -> dict[str, Any] | None:
    """The body: the whole message (``*``), one field, raw bytes for an HttpBody, or NDJSON
    messages for a client stream (whose HttpBody messages are JSON, like any other)."""
    request = binding.request
    if binding.method.client_streaming:
        message = schemas.message(request.descriptor)
        array = {"type": "array", "items": message}
        stream = {NDJSON: {"schema": message}, JSON: {"schema": array}}
        about = "The request stream: one message per line (NDJSON), or a JSON array of messages."
        return {"description": about, "content": copy.deepcopy(stream)}
    if request.body is None:
        return None
    if request.raw_body is not None:
        return _raw_request_body(request.raw_body)
    cut = {tuple(f.name for f in path) for _, path in request.variables}
    if request.body == "*":
        return {"content": {JSON: {"schema": schemas.without(request.descriptor, cut)}}}
    body = request.descriptor.fields_by_name[request.body]
    below = {p[1:] for p in cut if p[0] == body.name}
    schema = schemas.without(body.message_type, below) if below else schemas.field(body)
    return {"content": {JSON: {"schema": schema}}}


def _responses(binding: Binding, schemas: Schemas) -> dict[str, Any]:
    """``200`` with the message (a stream of them for server streaming); ``default``: Status."""
    plan, output = binding.response, binding.method.output.DESCRIPTOR
    out = schemas.message(output) if plan.field is None else schemas.field(plan.field)
    name = output.full_name + (f".{plan.field.name}" if plan.field else "")
    status = schemas.message(status_pb2.Status.DESCRIPTOR)
    ok: dict[str, Any] = {"description": f"`{name}`", "content": {JSON: {"schema": out}}}
    if plan.raw:
        ok = _raw_reply(name, binding.method.server_streaming)
    elif binding.method.server_streaming:
        ok["description"] = (
            f'A stream of `{name}`. NDJSON: a `{{"result": message}}` line per message; a '
            'failure after the first line ends it with `{"error": status}`. With `Accept: '
            "text/event-stream`: a `data: <message>` event per message, and `event: error` "
            "with the status if the call fails."
        )
        line = {"oneOf": [_one_key("result", out), _one_key("error", dict(status))]}
        ok["content"] = {NDJSON: {"schema": line}, SSE: {"schema": {"type": "string"}}}
    about = "An error: a `google.rpc.Status`; the HTTP status follows its code."
    return {"200": ok, "default": {"description": about, "content": {JSON: {"schema": status}}}}


def _raw_request_body(path: tuple[str, ...]) -> dict[str, Any]:
    """The raw body of an HttpBody request (bridge/transcode/request.py): any bytes, any type."""
    at = "".join(f"{name}." for name in path)
    about = (
        "Any bytes of any media type, taken raw into a `google.api.HttpBody`: the body is "
        f"`{at}data`, its `Content-Type` header (printable ASCII) `{at}content_type`."
    )
    return {"description": about, "content": {_ANY_TYPE: {"schema": dict(BINARY)}}}


def _raw_reply(name: str, streaming: bool) -> dict[str, Any]:
    """The raw answer of an HttpBody reply, or of a stream of them (bridge/http.py)."""
    about = (
        f"Raw bytes: the `data` of the `{name}` reply, under its `content_type` "
        "(`application/octet-stream` when it has none)."
    )
    if streaming:
        about = (
            f"Raw bytes: the `data` of each `{name}` of the stream, written as it arrives, "
            "under the first one's `content_type` (`application/octet-stream` when it has "
            "none), whatever the `Accept` header asks (no NDJSON, no Server-Sent Events). A "
            'failure after the first byte ends the body with a line `{"error": status}` and '
            "closes the connection without the last chunk, so the body reads as cut short."
        )
    about += " A `fields` selection is a 400: raw bytes have no fields to select."
    return {"description": about, "content": {_ANY_TYPE: {"schema": dict(BINARY)}}}


def _one_key(key: str, schema: Schema) -> Schema:
    return {"type": "object", "properties": {key: schema}, "required": [key]}


# --- the config's routes: aggregates and static answers --------------------------------------


def _composed_operation(
    route: Route, snapshot: Snapshot, schemas: Schemas, path_params: list[_PathParam]
) -> dict[str, Any]:
    """The operation of an aggregate (its calls' answers by name) or of a static answer."""
    section = route.owner.partition("[")[0]  # "aggregates" or "static"
    operation: dict[str, Any] = {
        "operationId": re.sub(r"\W", "_", route.owner).strip("_"),
        "tags": [section],
        "summary": f"{route.verb} {route.template.source}",
    }
    parameters = [
        {"name": p.name, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in path_params
    ]
    target = route.target
    if not isinstance(target, AggregateRoute):
        operation["description"] = "Answered by the bridge itself (`static` in the config)."
        ok: dict[str, Any] = {"description": f"HTTP {target.status}"}
        if target.body:
            ok["content"] = {JSON: {"schema": {}, "example": json.loads(target.body)}}
        operation["responses"] = {str(target.status): ok}
        return operation
    aggregate = target.aggregate
    queries = sorted({r.name for c in aggregate.calls for r in references(c.request)
                      if r.kind == QUERY})  # fmt: skip
    parameters += [{"name": q, "in": "query", "schema": {"type": "string"}} for q in queries]
    parameters.append(fields_parameter("$fields" if "fields" in queries else "fields"))
    if parameters:
        operation["parameters"] = parameters
    properties: dict[str, Schema] = {}
    for call in aggregate.calls:
        binding = snapshot.bindings.get(call.method)
        properties[call.name] = {} if binding is None else _output(binding, schemas)
    status = schemas.message(status_pb2.Status.DESCRIPTOR)
    properties[ERRORS_KEY] = {
        "type": "object",
        "description": "The optional calls that failed, each with its `google.rpc.Status`.",
        "additionalProperties": status,
    }
    calls = ", ".join(f"`{c.name}` ({c.method}{', optional' if c.optional else ''})"
                      for c in aggregate.calls)  # fmt: skip
    operation["description"] = f"An aggregate of {calls}: one JSON object keyed by call name."
    operation["x-bridge-aggregate"] = {
        c.name: {"method": c.method, "optional": c.optional, "needs": sorted(c.needs)}
        for c in aggregate.calls
    }
    answer = {
        "type": "object",
        "properties": properties,
        "required": [c.name for c in aggregate.calls if not c.optional],
    }
    about = "An error (a required call failed): a `google.rpc.Status`."
    operation["responses"] = {
        "200": {"description": "The calls' answers", "content": {JSON: {"schema": answer}}},
        "default": {"description": about, "content": {JSON: {"schema": status}}},
    }
    return operation


def _output(binding: Binding, schemas: Schemas) -> Schema:
    plan, output = binding.response, binding.method.output.DESCRIPTOR
    return schemas.message(output) if plan.field is None else schemas.field(plan.field)


def _tag(service: str, comments: dict[str, str]) -> dict[str, str]:
    comment = comments.get(service)
    return {"name": service, "description": comment} if comment else {"name": service}
