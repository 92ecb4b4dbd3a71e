"""Compiled descriptors -> methods, bindings and routes: one immutable snapshot of what is served.

Every snapshot owns a fresh DescriptorPool, so a package can be re-registered with different
content without clashing with an older version that calls in flight may still be using.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from bridge.call import Call, Invoke, Reply
from bridge.policy import Chains
from bridge.routing import Route, RouteConflict, RouteTable, TemplateError, parse_template
from bridge.transcode.fields import FieldError
from bridge.transcode.request import RequestPlan
from bridge.transcode.response import ResponsePlan

KINDS: Final = {
    (False, False): "unary",
    (False, True): "server_streaming",
    (True, False): "client_streaming",
    (True, True): "bidi_streaming",
}
INCLUDE: Final = "include"  # the proto set of the config's protos.include
_VERBS: Final = ("get", "put", "post", "delete", "patch")


class SnapshotError(Exception):
    """The protos cannot be served as they are: a bad rule, a collision, a missing upstream."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # another proto set owns the service, route or file


@dataclass(frozen=True, eq=False)
class Method:
    """One gRPC method: its message classes, call kind and the upstream that serves it."""

    service: str
    name: str
    input: type[Message]
    output: type[Message]
    client_streaming: bool
    server_streaming: bool
    upstream: str
    source: str  # the proto set (include or registration name) that defined it
    # Safe to repeat after it reached a backend (SPEC 7): a `get` rule, or an idempotency_level
    # of NO_SIDE_EFFECTS or IDEMPOTENT. Only such calls are retried on the `retries` codes.
    safe: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.name}"

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def kind(self) -> str:
        return KINDS[(self.client_streaming, self.server_streaming)]


@dataclass(frozen=True, eq=False)
class Binding:
    """What a route resolves to: the method, its prepared plans, and the method's chain."""

    method: Method
    request: RequestPlan
    response: ResponsePlan
    invoke: Invoke  # the method's policy steps and the upstream call, shared by its routes
    route: str = ""  # the route's template (the metrics' bounded route label)


@dataclass(frozen=True)
class ProtoSet:
    """A compiled group of protos and the files among them whose services are served."""

    name: str
    files: descriptor_pb2.FileDescriptorSet
    exposed: frozenset[str]
    upstream: str | None = None  # fixed upstream; None = by the config's `services` globs
    weak: bool = False  # discovered (reflection): yields services and files others define


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything needed to serve a request, never mutated after it is built."""

    pool: descriptor_pool.DescriptorPool
    methods: Mapping[str, Method]
    routes: RouteTable
    sets: tuple[ProtoSet, ...] = field(default=())
    # Each method's whole-message binding (its default POST route): used by WebSocket calls.
    bindings: Mapping[str, Binding] = field(default_factory=dict)

    def services(self, source: str | None = None) -> list[str]:
        return sorted({m.service for m in self.methods.values() if source in (None, m.source)})


@dataclass(frozen=True)
class JsonShape:
    emit_unpopulated: bool = True
    use_proto_names: bool = False
    discard_unknown: bool = False


UpstreamResolver = Callable[[str], "str | None"]


async def _not_served(call: Call) -> Reply:
    raise RuntimeError(f"{call.binding.method.full_name}: snapshot built without a call path")


def build_snapshot(
    sets: Sequence[ProtoSet],
    resolve_upstream: UpstreamResolver,
    json: JsonShape,
    chains: Chains | None = None,
) -> Snapshot:
    """Load every set into a new pool and compile its methods and routes; SnapshotError if wrong.

    ``chains`` gives each method its call path (policies and upstream); without it (``bridge
    check``, ``bridge openapi``) the snapshot describes the routes but cannot serve them.
    """
    pool = _load_pool(sets)
    methods: dict[str, Method] = {}
    routes: list[Route] = []
    for proto_set in sets:
        for file_proto in proto_set.files.file:
            if file_proto.name not in proto_set.exposed:
                continue
            for service_proto in file_proto.service:
                service = _qualified(file_proto.package, service_proto.name)
                if proto_set.weak and any(m.service == service for m in methods.values()):
                    continue
                upstream = proto_set.upstream or resolve_upstream(service)
                if upstream is None:
                    raise SnapshotError(
                        f"{file_proto.name}: service {service} has no upstream "
                        "(map it under 'services:' in the config)"
                    )
                for method_proto in service_proto.method:
                    with _depth_guard(f"{service}/{method_proto.name}", method_proto):
                        method = _method(pool, service, method_proto, upstream, proto_set.name)
                        _add_method(methods, method)
                        invoke = _not_served if chains is None else chains(method)
                        routes.extend(_routes(method, method_proto, pool, json, invoke))
    try:
        table = RouteTable(routes)
    except RouteConflict as exc:
        owners = f"'{exc.first.target.method.source}' and '{exc.second.target.method.source}'"
        raise SnapshotError(f"{exc} (defined by {owners})", conflict=True) from None
    bindings = {
        r.owner: r.target for r in routes if r.template.source == _default_path(r.target.method)
    }
    return Snapshot(pool, MappingProxyType(methods), table, tuple(sets), MappingProxyType(bindings))


@contextlib.contextmanager
def _depth_guard(method: str, proto: descriptor_pb2.MethodDescriptorProto) -> Iterator[None]:
    """Turn Python's recursion limit, hit by a very long chain of message types, into a 400.

    protobuf's class factory and the bridge's own walks of a type (its plans, whether it
    recurses) descend one level per message field, so a chain of some hundreds of types nested
    by field would end the snapshot build with a RecursionError.
    """
    try:
        yield
    except RecursionError:
        types = " or ".join(sorted({proto.input_type.lstrip("."), proto.output_type.lstrip(".")}))
        raise SnapshotError(
            f"{method}: message type {types} nests message fields too deeply to be served"
        ) from None


def _add_method(methods: dict[str, Method], method: Method) -> None:
    other = methods.get(method.full_name)
    if other is not None:
        raise SnapshotError(
            f"service {method.service} is defined by both '{other.source}' and '{method.source}'",
            conflict=True,
        )
    methods[method.full_name] = method


def _default_path(method: Method) -> str:
    return f"/{method.service}/{method.name}"


def _load_pool(sets: Iterable[ProtoSet]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    seen: dict[str, tuple[bytes, str]] = {}
    owners: dict[str, str] = {}  # top-level symbol -> the set whose file defined it
    for proto_set in sets:
        for file_proto in proto_set.files.file:
            data = file_proto.SerializeToString(deterministic=True)
            previous = seen.get(file_proto.name)
            if previous is not None:
                if not proto_set.weak and _differ(previous[0], data):
                    raise SnapshotError(
                        f"{file_proto.name} differs between '{previous[1]}' and '{proto_set.name}'",
                        conflict=True,
                    )
                continue
            # The pool would refuse a symbol defined twice without saying by whom: a conflict.
            clash = next((s for s in _symbols(file_proto) if s in owners), None)
            if clash is not None:
                raise SnapshotError(
                    f"{clash} is defined by both '{owners[clash]}' and '{proto_set.name}'",
                    conflict=True,
                )
            owners.update(dict.fromkeys(_symbols(file_proto), proto_set.name))
            seen[file_proto.name] = (data, proto_set.name)
            try:
                pool.AddSerializedFile(data)
            except (TypeError, ValueError) as exc:
                raise SnapshotError(f"{file_proto.name}: {exc}") from None
    return pool


def _symbols(file_proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """The names a file defines at package level (enum values live there too, as in C++)."""
    names = [
        *(m.name for m in file_proto.message_type),
        *(e.name for e in file_proto.enum_type),
        *(v.name for e in file_proto.enum_type for v in e.value),
        *(s.name for s in file_proto.service),
        *(x.name for x in file_proto.extension),
    ]
    return [_qualified(file_proto.package, name) for name in names]


def _differ(a: bytes, b: bytes) -> bool:
    return a != b and _without_source_info(a) != _without_source_info(b)


def _without_source_info(data: bytes) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto.FromString(data)
    proto.ClearField("source_code_info")
    return proto.SerializeToString(deterministic=True)


def _qualified(package: str, name: str) -> str:
    return f"{package}.{name}" if package else name


def _method(
    pool: descriptor_pool.DescriptorPool,
    service: str,
    proto: descriptor_pb2.MethodDescriptorProto,
    upstream: str,
    source: str,
) -> Method:
    descriptor = pool.FindMethodByName(f"{service}.{proto.name}")
    return Method(
        service=service,
        name=proto.name,
        input=message_factory.GetMessageClass(descriptor.input_type),
        output=message_factory.GetMessageClass(descriptor.output_type),
        client_streaming=proto.client_streaming,
        server_streaming=proto.server_streaming,
        upstream=upstream,
        source=source,
        safe=_safe(proto),
    )


_REPEATABLE: Final = frozenset(
    {
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
)


def _safe(proto: descriptor_pb2.MethodDescriptorProto) -> bool:
    if proto.options.idempotency_level in _REPEATABLE:
        return True
    return any(rule.WhichOneof("pattern") == "get" for rule in http_rules(proto))


def http_rules(proto: descriptor_pb2.MethodDescriptorProto) -> list[http_pb2.HttpRule]:
    """The method's google.api.http rule followed by its additional bindings."""
    if not proto.options.HasExtension(annotations_pb2.http):
        return []
    rule = proto.options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def rule_verb_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if pattern in _VERBS:
        return pattern.upper(), getattr(rule, pattern)
    raise ValueError("the rule sets no HTTP verb and path")


def _routes(
    method: Method,
    proto: descriptor_pb2.MethodDescriptorProto,
    pool: descriptor_pool.DescriptorPool,
    json: JsonShape,
    invoke: Invoke,
) -> list[Route]:
    routes = [_route(method, "POST", _default_path(method), "*", "", pool, json, invoke)]
    for rule in http_rules(proto):
        try:
            verb, path = rule_verb_path(rule)
        except ValueError as exc:
            raise SnapshotError(f"{method.full_name}: {exc}") from None
        routes.append(
            _route(method, verb, path, rule.body, rule.response_body, pool, json, invoke)
        )
    return routes


def _route(
    method: Method,
    verb: str,
    path: str,
    body: str,
    response_body: str,
    pool: descriptor_pool.DescriptorPool,
    json: JsonShape,
    invoke: Invoke,
) -> Route:
    try:
        template = parse_template(path)
        variables = tuple(v.field_path for v in template.variables)
        request = RequestPlan.build(method.input, pool, body, variables, json.discard_unknown, verb)
        response = ResponsePlan.build(
            method.output.DESCRIPTOR,
            pool,
            json.emit_unpopulated,
            json.use_proto_names,
            _response_field(method, response_body),
        )
    except (TemplateError, FieldError) as exc:
        raise SnapshotError(f"{method.full_name}: {verb} {path}: {exc}") from None
    return Route(verb, template, Binding(method, request, response, invoke, path), method.full_name)


def _response_field(method: Method, name: str):  # type: ignore[no-untyped-def]
    if not name:
        return None
    found = method.output.DESCRIPTOR.fields_by_name.get(name)
    if found is None:
        raise FieldError(
            f"response_body '{name}' names no field of {method.output.DESCRIPTOR.full_name}"
        )
    return found
