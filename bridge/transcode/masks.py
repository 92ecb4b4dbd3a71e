"""google.protobuf.FieldMask paths in proto field names, resolved through the descriptors.

json_format reads a FieldMask's JSON string by turning lowerCamelCase into snake_case, which
loses names that are not lower_snake_case (``Num`` becomes ``_num``, ``en_GB`` ``en_g_b``), and
refuses to print paths with capitals. So the bridge reads the ``update_mask`` itself: each
segment a client writes may be the proto name or the JSON name of a field, and is looked up in
the message the mask is relative to; what reaches the backend is always the proto name. The
same goes for the mask inferred from a PATCH body, and for printing masks in replies.

Which message an ``update_mask`` is relative to (``mask_target``): the type of the rule's body
field when the body is a message field (AIP-134, as grpc-gateway infers it); otherwise the
request's one message field that is not a well-known type, when it has exactly one (an
``UpdateBookRequest {Book book; FieldMask update_mask}`` posted whole); else the request
message itself. Other FieldMask fields (``read_mask``...) are relative to a message the bridge
cannot know and keep the proto3 JSON mapping of json_format.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bridge.errors import BridgeError, invalid_argument
from bridge.transcode.fields import (
    MAX_WIRE_DEPTH,
    FieldError,
    camel_case,
    find_field,
    is_map,
    is_wkt,
)

FIELD_MASK: Final = "google.protobuf.FieldMask"
UPDATE_MASK: Final = "update_mask"
WHOLE: Final = "*"  # AIP-134: replace the whole resource
# Below these the segments of a path are keys the client chose, not field names.
_FREE_FORM: Final = frozenset(f"google.protobuf.{n}" for n in ("Struct", "Value", "ListValue"))


@dataclass(frozen=True, eq=False)
class MaskField:
    """A top-level FieldMask field the bridge resolves, and the message its paths name fields of."""

    field: FieldDescriptor
    target: Descriptor

    @property
    def keys(self) -> tuple[str, str]:
        return self.field.name, self.field.json_name

    def resolve(self, value: Any) -> list[str] | None:
        """Proto-name paths for the mask's JSON value (comma-separated paths); a 400 if wrong."""
        if value is None:
            return None  # null: not set, as for any message field
        if not isinstance(value, str):
            raise invalid_argument(
                f"field '{self.field.name}' must be a string of comma-separated field paths"
            )
        try:
            return [resolve_path(self.target, p.strip()) for p in value.split(",") if p.strip()]
        except FieldError as exc:
            raise invalid_argument(f"field '{self.field.name}': {exc}") from None

    def set(self, message: Message, paths: list[str]) -> None:
        mask = getattr(message, self.field.name)
        mask.SetInParent()  # an empty mask is still a mask: "every field" (AIP-134)
        mask.paths.extend(paths)


def mask_fields(request: Descriptor, body: str | None) -> tuple[MaskField, ...]:
    """The FieldMask fields of a request that the bridge resolves (its ``update_mask``)."""
    field = request.fields_by_name.get(UPDATE_MASK)
    if field is None or field.is_repeated or not _is_mask(field):
        return ()
    return (MaskField(field, mask_target(request, body)),)


def mask_target(request: Descriptor, body: str | None) -> Descriptor:
    """The message an update_mask names fields of (the rule is in the module docstring)."""
    if body and body != "*":
        field = request.fields_by_name[body]
        if field.message_type is not None and not field.is_repeated:
            return field.message_type
    resources = [
        f.message_type
        for f in request.fields
        if f.message_type is not None and not f.is_repeated and not is_wkt(f.message_type)
    ]
    return resources[0] if len(resources) == 1 else request


def _is_mask(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == FIELD_MASK


def resolve_path(target: Descriptor, path: str) -> str:
    """One path with every field segment in its proto name; FieldError naming what is unknown.

    A segment after a map field is the map key, taken literally, and the path goes on into the
    map's value type; segments below a Struct or Value are its keys, all taken literally. A
    repeated field must be the last segment (field_mask.proto).
    """
    if path == WHOLE:
        return path
    names: list[str] = []
    segments = iter(path.split("."))
    current: Descriptor | None = target
    for segment in segments:
        if current is None:
            raise FieldError(f"path '{path}': '{'.'.join(names)}' has no subfields")
        field = find_field(current, segment)
        if field is None:
            raise FieldError(f"path '{path}': no field '{segment}' in {current.full_name}")
        names.append(field.name)
        current = _below(field, segments, names)
    return ".".join(names)


def _below(field: FieldDescriptor, segments: Iterator[str], names: list[str]) -> Descriptor | None:
    """The message the next segment names a field of (None: no more fields below this one)."""
    nested = field.message_type
    if nested is not None and nested.full_name in _FREE_FORM:
        names.extend(segments)  # Struct keys: the client's own names
        return None
    if is_map(field):
        key = next(segments, None)
        if key is None:
            return None
        names.append(key)  # the map key, as the client wrote it
        values = field.message_type.fields_by_name["value"].message_type
        if values is not None and values.full_name in _FREE_FORM:
            names.extend(segments)
            return None
        return values
    if field.is_repeated:
        return None
    return nested


def infer_paths(
    message: Descriptor, value: dict[str, Any], prefix: str = "", depth: int = 1
) -> list[str]:
    """The mask of the fields a PATCH body sets, in proto names, as grpc-gateway infers it.

    Nested messages give a path per field set inside them, and so do Struct and Value fields
    (their keys taken literally: ``struct_field.key.nested_key``). An empty object is one path
    (``{"address": {}}`` masks ``address``); so are repeated and map fields, any other well-known
    type, and every non-object value. Deeper than protobuf's limit is a 400 here, before the
    recursion could reach Python's.
    """
    if depth > MAX_WIRE_DEPTH:
        raise nested_too_deeply()
    paths = []
    for key, item in value.items():
        field = find_field(message, key)
        if field is None:
            continue  # json_format reports the unknown field
        path = prefix + field.name
        nested = field.message_type
        if not (item and isinstance(item, dict) and nested is not None and not field.is_repeated):
            paths.append(path)
        elif nested.full_name in _FREE_FORM:
            paths.extend(_key_paths(item, path + ".", depth + 1))
        elif is_wkt(nested):
            paths.append(path)
        else:
            paths.extend(infer_paths(nested, item, path + ".", depth + 1))
    return paths


def _key_paths(value: dict[str, Any], prefix: str, depth: int) -> list[str]:
    """The paths of a Struct's JSON object: its keys, into nested objects."""
    if depth > MAX_WIRE_DEPTH:
        raise nested_too_deeply()
    paths = []
    for key, item in value.items():
        if item and isinstance(item, dict):
            paths.extend(_key_paths(item, f"{prefix}{key}.", depth + 1))
        else:
            paths.append(prefix + key)
    return paths


def nested_too_deeply() -> BridgeError:
    return invalid_argument(f"request message is nested too deeply (over {MAX_WIRE_DEPTH} levels)")


def mask_json(paths: list[str]) -> str:
    """A FieldMask's JSON string: each segment in lowerCamelCase as protojson writes it, or as
    it is when that would not read back as the same name (``Num``, ``en_GB``, a map key)."""
    return ",".join(".".join(_json_segment(s) for s in path.split(".")) for path in paths)


def _json_segment(name: str) -> str:
    camel = camel_case(name)
    return camel if _snake_case(camel) == name else name


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
