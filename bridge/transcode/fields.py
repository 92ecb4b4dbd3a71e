"""Field paths and the conversion of URL text (path and query values) into JSON values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

FieldPath = tuple[FieldDescriptor, ...]

# Well-known types whose JSON form is a string, so URL text passes through unchanged.
_STRING_WKT: Final = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}


class FieldError(ValueError):
    """A field name or value that does not fit the message; the text names the field."""


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def find_field(message: Descriptor, name: str) -> FieldDescriptor | None:
    """The field called ``name`` by its proto name or its JSON name."""
    field = message.fields_by_name.get(name)
    if field is None:
        field = _json_names(message).get(name)
    return field


def _json_names(message: Descriptor) -> dict[str, FieldDescriptor]:
    return {f.json_name: f for f in message.fields}


def resolve(message: Descriptor, dotted: str | Sequence[str]) -> FieldPath:
    """The chain of fields a dotted name such as ``user.address.city`` walks through."""
    names = dotted.split(".") if isinstance(dotted, str) else list(dotted)
    path: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for i, name in enumerate(names):
        if path and (current is None or is_map(path[-1]) or path[-1].is_repeated):
            raise FieldError(f"'{'.'.join(names[:i])}' has no subfields")
        field = find_field(current, name)
        if field is None:
            where = ".".join(names[:i]) or current.full_name
            raise FieldError(f"no field '{name}' in {where} ({current.full_name})")
        path.append(field)
        current = field.message_type
    return tuple(path)


def dotted_name(path: FieldPath) -> str:
    return ".".join(f.name for f in path)


def check_path_variable(path: FieldPath) -> None:
    """Path variables must end at a singular scalar-like field (as grpc-gateway requires)."""
    last = path[-1]
    if last.is_repeated:
        raise FieldError(f"path variable '{dotted_name(path)}' is a repeated field")
    if last.message_type is not None and not _is_text_message(last.message_type.full_name):
        raise FieldError(f"path variable '{dotted_name(path)}' is a message field")


def _is_text_message(full_name: str) -> bool:
    return full_name in _STRING_WKT or full_name in _WRAPPERS


def from_text(field: FieldDescriptor, text: str, name: str) -> Any:
    """The JSON value for URL text bound to ``field`` (json_format then checks its range)."""
    message = field.message_type
    if message is not None:
        if message.full_name == "google.protobuf.FieldMask":
            return ",".join(_camel_path(p) for p in text.split(",") if p)
        if message.full_name in _STRING_WKT:
            return text
        if message.full_name in _WRAPPERS:
            return from_text(message.fields_by_name["value"], text, name)
        raise FieldError(f"field '{name}' is a message; set its fields as '{name}.<field>'")
    if field.type == FieldDescriptor.TYPE_BOOL:
        try:
            return _BOOLS[text.lower()]
        except KeyError:
            raise FieldError(f"field '{name}': '{text}' is not a boolean (true or false)") from None
    if field.type == FieldDescriptor.TYPE_ENUM and text.lstrip("-").isdigit():
        return int(text)
    return text


def _camel_path(path: str) -> str:
    """A FieldMask path in its JSON spelling; URLs may use the proto names (``display_name``)."""
    return ".".join(camel_case(part) for part in path.strip().split("."))


def is_wkt(message: Descriptor) -> bool:
    return message.full_name.startswith("google.protobuf.")


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)
