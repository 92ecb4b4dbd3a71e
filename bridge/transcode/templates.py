"""Request templates of composed calls -> fill functions that build the request JSON.

A template (parsed by `bridge.config.composition`) is checked against the request message once,
when an aggregate is compiled for a snapshot: every key must be a field, every reference must
fit the field it sets (URL text into a scalar, a response field of the same JSON shape), and
its literals must parse. What comes out is a tree of small functions; a request only calls
them with its path variables, query parameters and the answers of earlier calls. A reference
without a value leaves its field out of the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from multidict import MultiMapping

from bridge import errors
from bridge.config.composition import CALL, PATH, Ref, Text
from bridge.config.values import Problem
from bridge.errors import BridgeError
from bridge.registry.snapshot import Binding
from bridge.transcode.fields import FieldError, find_field, from_text, is_map, resolve

MISSING: Final = object()  # a reference with no value: the field is left out of the request
_WRAPPED: Final = ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
# Message types whose JSON form is a scalar (a string, a number): URL text can set them.
_SCALAR_MESSAGES: Final = frozenset(
    f"google.protobuf.{n}" for n in ("Timestamp", "Duration", "FieldMask", "BytesValue")
) | frozenset(f"google.protobuf.{n}Value" for n in _WRAPPED)
_ANY_JSON: Final = frozenset(
    f"google.protobuf.{n}" for n in ("Struct", "Value", "ListValue", "Any")
)


class Values:
    """What a request template reads: path variables, query parameters, earlier answers."""

    __slots__ = ("params", "query", "replies")

    def __init__(self, params: Mapping[tuple[str, ...], str], query: MultiMapping[str]) -> None:
        self.params = params
        self.query = query
        self.replies: dict[str, Any] = {}


Fill = Callable[[Values], Any]


def _shape(field: FieldDescriptor | None, element: bool = False) -> str:
    """What a field's JSON value is: "scalar", "object", "list", or "any" (Struct, Value...)."""
    if field is None:
        return "object"  # a whole response message
    if field.is_repeated and not element:
        return "object" if is_map(field) else "list"
    message = field.message_type
    if message is None or message.full_name in _SCALAR_MESSAGES:
        return "scalar"
    return "any" if message.full_name in _ANY_JSON else "object"


class Compiler:
    """Turns a parsed request template into fill functions, checking it against the message."""

    def __init__(self, where: str, outputs: Mapping[str, Binding]) -> None:
        self.where = where
        self.outputs = outputs

    def message(self, node: dict[str, Any], message: Descriptor) -> Fill:
        fills: list[tuple[str, Fill]] = []
        for key, value in node.items():
            target = find_field(message, key)
            if target is None:
                raise Problem(f"no field '{key}' in {message.full_name}", key)
            fills.append((key, _placed(key, self.field, value, target, False)))
        return _mapping(fills)

    def field(self, node: Any, target: FieldDescriptor, element: bool) -> Fill:
        shape = _shape(target, element)
        if isinstance(node, Ref):
            return self.ref(node, target, shape)
        if isinstance(node, Text):
            return self.text(node, target, shape)
        if shape == "any":
            return self.opaque(node)
        if isinstance(node, dict):
            if shape != "object":
                raise Problem(
                    f"field '{target.name}' is not a message or map, it takes {_a(shape)}"
                )
            if is_map(target) and not element:
                value_field = target.message_type.fields_by_name["value"]
                items = [(k, _placed(k, self.field, v, value_field, True)) for k, v in node.items()]
                return _mapping(items)
            return self.message(node, target.message_type)
        if isinstance(node, list):
            if shape != "list":
                raise Problem(f"field '{target.name}' is not repeated")
            return _listing([_placed(i, self.field, v, target, True) for i, v in enumerate(node)])
        return lambda _values: node  # a literal: json_format checks it (check_literals)

    def opaque(self, node: Any) -> Fill:
        """A value for a Struct, Value, ListValue or Any: any JSON, references filled in."""
        if isinstance(node, Ref):
            return self.ref(node, None, "any")
        if isinstance(node, Text):
            return self.text(node, None, "any")
        if isinstance(node, dict):
            return _mapping([(k, _placed(k, self.opaque, v)) for k, v in node.items()])
        if isinstance(node, list):
            return _listing([_placed(i, self.opaque, v) for i, v in enumerate(node)])
        return lambda _values: node

    def ref(self, ref: Ref, target: FieldDescriptor | None, shape: str) -> Fill:
        if ref.kind == CALL:
            return self.reply_ref(ref, shape)
        if shape not in ("scalar", "list", "any"):
            raise Problem(f"{ref} is URL text; field '{target and target.name}' takes {_a(shape)}")
        convert = _converter(target, ref, self.where) if shape != "any" else _as_is
        listed = shape == "list"
        if ref.kind == PATH:
            key = tuple(ref.name.split("."))

            def from_path(values: Values) -> Any:
                text = values.params.get(key)
                if text is None:
                    return MISSING
                return [convert(text)] if listed else convert(text)

            return from_path
        name = ref.name

        def from_query(values: Values) -> Any:
            given = values.query.getall(name, ())
            if not given:
                return MISSING
            if listed:
                return [convert(text) for text in given]
            if len(given) > 1:
                raise errors.invalid_argument(
                    f"query parameter '{name}' given {len(given)} times; {self.where} takes one"
                )
            return convert(given[0])

        return from_query

    def reply_ref(self, ref: Ref, shape: str) -> Fill:
        """A field of an earlier call's answer, by the names its JSON rendering uses."""
        binding = self.outputs[ref.name]
        output = binding.method.output.DESCRIPTOR
        try:
            path = resolve(output, ref.field) if ref.field else ()
        except FieldError as exc:
            raise Problem(f"{ref}: {exc}") from None
        source = _shape(path[-1] if path else None)
        if "any" not in (shape, source) and source != shape:
            raise Problem(f"{ref} is {_a(source)}; the field it sets takes {_a(shape)}")
        proto_names = binding.response.use_proto_names
        keys = tuple(f.name if proto_names else f.json_name for f in path)
        name = ref.name

        def from_reply(values: Values) -> Any:
            value = values.replies[name]
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return MISSING if value is None else value

        return from_reply

    def text(self, text: Text, target: FieldDescriptor | None, shape: str) -> Fill:
        if shape not in ("scalar", "any"):
            raise Problem(f"text with references makes a string; the field takes {_a(shape)}")
        parts: list[Fill | str] = []
        for part in text.parts:
            if not isinstance(part, Ref):
                parts.append(part)
            elif part.kind == CALL:
                parts.append(self.reply_ref(part, "scalar"))
            else:
                parts.append(self.ref(part, None, "any"))
        convert = _converter(target, None, self.where) if target is not None else _as_is

        def joined(values: Values) -> Any:
            out = []
            for part in parts:
                value = part if isinstance(part, str) else part(values)
                out.append("" if value is MISSING else _text(value))
            return convert("".join(out))

        return joined


def _a(shape: str) -> str:
    return f"an {shape}" if shape[0] in "aeiou" else f"a {shape}"


def _placed(key: str | int, compile: Callable[..., Fill], *args: Any) -> Fill:
    """``compile(*args)``, a Problem inside it placed below ``key``."""
    try:
        return compile(*args)
    except Problem as exc:
        raise Problem(str(exc), key, *exc.at) from None


def _mapping(items: list[tuple[str, Fill]]) -> Fill:
    def fill(values: Values) -> dict[str, Any]:
        out = {}
        for key, one in items:
            value = one(values)
            if value is not MISSING:
                out[key] = value
        return out

    return fill


def _listing(items: list[Fill]) -> Fill:
    def fill(values: Values) -> list[Any]:
        return [v for v in (one(values) for one in items) if v is not MISSING]

    return fill


def _as_is(text: str) -> str:
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _converter(target: FieldDescriptor, ref: Ref | None, where: str) -> Callable[[str], Any]:
    """URL text -> the JSON value of ``target`` (a boolean, an enum number...); a 400 if bad."""
    name = target.name

    def convert(text: str) -> Any:
        try:
            return from_text(target, text, name)
        except FieldError as exc:
            raise errors.invalid_argument(f"{where}: {ref or 'text'}: {exc}") from None

    return convert


def check_literals(request: dict[str, Any], binding: Binding, where: str) -> None:
    """Parse the template's literal values alone (references left out): a Problem if wrong."""
    try:
        binding.request.from_json(_literals(request))
    except BridgeError as exc:
        raise Problem(f"{where}: {exc.message}", "request") from None


def _literals(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items() if not isinstance(v, Ref | Text)}
    if isinstance(node, list):
        return [_literals(v) for v in node if not isinstance(v, Ref | Text)]
    return node
