"""gRPC response messages and statuses -> JSON, NDJSON lines and Server-Sent Events."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (registers the detail types)

from bridge.errors import BridgeError
from bridge.transcode.fields import HTTP_BODY, is_http_body, is_map, is_wkt
from bridge.transcode.masks import FIELD_MASK, mask_json

STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
OCTET_STREAM: Final = "application/octet-stream"  # an HttpBody without a content type


@dataclass(frozen=True, eq=False)
class ResponsePlan:
    """How one route renders its response message as JSON; built once per route."""

    pool: DescriptorPool
    emit_unpopulated: bool = True
    use_proto_names: bool = False
    field: FieldDescriptor | None = None  # the rule's response_body field, if any
    nulls: Nulls | None = None  # where unset message fields are written as null
    raw: bool = False  # the reply (or its response_body) is a google.api.HttpBody: sent raw

    @classmethod
    def build(
        cls,
        output: Descriptor,
        pool: DescriptorPool,
        emit_unpopulated: bool,
        use_proto_names: bool,
        field: FieldDescriptor | None,
    ) -> ResponsePlan:
        rendered = output  # the message type _message_dict renders at the top
        if field is not None and field.message_type is not None and not field.is_repeated:
            rendered = field.message_type
        nulls = Nulls.of(rendered, use_proto_names) if emit_unpopulated else None
        raw = is_http_body(field) if field is not None else output.full_name == HTTP_BODY
        return cls(pool, emit_unpopulated, use_proto_names, field, nulls, raw)

    def raw_body(self, message: Message) -> tuple[bytes, str]:
        """The bytes and content type of an HttpBody reply (``raw`` plans only).

        A content type that could not be sent as a header (not printable ASCII) is sent as
        application/octet-stream, like a missing one.
        """
        body: Any = getattr(message, self.field.name) if self.field is not None else message
        content_type = body.content_type
        if not (content_type and content_type.isascii() and content_type.isprintable()):
            content_type = OCTET_STREAM
        return body.data, content_type

    def to_dict(self, message: Message) -> Any:
        """The proto3 JSON value of the message (or of its response_body field)."""
        if self.field is not None:
            return self._field_value(message, self.field)
        return self._message_dict(message)

    def to_json(self, message: Message) -> bytes:
        return dumps(self.to_dict(message))

    def _message_dict(self, message: Message, emit: bool | None = None) -> Any:
        try:
            value = self._json_format(message, emit)
        except (ValueError, json_format.Error):  # it refuses FieldMask paths such as "Num"
            value = self._with_masks(message, emit)
        if self.nulls is not None:
            self.nulls.fill(message, value)
        return value

    def _json_format(self, message: Message, emit: bool | None) -> Any:
        return json_format.MessageToDict(
            message,
            always_print_fields_with_no_presence=self.emit_unpopulated if emit is None else emit,
            preserving_proto_field_name=self.use_proto_names,
            descriptor_pool=self.pool,
        )

    def _with_masks(self, message: Message, emit: bool | None) -> Any:
        """json_format's rendering with the FieldMasks written by masks.mask_json instead.

        Only replies whose masks json_format cannot print come here, so the usual path pays
        nothing: the masks are emptied in a copy, the copy rendered, the masks' text put back.
        """
        copy = type(message)()
        copy.CopyFrom(message)
        found = list(_field_masks(copy, (), self.use_proto_names))
        if not found:
            raise  # not about a FieldMask: the error being handled is a bug
        texts = [(where, mask_json(list(mask.paths))) for where, mask in found]
        for _, mask in found:
            del mask.paths[:]
        value = self._json_format(copy, emit)
        for where, text in texts:
            value = _put_at(value, where, text)
        return value

    def _field_value(self, message: Message, field: FieldDescriptor) -> Any:
        if field.message_type is not None and not field.is_repeated:
            return self._message_dict(getattr(message, field.name))
        data = self._message_dict(message, emit=True)
        return data[field.name if self.use_proto_names else field.json_name]


Where = tuple[str | int, ...]  # keys and list indexes from a rendered message to a value


def _field_masks(message: Message, where: Where, proto_names: bool) -> Iterator[tuple[Where, Any]]:
    """Every FieldMask in a message (itself, or held at any depth), with where it renders."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == FIELD_MASK:
        yield where, message
        return
    if is_wkt(descriptor):
        return  # no FieldMask inside Struct, Timestamp...; an Any's content is left to json_format
    for field, value in message.ListFields():
        if field.message_type is None or field.is_extension:
            continue
        at = (*where, field.name if proto_names else field.json_name)
        if is_map(field):
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    yield from _field_masks(item, (*at, _map_key(key)), proto_names)
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _field_masks(item, (*at, i), proto_names)
        else:
            yield from _field_masks(value, at, proto_names)


def _put_at(value: Any, where: Where, item: Any) -> Any:
    """``value`` with ``item`` at ``where`` (the item itself when ``where`` is empty)."""
    if not where:
        return item
    node = value
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = item
    return value


_SINGULAR, _REPEATED, _MAP = range(3)


class Nulls:
    """Where grpc-gateway's marshaler (protojson, EmitUnpopulated) writes ``null`` in a message.

    That is every unset singular message field outside a oneof, in the message and in every
    message it holds; json_format leaves those out. Built once per route and message type,
    recursive types included; rendering then only visits the fields that can hold a null.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        # (field name, JSON key, _SINGULAR/_REPEATED/_MAP, plan of the field's type or None,
        #  null when unset)
        self.entries: list[tuple[str, str, int, Nulls | None, bool]] = []

    @classmethod
    def of(cls, message: Descriptor, use_proto_names: bool) -> Nulls | None:
        """The plan for a message type; None when no null can appear in it."""
        return _NullsBuilder(use_proto_names).useful(message)

    def fill(self, message: Message, value: dict[str, Any]) -> None:
        """Add the nulls to ``value``, json_format's rendering of ``message``."""
        for name, key, kind, plan, nullable in self.entries:
            if kind == _SINGULAR:
                if message.HasField(name):
                    if plan is not None:
                        plan.fill(getattr(message, name), value[key])
                elif nullable:
                    value[key] = None
            elif kind == _REPEATED:
                for item, rendered in zip(getattr(message, name), value.get(key, ()), strict=False):
                    plan.fill(item, rendered)  # type: ignore[union-attr]
            else:
                rendered_map = value.get(key, {})
                for k, item in getattr(message, name).items():
                    plan.fill(item, rendered_map[_map_key(k)])  # type: ignore[union-attr]


class _NullsBuilder:
    """Builds the Nulls plans of one message type and the types it holds, cycles included."""

    def __init__(self, use_proto_names: bool) -> None:
        self.use_proto_names = use_proto_names
        self.plans: dict[str, Nulls] = {}
        self.building: set[str] = set()  # types whose plan is not complete yet

    def useful(self, message: Descriptor | None) -> Nulls | None:
        """The plan of a field's type when descending into it can add a null, else None."""
        if message is None or is_wkt(message):
            return None  # well-known types have their own JSON forms, not objects of fields
        if message.full_name in self.building:
            return self.plans[message.full_name]  # a cycle: assume it can
        plan = self.plans.get(message.full_name) or self.build(message)
        return plan if plan.entries else None

    def build(self, message: Descriptor) -> Nulls:
        plan = self.plans[message.full_name] = Nulls()
        self.building.add(message.full_name)
        for f in message.fields:
            if f.message_type is None:
                continue
            key = f.name if self.use_proto_names else f.json_name
            if is_map(f):
                kind, child = _MAP, self.useful(f.message_type.fields_by_name["value"].message_type)
            else:
                kind = _REPEATED if f.is_repeated else _SINGULAR
                child = self.useful(f.message_type)
            nullable = kind == _SINGULAR and f.containing_oneof is None  # `optional` too
            if nullable or child is not None:
                plan.entries.append((f.name, key, kind, child, nullable))
        self.building.discard(message.full_name)
        return plan


def _map_key(key: Any) -> str:
    """A map key as json_format writes it."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of what json_format made (str keys, no NaN: it writes "NaN")."""
    return orjson.dumps(value)


def ndjson_line(key: str, value: Any) -> bytes:
    """One NDJSON line: ``{"result": ...}`` or ``{"error": ...}``."""
    return dumps({key: value}) + b"\n"


def sse_event(value: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying a JSON value."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(value) + b"\n\n"


def status_details(raw: bytes | None, pool: DescriptorPool | None) -> list[dict[str, Any]]:
    """The details of a ``grpc-status-details-bin`` trailer, each as Any JSON with ``@type``."""
    if not raw:
        return []
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return []
    return [any_to_json(detail, pool) for detail in status.details]


def any_to_json(detail: any_pb2.Any, pool: DescriptorPool | None) -> dict[str, Any]:
    """An Any as JSON, resolved in the snapshot's pool, then the bundled types; else opaque."""
    for candidate in (pool, None):
        try:
            return json_format.MessageToDict(detail, descriptor_pool=candidate)
        except (TypeError, KeyError, json_format.Error):
            continue
    return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def error_from_status(
    code: int,
    message: str,
    trailers: Sequence[tuple[str, str | bytes]] | None,
    pool: DescriptorPool | None,
) -> BridgeError:
    """A BridgeError for a backend status, with its google.rpc.Status details decoded."""
    raw = None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            raw = value
    return BridgeError(code, message, status_details(raw, pool))
