"""JSON Schemas of messages, fields and enums, as the proto3 JSON mapping the bridge speaks.

int64 as a string, enums by name, well-known types in their JSON forms; each message or enum
referenced becomes a component, described by its ``.proto`` comment.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from bridge.transcode.fields import is_map

Schema = dict[str, Any]
_REF: Final = "#/components/schemas/"

_T = FieldDescriptor
_INT64: Final = {"type": "string", "format": "int64"}  # proto3 JSON writes 64-bit ints as strings
_UINT64: Final = {"type": "string", "format": "uint64"}
_INT32: Final = {"type": "integer", "format": "int32"}
_UINT32: Final = {"type": "integer", "format": "uint32", "minimum": 0}
_SCALARS: Final[dict[int, Schema]] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_INT64: _INT64, _T.TYPE_SINT64: _INT64, _T.TYPE_SFIXED64: _INT64,
    _T.TYPE_UINT64: _UINT64, _T.TYPE_FIXED64: _UINT64,
    _T.TYPE_INT32: _INT32, _T.TYPE_SINT32: _INT32, _T.TYPE_SFIXED32: _INT32,
    _T.TYPE_UINT32: _UINT32, _T.TYPE_FIXED32: _UINT32,
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}  # fmt: skip
# Raw bytes, a google.api.HttpBody sent as the body itself (OpenAPI's file-upload schema).
BINARY: Final[Schema] = {"type": "string", "format": "binary"}
_WELL_KNOWN: Final[dict[str, Schema]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}},
                            "required": ["@type"], "additionalProperties": True},
}  # fmt: skip
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Message types whose JSON form is a scalar, so URL text (path or query) can set them.
URL_TEXT: Final = _WRAPPERS | {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}


class Schemas:
    """Schemas of fields and messages; each message or enum referenced becomes a component."""

    def __init__(self, use_proto_names: bool, comments: dict[str, str]) -> None:
        self.use_proto_names = use_proto_names
        self.comments = comments
        self.pending: dict[str, Descriptor | EnumDescriptor] = {}
        self.done: dict[str, Schema] = {}

    def key(self, f: FieldDescriptor) -> str:
        """The field's name in JSON: lowerCamel ``json_name`` unless proto names are asked for."""
        return f.name if self.use_proto_names else f.json_name

    def ref(self, descriptor: Descriptor | EnumDescriptor) -> Schema:
        if descriptor.full_name not in self.done:
            self.pending[descriptor.full_name] = descriptor
        return {"$ref": _REF + descriptor.full_name}

    def message(self, descriptor: Descriptor) -> Schema:
        """A well-known type inline in its JSON form, any other message by reference."""
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return copy.deepcopy(_WELL_KNOWN[name])
        if name in _WRAPPERS:  # the wrapped scalar, or null
            inner = _wrapped(descriptor)
            return {**inner, "type": [inner["type"], "null"]}
        return self.ref(descriptor)

    def single(self, f: FieldDescriptor) -> Schema:
        """The schema of one value of the field (one element when it is repeated)."""
        if f.message_type is not None:
            return self.message(f.message_type)
        if f.enum_type is not None:
            if f.enum_type.full_name == "google.protobuf.NullValue":
                return {"type": "null"}
            return self.ref(f.enum_type)
        return dict(_SCALARS[f.type])

    def field(self, f: FieldDescriptor) -> Schema:
        """The schema of a field's JSON value: maps as objects, repeated fields as arrays."""
        if is_map(f):
            value = f.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        single = self.single(f)
        return {"type": "array", "items": single} if f.is_repeated else single

    def url_value(self, f: FieldDescriptor) -> Schema:
        """The schema of a field as URL text sets it: a wrapper is its scalar, never null."""
        message = f.message_type
        wrapper = message is not None and message.full_name in _WRAPPERS
        single = _wrapped(message) if wrapper else self.single(f)
        return {"type": "array", "items": single} if f.is_repeated else single

    def without(self, message: Descriptor, cut: set[tuple[str, ...]]) -> Schema:
        """The message's schema less the fields the path sets (their field-name paths)."""
        if not cut:
            return self.message(message)
        properties: dict[str, Schema] = {}
        for f in message.fields:
            below = {p[1:] for p in cut if p[0] == f.name and len(p) > 1}
            if (f.name,) not in cut:
                schema = self.without(f.message_type, below) if below else self.described(f)
                properties[self.key(f)] = schema
        dropped = ", ".join(sorted(".".join(p) for p in cut))
        about = f"`{message.full_name}` without what the path sets ({dropped})."
        return {"type": "object", "description": about, "properties": properties}

    def described(self, f: FieldDescriptor) -> Schema:
        """The field's schema, naming its oneof (not protoc's ``_name`` one for ``optional``).

        A singular message field may be null: replies write an unset one as null
        (``json.emit_unpopulated``), and requests may send null for "not set".
        """
        schema = self.field(f)
        if f.message_type is not None and not f.is_repeated:
            schema = _nullable(schema)
        notes = [self.comments.get(f.full_name, "")]
        group = f.containing_oneof
        if group is not None and not (len(group.fields) == 1 and group.name == f"_{f.name}"):
            names = ", ".join(f"`{self.key(m)}`" for m in group.fields)
            notes.append(f"Part of oneof `{group.name}`: at most one of {names}.")
        if any(notes):
            schema = _described(schema, "\n\n".join(n for n in notes if n))
        if f.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def components(self) -> dict[str, Schema]:
        """Every referenced message and enum, built until no new reference appears, sorted."""
        while self.pending:
            name, descriptor = self.pending.popitem()
            self.done[name] = {}  # a recursive message refers to itself while being built
            schema: Schema
            if isinstance(descriptor, EnumDescriptor):
                schema = {"type": "string", "enum": [v.name for v in descriptor.values]}
                said = ((v.name, self.comments.get(f"{name}.{v.name}")) for v in descriptor.values)
                notes = [f"- `{value}`: {comment}" for value, comment in said if comment]
            else:
                properties = {self.key(f): self.described(f) for f in descriptor.fields}
                schema = {"type": "object", "properties": properties}
                notes = []
            about = "\n\n".join(filter(None, [self.comments.get(name), "\n".join(notes)]))
            self.done[name] = {"description": about, **schema} if about else schema
        return dict(sorted(self.done.items()))


def _described(schema: Schema, about: str) -> Schema:
    """The schema with a description; a ``$ref`` is wrapped, its siblings being the field's."""
    if "$ref" in schema:
        return {"allOf": [schema], "description": about}
    return {**schema, "description": about}


def _nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    if kind is None or kind == "null" or (isinstance(kind, list) and "null" in kind):
        return schema  # any JSON value, or already nullable
    return {**schema, "type": [*kind, "null"] if isinstance(kind, list) else [kind, "null"]}


def _wrapped(wrapper: Descriptor) -> Schema:
    """The schema of the scalar a ``google.protobuf.*Value`` wrapper holds."""
    return dict(_SCALARS[wrapper.fields_by_name["value"].type])
