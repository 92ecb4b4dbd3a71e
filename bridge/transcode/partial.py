"""The ``fields`` system parameter: Google APIs' partial response, parsed, checked and applied.

``?fields=displayName,address(city)`` keeps only the named fields of a JSON reply. The text is
parsed once into a ``Selection`` (names as written), bound once to the response message type
into a ``Trim`` (keys as rendered, every name checked to be a field: an empty field still
validates), and a ``Trim`` then only copies the keys it keeps out of each rendered dict, before
JSON encoding. The syntax, as Google documents it::

    selection := item ("," item)*
    item      := path ["(" selection ")"]     a(b,c): b and c inside a
    path      := name (("/" | ".") name)*     a/b: b inside a ("." as in a FieldMask path)
    name      := identifier | "*"             "*": every field of its level; it ends a path

A selection inside a repeated field or a map applies to each element or value. With ``*``
beside named fields (``*,address(city)``), every field is kept and the named ones are trimmed.
An empty selection keeps everything (Google: "if empty, all fields are returned").
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from multidict import MultiMapping

from bridge.errors import BridgeError, invalid_argument
from bridge.transcode.fields import find_field, is_map, is_wkt
from bridge.transcode.response import ResponsePlan

__all__ = [
    "KEYS",
    "Selection",
    "Trim",
    "Trims",
    "for_object",
    "for_response",
    "parse",
    "response_trim",
    "selection_text",
]

KEYS: Final = ("fields", "$fields")  # the parameter's spellings; "$fields" is never a field
MAX_DEPTH: Final = 32  # names and parentheses nested in one selection; deeper is refused
_PER_PLAN: Final = 32  # bound texts cached per response plan (a route's distinct selections)
_NAME_START: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS: Final = _NAME_START | frozenset("0123456789")
_SEPARATORS: Final = frozenset("/.")
_ONE, _EACH, _VALUES = range(3)  # how a trim applies to a field: the value, each element, each
# map value


@dataclass(frozen=True)
class Selection:
    """A parsed selection: each name as written -> what to keep below it (None: all of it)."""

    names: Mapping[str, Selection | None]
    everything: bool = False  # "*": every field at this level, the named ones as selected

    @property
    def whole(self) -> bool:
        """Whether it keeps everything (``*``, or the empty selection)."""
        return self.everything and not self.names


def parse(text: str) -> Selection:
    """The selection written in ``text``; a 400 that says what is wrong and where."""
    if not text:
        return Selection({}, everything=True)
    parser = _Parser(text)
    selection = parser.selection(0)
    if parser.pos < len(text):
        raise parser.error(f"unexpected '{text[parser.pos]}'")
    return selection


class _Parser:
    """Recursive descent over the text; ``pos`` is the next character to read."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def selection(self, depth: int) -> Selection:
        result: Selection | None = self.item(depth)
        while self.peek() == ",":
            self.pos += 1
            result = _merge(result, self.item(depth))
        return _as_selection(result)

    def item(self, depth: int) -> Selection | None:
        """One path with its optional ``(...)``, as the selection it stands for."""
        names = [self.name()]
        while self.peek() in _SEPARATORS:
            self.pos += 1
            names.append(self.name())
        if depth + len(names) > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} levels")
        below: Selection | None = None
        if self.peek() == "(":
            if names[-1] == "*":
                raise self.error("'*' selects every field: it takes no '(...)'")
            self.pos += 1
            if self.peek() == ")":
                raise self.error("empty '()'")
            below = self.selection(depth + len(names))
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
        if "*" in names[:-1]:
            raise self.error("'*' must end its path")
        for name in reversed(names):
            if name == "*":
                below = Selection({}, everything=True)
            else:  # "a/*" and "a(*)" are "a": all of it
                below = Selection({name: None if below is not None and below.whole else below})
        return below

    def name(self) -> str:
        start = self.pos
        if self.peek() == "*":
            self.pos += 1
            return "*"
        if self.peek() not in _NAME_START:
            found = self.peek()
            raise self.error(f"unexpected '{found}'" if found else "a field name is missing")
        while self.peek() in _NAME_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def error(self, what: str) -> BridgeError:
        text = self.text if len(self.text) <= 200 else self.text[:200] + "..."
        return invalid_argument(
            f"invalid field selection '{text}': {what} at position {self.pos + 1}"
        )


def _merge(a: Selection | None, b: Selection | None) -> Selection | None:
    """The union of two selections of one level (None, all of it, absorbs anything)."""
    if a is None or b is None:
        return None
    names = dict(a.names)
    for name, below in b.names.items():
        names[name] = _merge(names[name], below) if name in names else below
    merged = Selection(names, a.everything or b.everything)
    return None if merged.whole else merged


def _as_selection(value: Selection | None) -> Selection:
    return Selection({}, everything=True) if value is None else value


# --- binding a selection to a message type --------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Node:
    """A selection of one message's fields: (rendered key, node below or None, how it applies)."""

    keep: tuple[tuple[str, _Node | None, int], ...]
    everything: bool

    def apply(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # null for an unset message field
        if self.everything:
            out = dict(value)
            for key, below, kind in self.keep:
                if below is not None and key in out:
                    out[key] = _apply(below, kind, out[key])
            return out
        out = {}
        for key, below, kind in self.keep:
            if key in value:
                item = value[key]
                out[key] = item if below is None else _apply(below, kind, item)
        return out


def _apply(node: _Node, kind: int, value: Any) -> Any:
    if kind == _ONE:
        return node.apply(value)
    if kind == _EACH:
        return [node.apply(v) for v in value] if isinstance(value, list) else value
    return {k: node.apply(v) for k, v in value.items()} if isinstance(value, dict) else value


@dataclass(frozen=True, eq=False)
class Trim:
    """A selection bound to what a response renders; ``apply`` keeps only what was asked for."""

    node: _Node | None  # None: everything
    kind: int = _ONE

    def apply(self, value: Any) -> Any:
        """The rendered JSON value (dicts, lists) trimmed; ``value`` itself is not changed."""
        return value if self.node is None else _apply(self.node, self.kind, value)


def _bind(selection: Selection, message: Descriptor, proto_names: bool, where: str) -> _Node:
    """Resolve each name to a field of ``message`` (JSON or proto name); a 400 names the path."""
    chosen: dict[FieldDescriptor, Selection | None] = {}
    for name, below in selection.names.items():
        field = find_field(message, name)
        if field is None:
            raise invalid_argument(
                f"field selection: '{where}{name}' names no field of {message.full_name}"
            )
        chosen[field] = _merge(chosen[field], below) if field in chosen else below
    keep = []
    for field in sorted(chosen, key=lambda f: f.index):
        path = f"{where}{field.name if proto_names else field.json_name}"
        kind, node = _bind_field(field, chosen[field], proto_names, path)
        keep.append((field.name if proto_names else field.json_name, node, kind))
    return _Node(tuple(keep), selection.everything)


def _bind_field(
    field: FieldDescriptor, below: Selection | None, proto_names: bool, path: str
) -> tuple[int, _Node | None]:
    """How a selection below ``field`` applies: to the value, each element or each map value.

    ``path`` is the field's place as the client wrote it; empty for a route's response_body.
    """
    kind, target = _ONE, field.message_type
    if is_map(field):
        kind, target = _VALUES, field.message_type.fields_by_name["value"].message_type
    elif field.is_repeated:
        kind = _EACH
    if below is None:
        return kind, None
    if target is None or is_wkt(target):
        subject = f"'{path}'" if path else f"this route's response ('{field.name}')"
        what = "not a message" if target is None else f"a {target.full_name}, one JSON value"
        raise invalid_argument(
            f"field selection: {subject} has no fields to select: "
            f"{'its values are' if kind == _VALUES else 'it is'} {what} (select it whole)"
        )
    return kind, _bind(below, target, proto_names, f"{path}/" if path else "")


def for_response(
    selection: Selection, output: Descriptor, field: FieldDescriptor | None, proto_names: bool
) -> Trim:
    """The trim of a reply of type ``output``, or of its ``response_body`` field when given."""
    if selection.whole:
        return Trim(None)
    if field is None:
        return Trim(_bind(selection, output, proto_names, ""))
    kind, node = _bind_field(field, selection, proto_names, "")
    return Trim(node, kind)


def for_object(
    selection: Selection, members: Mapping[str, Descriptor | None], proto_names: bool
) -> Trim:
    """The trim of one JSON object whose keys are ``members`` (an aggregate's call names).

    A member with a message type is checked against it; a member without one (None, e.g.
    ``errors``) can only be selected whole.
    """
    if selection.whole:
        return Trim(None)
    keep = []
    for name, below in selection.names.items():
        if name not in members:
            known = ", ".join(sorted(members))
            raise invalid_argument(
                f"field selection: '{name}' names no part of this response (it has {known})"
            )
        message = members[name]
        if below is not None and message is None:
            raise invalid_argument(
                f"field selection: '{name}' has no fields to select (select it whole)"
            )
        node = None if below is None else _bind(below, message, proto_names, f"{name}/")  # type: ignore[arg-type]
        keep.append((name, node, _ONE))
    return Trim(_Node(tuple(keep), selection.everything))


# --- the REST path -------------------------------------------------------------------------


def selection_text(query: MultiMapping[str], keys: tuple[str, ...] = KEYS) -> str | None:
    """The selection a query asks for under ``keys``, or None; given twice is a 400."""
    text = None
    for key in keys:
        value = query.get(key)
        if value is None:
            continue
        if text is not None or len(query.getall(key)) > 1:
            raise invalid_argument(
                f"the field selection ({' or '.join(repr(k) for k in keys)}) is given more than "
                "once"
            )
        text = value
    return text


class Trims:
    """The trims of one response shape, by selection text: each parsed and checked once.

    Bounded: at most ``_PER_PLAN`` texts, the oldest dropped first. REST keeps one per route
    (``response_trim``); an aggregate keeps one per compiled snapshot and binds with
    ``for_object``.
    """

    __slots__ = ("__weakref__", "_by_text")

    def __init__(self) -> None:
        self._by_text: dict[str, Trim] = {}

    def get(self, text: str, bind: Callable[[Selection], Trim]) -> Trim:
        """The trim for ``text``, from ``bind(parse(text))`` the first time; a 400 if wrong."""
        trim = self._by_text.get(text)
        if trim is None:
            trim = bind(parse(text))
            if len(self._by_text) >= _PER_PLAN:
                del self._by_text[next(iter(self._by_text))]
            self._by_text[text] = trim
        return trim


_TRIMS: Final[weakref.WeakKeyDictionary[ResponsePlan, Trims]] = weakref.WeakKeyDictionary()


def response_trim(plan: ResponsePlan, output: Descriptor, text: str) -> Trim:
    """The trim for a route's reply of type ``output``, parsed and checked once per text.

    Kept per plan, so a new snapshot's plans start empty and a dropped one takes its entries
    with it.
    """
    trims = _TRIMS.get(plan)
    if trims is None:
        if plan.raw:
            raise invalid_argument(
                "field selection: this route answers raw bytes (google.api.HttpBody), which "
                "have no fields to select"
            )
        trims = _TRIMS[plan] = Trims()
    return trims.get(text, lambda s: for_response(s, output, plan.field, plan.use_proto_names))
