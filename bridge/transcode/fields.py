"""Field paths and the conversion of URL text (path and query values) into JSON values."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

FieldPath = tuple[FieldDescriptor, ...]

# A body that is not JSON: raw bytes and their content type (grpc-gateway and Envoy do the same).
HTTP_BODY: Final = "google.api.HttpBody"

# Well-known types whose JSON form is a string, so URL text passes through unchanged.
_STRING_WKT: Final = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_BOOLS: Final = {"true": True, "false": False, "1": True, "0": False}
# Standard or URL-safe alphabet, padding optional. json_format silently drops any other
# character ("Zm9v!YmFy" becomes b"foobar"), so the bridge checks bytes values itself.
_BASE64: Final = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
# Messages whose JSON is not walked for bytes: none inside, or typed only by "@type".
_OPAQUE: Final = frozenset(f"google.protobuf.{n}" for n in ("Struct", "Value", "ListValue", "Any"))
# The nesting protobuf runtimes decode by default (upb, C++ and Java stop at 100): a deeper
# request would fail in the backend's decoder as an UNKNOWN/INTERNAL error, not as a 400.
MAX_WIRE_DEPTH: Final = 100


class FieldError(ValueError):
    """A field name or value that does not fit the message; the text names the field."""


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_http_body(field: FieldDescriptor | None) -> bool:
    """Whether a field is one singular google.api.HttpBody."""
    return (
        field is not None
        and not field.is_repeated
        and field.message_type is not None
        and field.message_type.full_name == HTTP_BODY
    )


def find_field(message: Descriptor, name: str) -> FieldDescriptor | None:
    """The field called ``name`` by its proto name or its JSON name."""
    # Proto names are ASCII identifiers; upb fails (SystemError) on text it cannot encode.
    field = message.fields_by_name.get(name) if name.isascii() else None
    if field is None:
        field = _json_names(message).get(name)
    return field


@functools.lru_cache(maxsize=4096)  # bounded: every snapshot brings new descriptors
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
        assert current is not None  # the first name is looked up in ``message`` itself
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
    if field.type == FieldDescriptor.TYPE_BYTES:
        _check_base64(text, name)
    return text


def check_bytes(message: Descriptor, value: Any, name: str = "") -> None:
    """Raise FieldError for a bytes value in a JSON object that is not base64."""
    if not isinstance(value, dict):
        return  # json_format reports the wrong type
    for field in _base64_fields(message):
        key = field.json_name if field.json_name in value else field.name
        item = value.get(key)
        if item is None:
            continue
        where = f"{name}.{key}" if name else key
        if is_map(field):
            field = field.message_type.fields_by_name["value"]
            items = list(item.values()) if isinstance(item, dict) else []
        else:
            items = item if field.is_repeated and isinstance(item, list) else [item]
        for element in items:
            if field.message_type is None:
                _check_base64(element, where)
            elif field.message_type.full_name == "google.protobuf.BytesValue":
                _check_base64(element, where)
            else:
                check_bytes(field.message_type, element, where)


# Bounded caches: every snapshot brings new descriptors, and old ones must be freed.
@functools.lru_cache(maxsize=4096)
def _base64_fields(message: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields whose JSON may hold base64 text: bytes fields, or messages with bytes inside."""
    return tuple(
        f
        for f in message.fields
        if f.type == FieldDescriptor.TYPE_BYTES
        or (f.message_type is not None and _holds_bytes(f.message_type))
    )


@functools.lru_cache(maxsize=4096)
def _holds_bytes(message: Descriptor) -> bool:
    """Whether a bytes field is reachable from the message (recursive types included)."""
    seen: set[str] = set()
    todo = [message]
    while todo:
        current = todo.pop()
        if current.full_name in seen or current.full_name in _OPAQUE:
            continue
        seen.add(current.full_name)
        for f in current.fields:
            if f.type == FieldDescriptor.TYPE_BYTES:
                return True
            if f.message_type is not None:
                todo.append(f.message_type)
    return False


def _check_base64(value: Any, name: str) -> None:
    if isinstance(value, str) and not _is_base64(value):
        raise FieldError(f"field '{name}': {value[:40]!r} is not base64")


def _is_base64(text: str) -> bool:
    # One character left over after the groups of four cannot encode a byte.
    return _BASE64.fullmatch(text) is not None and len(text.rstrip("=")) % 4 != 1


def reaches(message: Descriptor, test: Any, seen: set[str] | None = None) -> bool:
    """Whether ``test(field)`` holds for a field reachable from ``message`` (types walked once)."""
    seen = set() if seen is None else seen
    if message.full_name in seen:
        return False
    seen.add(message.full_name)
    for field in message.fields:
        if test(field):
            return True
        if field.message_type is not None and reaches(field.message_type, test, seen):
            return True
    return False


def holds_bytes(field: FieldDescriptor) -> bool:
    nested = field.message_type
    return field.type == FieldDescriptor.TYPE_BYTES or (
        nested is not None and nested.full_name == "google.protobuf.BytesValue"
    )


def is_recursive(message: Descriptor) -> bool:
    """Whether messages of this type can nest without bound (a cycle, or a Struct inside)."""
    return _cycles(message, set(), set())


def _cycles(message: Descriptor, path: set[str], acyclic: set[str]) -> bool:
    name = message.full_name
    if name in _OPAQUE or name in path:
        return True
    if name in acyclic:
        return False
    path.add(name)
    found = any(
        f.message_type is not None and _cycles(f.message_type, path, acyclic)
        for f in message.fields
    )
    path.discard(name)
    if not found:
        acyclic.add(name)
    return found


def too_deep(message: Message, budget: int = MAX_WIRE_DEPTH) -> bool:
    """Whether submessages nest over ``budget`` levels deep, map entries counted as on the wire."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        cost = 1
        children: Any = value if field.is_repeated else (value,)
        if is_map(field):
            # Each entry is a message; a message value is one more level below it.
            message_values = field.message_type.fields_by_name["value"].message_type is not None
            cost, children = (2, value.values()) if message_values else (1, ())
        if budget < cost or any(too_deep(child, budget - cost) for child in children):
            return True
    return False


def _camel_path(path: str) -> str:
    """A FieldMask path in its JSON spelling; URLs may use the proto names (``display_name``)."""
    return ".".join(camel_case(part) for part in path.strip().split("."))


def is_wkt(message: Descriptor) -> bool:
    return message.full_name.startswith("google.protobuf.")


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)
