"""A parser for google.api.http path templates (the `get: "/v1/{name=users/*}"` strings).

The grammar, from google/api/http.proto::

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

Like grpc-gateway's internal/httprule, a template is parsed once into a flat tuple of
segments (variables expanded in place) plus the variables' index ranges into it; the route
table compiles that into its matcher. Two deliberate extensions of the grammar: the bare
template "/" (no segments) is accepted so a service can own the root path, and a variable
whose field path is a prefix of another's (`{a}` with `{a.b}`) is rejected, because one
request cannot bind both a field and a sub-field of it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Segment",
    "SegmentKind",
    "Template",
    "TemplateError",
    "Variable",
    "parse_template",
]

# Characters with a meaning in the grammar; anything else may appear in a literal so that
# `v1`, `foo-bar`, `a.b` and `~x` all work. ":" only ever introduces the trailing verb.
_RESERVED: Final = frozenset("/{}*:")
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""

    def __init__(self, template: str, reason: str, offset: int) -> None:
        super().__init__(f'"{template}": {reason} (at offset {offset})')
        self.template = template
        self.reason = reason
        self.offset = offset


class SegmentKind(enum.Enum):
    """What one template segment matches: a fixed string, one path segment, or the rest."""

    LITERAL = "literal"
    SINGLE = "*"
    MULTI = "**"


@dataclass(frozen=True, slots=True)
class Segment:
    """One `/`-separated piece of a template: a literal, `*` or `**`."""

    kind: SegmentKind
    literal: str = ""

    @property
    def shape(self) -> str:
        """The literal itself, or "*" / "**" (a literal can never contain "*")."""
        return self.literal if self.kind is SegmentKind.LITERAL else self.kind.value


@dataclass(frozen=True, slots=True)
class Variable:
    """A `{field.path=...}` binding: which request field gets which segments of the path."""

    field_path: tuple[str, ...]
    start: int
    # Exclusive; None when the variable ends with "**" and so takes the rest of the path.
    end: int | None

    @property
    def dotted(self) -> str:
        """The field path as written in the template, e.g. "user.name"."""
        return ".".join(self.field_path)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed path template: flat segments, an optional custom verb, and its variables."""

    source: str
    segments: tuple[Segment, ...]
    verb: str | None
    variables: tuple[Variable, ...]

    @property
    def shape(self) -> tuple[str, ...]:
        """The paths this template matches, ignoring variable names.

        Two routes with the same HTTP method and the same shape collide: `/v1/{name=users/*}`
        and `/v1/users/{id}` are both ("v1", "users", "*"). A custom verb is appended as
        ":verb", which no literal can be mistaken for.
        """
        shape = tuple(seg.shape for seg in self.segments)
        return shape if self.verb is None else (*shape, f":{self.verb}")

    def __str__(self) -> str:
        return self.source


def parse_template(text: str) -> Template:
    """Parse a google.api.http path template; raise TemplateError quoting it if invalid."""
    return _Parser(text).parse()


class _Parser:
    """A recursive-descent parser over the template text, one character of lookahead."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def fail(self, reason: str, offset: int | None = None) -> TemplateError:
        return TemplateError(self.text, reason, self.pos if offset is None else offset)

    def peek(self) -> str:
        """The next character, or "" at the end of the text."""
        return self.text[self.pos : self.pos + 1]

    def parse(self) -> Template:
        if not self.text.startswith("/"):
            raise self.fail('a template must start with "/"', 0)
        self.pos = 1
        if self.text != "/":
            self.parse_segments(in_variable=False)
        verb = self.parse_verb() if self.peek() == ":" else None
        if verb is not None and self.pos < len(self.text):
            raise self.fail("the verb must end the template")
        if self.pos < len(self.text):
            raise self.unexpected()
        return Template(self.text, tuple(self.segments), verb, tuple(self.variables))

    def unexpected(self) -> TemplateError:
        char = self.peek()
        if char == "}":
            return self.fail('unmatched "}"')
        if char == ":":
            return self.fail('":" may only introduce the trailing verb')
        if char == "{":
            return self.fail('"{" may only start a segment')
        return self.fail(f'unexpected "{char}"')

    def parse_segments(self, *, in_variable: bool) -> None:
        self.parse_segment(in_variable=in_variable)
        while self.peek() == "/":
            self.pos += 1
            self.parse_segment(in_variable=in_variable)

    def parse_segment(self, *, in_variable: bool) -> None:
        char = self.peek()
        if char == "{":
            if in_variable:
                raise self.fail("nested variables are not allowed")
            self.parse_variable()
        elif char == "*":
            self.parse_wildcard()
        elif char in ("", "/", ":", "}"):
            raise self.fail("empty segment")
        else:
            self.parse_literal()

    def add(self, segment: Segment, offset: int) -> None:
        """Append a segment, enforcing that nothing follows a "**"."""
        if self.segments and self.segments[-1].kind is SegmentKind.MULTI:
            raise self.fail('"**" must be the last segment', offset)
        self.segments.append(segment)

    def parse_wildcard(self) -> None:
        start = self.pos
        kind = SegmentKind.MULTI if self.text.startswith("**", start) else SegmentKind.SINGLE
        self.pos += len(kind.value)
        if self.peek() not in ("", "/", ":", "}"):
            raise self.fail(f'"{kind.value}" must be a whole segment', start)
        self.add(Segment(kind), start)

    def parse_literal(self) -> None:
        start = self.pos
        literal = self.read_literal()
        char = self.peek()
        if char == "*":
            raise self.fail('"*" must be a whole segment')
        if char == "{":
            raise self.fail('"{" may only start a segment')
        self.add(Segment(SegmentKind.LITERAL, literal), start)

    def read_literal(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _RESERVED:
            self.pos += 1
        return self.text[start : self.pos]

    def parse_variable(self) -> None:
        opened = self.pos
        self.pos += 1
        field_path = self.parse_field_path()
        first = len(self.segments)
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments(in_variable=True)
        elif self.peek() == "}":
            self.add(Segment(SegmentKind.SINGLE), self.pos)
        elif self.peek():
            raise self.fail(f'expected "=" or "}}" after the field path, found {self.found()}')
        self.expect_close(opened)
        end = None if self.segments[-1].kind is SegmentKind.MULTI else len(self.segments)
        self.check_unique(field_path, opened)
        self.variables.append(Variable(field_path, first, end))

    def expect_close(self, opened: int) -> None:
        if self.peek() == "":
            raise self.fail('unclosed "{"', opened)
        if self.peek() != "}":
            found = self.found()
            raise self.fail(f'expected "}}" to close the "{{" at offset {opened}, found {found}')
        self.pos += 1

    def found(self) -> str:
        return f'"{self.peek()}"' if self.peek() else "the end"

    def parse_field_path(self) -> tuple[str, ...]:
        names = [self.parse_ident()]
        while self.peek() == ".":
            self.pos += 1
            names.append(self.parse_ident())
        return tuple(names)

    def parse_ident(self) -> str:
        ident = _IDENT.match(self.text, self.pos)
        if ident is None:
            raise self.fail(f"expected a field name, found {self.found()}")
        self.pos = ident.end()
        return ident.group()

    def check_unique(self, field_path: tuple[str, ...], offset: int) -> None:
        dotted = ".".join(field_path)
        for other in self.variables:
            if other.field_path == field_path:
                raise self.fail(f'duplicate variable "{dotted}"', offset)
            shorter = min(len(field_path), len(other.field_path))
            if other.field_path[:shorter] == field_path[:shorter]:
                raise self.fail(f'variables "{other.dotted}" and "{dotted}" overlap', offset)

    def parse_verb(self) -> str:
        self.pos += 1
        verb = self.read_literal()
        if not verb:
            raise self.fail("empty verb")
        return verb
