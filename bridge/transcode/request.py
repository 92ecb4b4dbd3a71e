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

from bridge.errors import invalid_argument
from bridge.transcode import json_text, partial
from bridge.transcode.fields import (
    HTTP_BODY,
    FieldError,
    FieldPath,
    check_bytes,
    check_path_variable,
    dotted_name,
    find_field,
    from_text,
    holds_bytes,
    is_http_body,
    is_map,
    is_recursive,
    reaches,
    resolve,
    too_deep,
)
from bridge.transcode.masks import MaskField, mask_fields, nested_too_deeply
from bridge.transcode.masks import infer_paths as mask_paths

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
    masks: tuple[MaskField, ...] = ()  # FieldMask fields read by the bridge, not json_format
    # The body is a google.api.HttpBody, set from the raw bytes: the field names leading to it
    # (() for the whole message); None for a JSON body.
    raw_body: tuple[str, ...] | None = None
    check_bytes: bool = True  # some bytes field is reachable: check base64 ourselves
    check_depth: bool = True  # the type can nest without bound: check the wire depth
    # The query keys of the `fields` system parameter (partial.py), never bound to the message:
    # only "$fields" when the message has a field called `fields`, which `fields=` then sets.
    selection_keys: tuple[str, ...] = partial.KEYS
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
        raw_body: tuple[str, ...] | None = None
        if body == "*" and descriptor.full_name == HTTP_BODY:
            raw_body = ()
        elif body and is_http_body(descriptor.fields_by_name.get(body)):
            raw_body = (body,)
        masks = mask_fields(descriptor, body or None)
        infer_mask = verb == "PATCH" and body not in ("", "*") and bool(masks) and raw_body is None
        return cls(
            message_class,
            pool,
            body or None,
            tuple(resolved),
            discard_unknown,
            frozenset(bound),
            infer_mask,
            masks,
            raw_body,
            reaches(descriptor, holds_bytes),
            is_recursive(descriptor),
            partial.KEYS[1:] if find_field(descriptor, "fields") else partial.KEYS,
        )

    @property
    def descriptor(self) -> Descriptor:
        return self.message_class.DESCRIPTOR

    def to_message(
        self,
        params: Mapping[tuple[str, ...], str],
        body: bytes,
        query: MultiMapping[str],
        content_type: str = "",
    ) -> Message:
        """Bind path variables, then the body, then query parameters; a 400 names the field.

        ``content_type`` (the request's header) is used only by a raw HttpBody body.
        """
        if self.raw_body is not None:
            message = self._bind_others(params, {}, query, None)
            self._set_raw_body(message, body, content_type)
            return message
        data = self.parse_body(body)
        # Inferred from the body alone: a path variable such as {user.name} lands inside the
        # body field too, but the client did not ask to change it (grpc-gateway does the same).
        inferred = self._inferred_mask(data) if self.infer_mask else None
        return self._bind_others(params, data, query, inferred)

    def _bind_others(
        self,
        params: Mapping[tuple[str, ...], str],
        data: dict[str, Any],
        query: MultiMapping[str],
        inferred: list[str] | None,
    ) -> Message:
        """Add path variables and then query parameters to the body's JSON; the message."""
        for names, path in self.variables:
            value = params.get(names)
            if value is not None:
                _put(data, path, self._convert(path, value))
        if query:
            self._bind_query(data, query)
        return self.from_json(data, inferred=inferred)

    def _set_raw_body(self, message: Message, body: bytes, content_type: str) -> None:
        """Put the raw HTTP body and its Content-Type into the request's HttpBody."""
        if not (content_type.isascii() and content_type.isprintable()):
            raise invalid_argument("the Content-Type header must be printable ASCII")
        target = message
        for name in self.raw_body or ():
            target = getattr(target, name)
            target.SetInParent()
        target.content_type = content_type  # type: ignore[attr-defined]
        target.data = body  # type: ignore[attr-defined]

    def _inferred_mask(self, data: dict[str, Any]) -> list[str] | None:
        """The update_mask of the fields the PATCH body names, as grpc-gateway infers it."""
        value = data.get(self.body)  # type: ignore[arg-type]
        if isinstance(value, dict):
            return mask_paths(self.masks[0].target, value)
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

    def from_json(
        self, data: Any, what: str = "request message", inferred: list[str] | None = None
    ) -> Message:
        """Parse a JSON object into the request message (the one JSON mapping: json_format).

        The update_mask is taken out first and set afterwards in proto names (masks.py), from
        the JSON or else from ``inferred``, the paths a PATCH body set.
        """
        self._require_object(data, what)
        masks = self._take_masks(data) if self.masks else ()
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
            raise nested_too_deeply()
        for mask, paths in masks:
            mask.set(message, paths)
        if inferred is not None and not masks:
            self.masks[0].set(message, inferred)
        return message

    def _take_masks(self, data: dict[str, Any]) -> list[tuple[MaskField, list[str]]]:
        """The masks given in ``data`` (removed from it), each resolved to proto names."""
        taken = []
        for mask in self.masks:
            present = [key for key in mask.keys if key in data]
            if len(present) > 1:
                raise invalid_argument(
                    f"field '{mask.field.name}' given twice ({' and '.join(present)})"
                )
            paths = mask.resolve(data.pop(present[0])) if present else None
            if paths is not None:
                taken.append((mask, paths))
        return taken

    def _require_object(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise invalid_argument(f"{what} must be a JSON object for {self.descriptor.full_name}")

    def _bind_query(self, data: dict[str, Any], query: MultiMapping[str]) -> None:
        bound = self.bound
        for name in set(query.keys()):
            if name in self.selection_keys:
                continue  # a system parameter: it shapes the response, not the request
            path = self._query_field(name)
            names = tuple(f.name for f in path)
            if self.body == "*" or any(names[:i] in bound for i in range(1, len(names) + 1)):
                continue  # bound by the path or the body already: those win
            values = query.getall(name)
            last = path[-1]
            if last.is_repeated:
                _put(data, path, [self._convert(path, v) for v in values])
            elif len(values) > 1:
                raise invalid_argument(
                    f"query parameter '{name}' given {len(values)} times but "
                    f"field '{dotted_name(path)}' is not repeated"
                )
            else:
                _put(data, path, self._convert(path, values[0]))

    def _convert(self, path: FieldPath, text: str) -> Any:
        """The JSON value of URL text for a field; a mask the bridge resolves stays as written."""
        if self.masks and len(path) == 1 and any(m.field is path[0] for m in self.masks):
            return text
        try:
            return from_text(path[-1], text, dotted_name(path))
        except FieldError as exc:
            raise invalid_argument(str(exc)) from None

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


def decode_json(body: bytes) -> Any:
    """Parse a JSON body (json_text.loads: UTF-8, RFC 8259, no repeated names); else a 400."""
    try:
        return json_text.loads(body)
    except json_text.JsonError as exc:
        if exc.too_deep:
            raise invalid_argument("request JSON is nested too deeply") from None
        raise invalid_argument(f"request body is not valid JSON: {exc}") from None


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
