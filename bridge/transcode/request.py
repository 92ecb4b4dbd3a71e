"""HTTP request parts (path variables, body, query) -> one gRPC request message.

A ``RequestPlan`` is prepared once per route: field paths are resolved and the body rule is
checked when the route table is built, so a request only walks dictionaries and hands one JSON
object to ``json_format.ParseDict``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from multidict import MultiMapping

from bridge.errors import BridgeError, invalid_argument
from bridge.transcode import json_text
from bridge.transcode.fields import (
    MAX_WIRE_DEPTH,
    FieldError,
    FieldPath,
    camel_case,
    check_bytes,
    check_path_variable,
    dotted_name,
    find_field,
    from_text,
    holds_bytes,
    is_map,
    is_recursive,
    is_wkt,
    reaches,
    resolve,
    too_deep,
)

_QUERY_CACHE_MAX: Final = 256


class _SurrogateCheck:
    """json_format's unpaired-surrogate test, answered without its regex when it cannot match.

    The regex costs about 55 ns a character (1 ms for a 16 KiB string) on every string field.
    ASCII text, and any text that encodes as UTF-8, holds no surrogate at all, so only text
    that fails to encode still goes through the regex, which then decides as before.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def search(self, value: str) -> re.Match[str] | None:
        if not isinstance(value, str):
            return self.pattern.search(value)  # the TypeError json_format reports as before
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return self.pattern.search(value)
        return None


_PATTERN = getattr(json_format, "_UNPAIRED_SURROGATE_PATTERN", None)
if isinstance(_PATTERN, re.Pattern):
    json_format._UNPAIRED_SURROGATE_PATTERN = _SurrogateCheck(_PATTERN)  # type: ignore[attr-defined]


@dataclass(frozen=True, eq=False)
class RequestPlan:
    """How one route fills its request message; built once, used by every request."""

    message_class: type[Message]
    pool: DescriptorPool
    body: str | None  # None, "*" (the whole message) or a top-level field name
    variables: tuple[tuple[tuple[str, ...], FieldPath], ...]
    discard_unknown: bool = False
    bound: frozenset[tuple[str, ...]] = frozenset()  # field paths the path or body already set
    infer_mask: bool = False  # PATCH with a body field: derive update_mask from the body's keys
    check_bytes: bool = True  # some bytes field is reachable: check base64 ourselves
    check_depth: bool = True  # the type can nest without bound: check the wire depth
    _query_fields: dict[str, FieldPath] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        message_class: type[Message],
        pool: DescriptorPool,
        body: str | None,
        variables: tuple[tuple[str, ...], ...],
        discard_unknown: bool = False,
        verb: str = "POST",
    ) -> RequestPlan:
        """Resolve the rule's body and path variables against the message; FieldError if wrong."""
        descriptor: Descriptor = message_class.DESCRIPTOR
        if body and body != "*":
            body_field = descriptor.fields_by_name.get(body)
            if body_field is None:
                raise FieldError(f"body '{body}' names no field of {descriptor.full_name}")
        resolved = []
        for names in variables:
            path = resolve(descriptor, names)
            check_path_variable(path)
            resolved.append((names, path))
        bound = {tuple(f.name for f in path) for _, path in resolved}
        if body and body != "*":
            bound.add((body,))
        mask = descriptor.fields_by_name.get("update_mask")
        infer_mask = (
            verb == "PATCH"
            and body not in ("", "*")
            and mask is not None
            and mask.message_type is not None
            and mask.message_type.full_name == "google.protobuf.FieldMask"
        )
        return cls(
            message_class,
            pool,
            body or None,
            tuple(resolved),
            discard_unknown,
            frozenset(bound),
            infer_mask,
            reaches(descriptor, holds_bytes),
            is_recursive(descriptor),
        )

    @property
    def descriptor(self) -> Descriptor:
        return self.message_class.DESCRIPTOR

    def to_message(
        self,
        params: Mapping[tuple[str, ...], str],
        body: bytes,
        query: MultiMapping[str],
    ) -> Message:
        """Bind path variables, then the body, then query parameters; a 400 names the field."""
        data = self.parse_body(body)
        # Inferred from the body alone: a path variable such as {user.name} lands inside the
        # body field too, but the client did not ask to change it (grpc-gateway does the same).
        inferred = self._inferred_mask(data) if self.infer_mask else None
        for names, path in self.variables:
            value = params.get(names)
            if value is not None:
                _put(data, path, _convert(path, value))
        if query:
            self._bind_query(data, query)
        if inferred is not None and "update_mask" not in data and "updateMask" not in data:
            data["updateMask"] = inferred
        return self.from_json(data)

    def _inferred_mask(self, data: dict[str, Any]) -> str | None:
        """The update_mask of the fields the PATCH body names, as grpc-gateway infers it."""
        assert self.body is not None
        value = data.get(self.body)
        body_field = self.descriptor.fields_by_name[self.body]
        if isinstance(value, dict) and body_field.message_type is not None:
            return ",".join(mask_paths(body_field.message_type, value))
        return None

    def parse_body(self, body: bytes) -> dict[str, Any]:
        """The JSON object the body contributes (empty when the rule takes no body)."""
        if self.body is None or not body.strip():
            return {}
        value = decode_json(body)
        if self.body == "*":
            self._require_object(value, "request body")
            return value
        return {self.body: value}

    def from_json(self, data: Any, what: str = "request message") -> Message:
        """Parse a JSON object into the request message (the one JSON mapping: json_format)."""
        self._require_object(data, what)
        message = self.message_class()
        try:
            json_format.ParseDict(
                data, message, ignore_unknown_fields=self.discard_unknown, descriptor_pool=self.pool
            )
        except json_format.ParseError as exc:
            raise invalid_argument(str(exc)) from None
        except RecursionError:
            raise invalid_argument("request JSON is nested too deeply") from None
        if self.check_bytes:
            try:
                check_bytes(self.descriptor, data)
            except FieldError as exc:
                raise invalid_argument(str(exc)) from None
        if self.check_depth and too_deep(message):
            raise _nested_too_deeply()
        return message

    def _require_object(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise invalid_argument(f"{what} must be a JSON object for {self.descriptor.full_name}")

    def _bind_query(self, data: dict[str, Any], query: MultiMapping[str]) -> None:
        bound = self.bound
        for name in set(query.keys()):
            path = self._query_field(name)
            names = tuple(f.name for f in path)
            if self.body == "*" or any(names[:i] in bound for i in range(1, len(names) + 1)):
                continue  # bound by the path or the body already: those win
            values = query.getall(name)
            last = path[-1]
            if last.is_repeated:
                _put(data, path, [_convert(path, v) for v in values])
            elif len(values) > 1:
                raise invalid_argument(
                    f"query parameter '{name}' given {len(values)} times but "
                    f"field '{dotted_name(path)}' is not repeated"
                )
            else:
                _put(data, path, _convert(path, values[0]))

    def _query_field(self, name: str) -> FieldPath:
        path = self._query_fields.get(name)
        if path is not None:
            return path
        try:
            path = resolve(self.descriptor, name)
        except FieldError as exc:
            raise invalid_argument(f"unknown query parameter '{name}': {exc}") from None
        if is_map(path[-1]):
            raise invalid_argument(f"query parameter '{name}' names a map field")
        if len(self._query_fields) < _QUERY_CACHE_MAX:
            self._query_fields[name] = path
        return path


def _nested_too_deeply() -> BridgeError:
    return invalid_argument(f"request message is nested too deeply (over {MAX_WIRE_DEPTH} levels)")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body (json_text.loads: UTF-8, RFC 8259, no repeated names); else a 400."""
    try:
        return json_text.loads(body)
    except json_text.JsonError as exc:
        if exc.too_deep:
            raise invalid_argument("request JSON is nested too deeply") from None
        raise invalid_argument(f"request body is not valid JSON: {exc}") from None


def mask_paths(
    message: Descriptor, value: dict[str, Any], prefix: str = "", depth: int = 1
) -> list[str]:
    """FieldMask paths (JSON spelling) of the fields set in a JSON object, nested messages too.

    Deeper than protobuf's limit is a 400 here, before the recursion could reach Python's.
    """
    if depth > MAX_WIRE_DEPTH:
        raise _nested_too_deeply()
    paths = []
    for key, item in value.items():
        f = find_field(message, key)
        if f is None:
            continue  # json_format reports the unknown field
        path = prefix + camel_case(f.name)
        nested = f.message_type
        # An empty object is a leaf, as in grpc-gateway: `{"address": {}}` masks `address`.
        if (
            item
            and isinstance(item, dict)
            and nested is not None
            and not is_map(f)
            and not is_wkt(nested)
        ):
            paths.extend(mask_paths(nested, item, path + ".", depth + 1))
        else:
            paths.append(path)
    return paths


def _convert(path: FieldPath, text: str) -> Any:
    try:
        return from_text(path[-1], text, dotted_name(path))
    except FieldError as exc:
        raise invalid_argument(str(exc)) from None


def _put(data: dict[str, Any], path: FieldPath, value: Any) -> None:
    """Set ``value`` at ``path``, reusing whichever spelling (proto or JSON name) is present."""
    node = data
    for f in path[:-1]:
        key = _key(node, f)
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[_key(node, path[-1])] = value


def _key(node: dict[str, Any], f: FieldDescriptor) -> str:
    return f.name if f.name in node else f.json_name
