"""An immutable route table: HTTP method + URL path -> the route that serves it.

Routes are compiled once, grpc-gateway style, into one segment trie per (HTTP method,
custom verb). Matching a request splits its path once and walks the trie, trying the literal
child, then the `*` child, then a `**` tail at every level; that order visits candidates
from most to least specific, so the first route found is the winner and no scoring or
sorting happens per request.

Matching rules (see `RouteTable.match`):

* The path is split on "/" after the leading "/"; "/" alone has no segments. An empty
  segment (`/v1/users/`, `/v1//x`) never matches `*`, `**` or a variable, and templates
  cannot contain an empty literal, so such paths only match if nothing needs to bind there.
* Literal segments are compared with the percent-decoded path segment, as written in the
  template (template literals are not decoded).
* `**` matches ONE or more remaining segments (http.proto says "zero or more"). Requiring
  one keeps every variable binding non-empty and consistent with the empty-segment rule:
  `/v1/{path=docs/**}` matches `/v1/docs/a` and `/v1/docs/a/b/c` but not `/v1/docs`.
* A custom verb: if the last segment contains ":", routes with verb V match when it ends
  with ":V" and what precedes it is not empty; routes without a verb see the whole segment
  (so `{id}` can bind "a:b"). For one HTTP method, a verb route beats a non-verb route.
* Most specific wins: segment by segment, literal > `*` > `**`.
* The HTTP method is compared exactly; HEAD does not fall back to GET. If no route for the
  method fits but some other method's does, the match is PARTIAL and lists those methods.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

from bridge.routing.template import SegmentKind, Template

__all__ = ["Match", "MatchKind", "Route", "RouteConflict", "RouteTable"]

_ENCODED_SLASH: Final = re.compile(r"(%2[fF])")


@dataclass(frozen=True)
class Route:
    """One REST binding of a gRPC method: an HTTP method plus a path template."""

    verb: str  # HTTP method uppercased ("GET", "POST", ...) or a custom one as written
    template: Template
    target: Any = field(compare=False)  # opaque payload handed back on match
    owner: str  # who defined it, for messages, e.g. "demo.users.v1.UserService/GetUser"

    def __post_init__(self) -> None:
        if not self.verb or any(c.isspace() for c in self.verb):
            raise ValueError(f"route {self.owner}: bad HTTP method {self.verb!r}")

    def __str__(self) -> str:
        return f"{self.verb} {self.template.source} ({self.owner})"


class RouteConflict(ValueError):
    """Two routes with the same HTTP method whose templates match exactly the same paths."""

    def __init__(self, first: Route, second: Route) -> None:
        super().__init__(f"route conflict: {first} and {second} match the same paths")
        self.first = first
        self.second = second


class MatchKind(enum.Enum):
    """How well a request fits the table."""

    NONE = "none"  # no route fits the path: 404
    PARTIAL = "partial"  # some route fits the path but not the HTTP method: 405
    FULL = "full"  # a route fits both


@dataclass(frozen=True)
class Match:
    """The outcome of `RouteTable.match`: the route, its bound variables, or what would fit."""

    kind: MatchKind
    route: Route | None = None
    params: dict[tuple[str, ...], str] = field(default_factory=dict)  # field path -> value
    allowed: tuple[str, ...] = ()  # sorted methods whose routes fit the path (405 Allow)


_NO_MATCH: Final = Match(MatchKind.NONE)


@dataclass(frozen=True, slots=True)
class _Binding:
    """A compiled variable: where its value lies in the path and how to decode it."""

    field_path: tuple[str, ...]
    start: int
    end: int | None  # exclusive; None runs to the end of the path
    single: bool  # exactly one `*`: fully decoded; otherwise "%2F" stays encoded


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A route together with the precomputed bindings for its variables."""

    route: Route
    bindings: tuple[_Binding, ...]

    def bind(self, raw: list[str]) -> dict[tuple[str, ...], str]:
        """Extract the variable values from the raw (still encoded) path segments."""
        params: dict[tuple[str, ...], str] = {}
        for b in self.bindings:
            if b.single:
                params[b.field_path] = _decode(raw[b.start])
            else:
                span = raw[b.start : b.end]
                params[b.field_path] = "/".join([_decode_reserved(s) for s in span])
        return params


@dataclass(slots=True)
class _Node:
    """A trie node: the routes that end here and the children for the next segment."""

    literals: dict[str, _Node] = field(default_factory=dict)
    single: _Node | None = None
    multi: _Compiled | None = None  # a `**` is always last, so it ends a route
    here: _Compiled | None = None


class _Path:
    """A request path split once: raw and decoded segments, plus its verb-stripped form."""

    __slots__ = ("decoded", "last_empty", "raw", "verb", "verb_decoded", "verb_raw")

    def __init__(self, raw: list[str], encoded: bool) -> None:
        self.raw = raw
        # Most paths carry no escapes; they share one list for raw and decoded.
        self.decoded = [_decode(s) for s in raw] if encoded else raw
        # The index of the last empty segment: a `**` may only start after it.
        self.last_empty = len(raw) - 1 - raw[::-1].index("") if "" in raw else -1
        self.verb: str | None = None
        self.verb_raw, self.verb_decoded = raw, self.decoded
        colon = raw[-1].rfind(":") if raw else -1
        if colon > 0:
            self.verb = raw[-1][colon + 1 :]
            self.verb_raw = [*raw[:-1], raw[-1][:colon]]
            self.verb_decoded = [*self.decoded[:-1], _decode(self.verb_raw[-1])]

    @classmethod
    def split(cls, path: str) -> _Path | None:
        if not path.startswith("/"):
            return None
        return cls(path[1:].split("/") if len(path) > 1 else [], "%" in path)


class RouteTable:
    """An immutable set of routes, compiled once, matched many times."""

    def __init__(self, routes: Iterable[Route]) -> None:
        """Compile the routes; raise RouteConflict if two of them match the same requests."""
        self.routes: tuple[Route, ...] = tuple(routes)
        self._tries: dict[str, dict[str | None, _Node]] = {}
        seen: dict[tuple[str, tuple[str, ...]], Route] = {}
        for route in self.routes:
            key = (route.verb, route.template.shape)
            if key in seen:
                raise RouteConflict(seen[key], route)
            seen[key] = route
            by_verb = self._tries.setdefault(route.verb, {})
            _insert(by_verb.setdefault(route.template.verb, _Node()), _compile(route))

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, verb: str, path: str) -> Match:
        """Find the route for an HTTP method and a raw (percent-encoded) URL path.

        `path` excludes the query string. FULL carries the route and its variables keyed by
        field path; PARTIAL carries the sorted methods that would have matched; NONE neither.
        """
        split = _Path.split(path)
        if split is None:
            return _NO_MATCH
        tries = self._tries.get(verb)
        if tries is not None:
            found = _find(tries, split)
            if found is not None:
                compiled, raw = found
                return Match(MatchKind.FULL, compiled.route, compiled.bind(raw))
        allowed = self._fitting(split, skip=verb)
        return Match(MatchKind.PARTIAL, allowed=allowed) if allowed else _NO_MATCH

    def methods(self, path: str) -> tuple[str, ...]:
        """The sorted HTTP methods some route serves at a raw URL path (a CORS preflight's list)."""
        split = _Path.split(path)
        return () if split is None else self._fitting(split)

    def _fitting(self, path: _Path, skip: str | None = None) -> tuple[str, ...]:
        return tuple(sorted(m for m, t in self._tries.items() if m != skip and _find(t, path)))


def _compile(route: Route) -> _Compiled:
    segments = route.template.segments
    bindings = tuple(
        _Binding(
            v.field_path,
            v.start,
            v.end,
            single=v.end == v.start + 1 and segments[v.start].kind is SegmentKind.SINGLE,
        )
        for v in route.template.variables
    )
    return _Compiled(route, bindings)


def _insert(node: _Node, compiled: _Compiled) -> None:
    # Conflicts were ruled out by shape before, so no terminal slot is ever overwritten.
    for seg in compiled.route.template.segments:
        if seg.kind is SegmentKind.MULTI:
            node.multi = compiled
            return
        if seg.kind is SegmentKind.SINGLE:
            node.single = node.single or _Node()
            node = node.single
        else:
            node = node.literals.setdefault(seg.literal, _Node())
    node.here = compiled


def _find(tries: dict[str | None, _Node], path: _Path) -> tuple[_Compiled, list[str]] | None:
    """The best route of one HTTP method for the path, and the raw segments it binds."""
    if path.verb is not None:
        node = tries.get(path.verb)
        if node is not None:
            found = _search(node, path.verb_decoded, 0, path.last_empty)
            if found is not None:
                return found, path.verb_raw
    node = tries.get(None)
    if node is not None:
        found = _search(node, path.decoded, 0, path.last_empty)
        if found is not None:
            return found, path.raw
    return None


def _search(node: _Node, segs: list[str], i: int, last_empty: int) -> _Compiled | None:
    """Depth-first search, literal before `*` before `**`, i.e. most specific first."""
    if i == len(segs):
        return node.here
    seg = segs[i]
    if seg:
        child = node.literals.get(seg)
        if child is not None:
            found = _search(child, segs, i + 1, last_empty)
            if found is not None:
                return found
        if node.single is not None:
            found = _search(node.single, segs, i + 1, last_empty)
            if found is not None:
                return found
    # Recursion depth is bounded by the trie's depth, not by the request's path length.
    if node.multi is not None and last_empty < i:
        return node.multi
    return None


def _decode(segment: str) -> str:
    """Percent-decode a segment; bad escapes stay as written, invalid UTF-8 keeps it raw."""
    if "%" not in segment:
        return segment
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return segment


def _decode_reserved(segment: str) -> str:
    """Percent-decode a segment but keep "%2F" encoded (grpc-gateway's reserved expansion).

    Splitting at "%2F" never cuts a UTF-8 sequence: its continuation bytes are all >= 0x80.
    """
    if "%" not in segment:
        return segment
    parts = _ENCODED_SLASH.split(segment)
    parts[::2] = [_decode(p) for p in parts[::2]]
    return "".join(parts)
