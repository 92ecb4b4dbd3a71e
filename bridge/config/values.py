"""The values of the config file: durations, sizes, counts, flags, names, and lists of them.

Each is an ``Annotated`` type whose BeforeValidator reads what YAML (or ``${NAME}``) gave and
raises a `Problem` worded for the user, and whose JSON Schema says what the file may hold,
loosely enough that ``${NAME}`` references validate too. `Section` is the base of every mapping.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

import grpc
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import CoreSchema

T = TypeVar("T")
N = TypeVar("N", int, float)

NOT_SUPPORTED: Final[str] = "not supported by this version of Bridge"
REDIS_SCHEMES: Final = ("redis://", "rediss://")
# The codes a failed call can end with, in code order: what retries and fallbacks act on.
STATUS_CODES: Final = tuple(c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK)

_DURATION_HINT: Final = "is not a duration (use 250ms, 5s, 2m)"
_DURATION: Final = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+) ?([A-Za-z]*)")
_SIZE_UNITS: Final[dict[str, int]] = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_DIGITS: Final = re.compile(r"[0-9]+")
_HOST_PORT: Final = re.compile(r"\[([^\]]+)\]:(\d{1,5})|([A-Za-z0-9_.-]+):(\d{1,5})")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token

# JSON Schema patterns (ECMA-262, matched anywhere): the value's own forms, or a ${NAME}.
_ENV_PATTERN: Final = r"\$\{"
_DURATION_PATTERN: Final = r"^\s*((\d+(\.\d+)?|\.\d+)(ms|s|m|h))+\s*$|^\s*(\d+(\.\d+)?|\.\d+)\s*$"
_SIZE_PATTERN: Final = r"^\s*(\d+(\.\d+)?|\.\d+) ?(([kKmMgGtT][iI]?)?[bB])?\s*$"


class Problem(ValueError):
    """A value the config file got wrong, worded for its user.

    `at` is where, below the value being validated, the problem lies (a list index, a key), so
    a check made on a whole section can still name the exact key.
    """

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


class EnvText(str):
    """A string value that held ``${NAME}`` references; `missing` names those that gave nothing.

    Only such strings may stand for a bool (``${TLS}`` gives "true"), and a value that is wrong
    because a variable was unset gets that said in its error.
    """

    missing: str

    def __new__(cls, text: str, missing: str) -> EnvText:
        self = super().__new__(cls, text)
        self.missing = missing
        return self


def describe(value: object) -> str:
    """A value as an error message shows it: YAML's words for true, false and null."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "nothing"}[value]
    if isinstance(value, str | int | float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value}"  # e.g. a YAML date


def kind(value: object) -> str:
    """What a value is, without showing it: for secrets, which no message may hold."""
    if isinstance(value, bool) or value is None:
        return describe(value)
    if isinstance(value, int | float):
        return "a number"
    return describe(value) if isinstance(value, list | tuple | dict) else "a value"


def parse_duration(text: str | int | float) -> float:
    """The seconds a duration like ``250ms``, ``5s``, ``1m30s`` or a bare number stands for."""
    if isinstance(text, int | float) and not isinstance(text, bool) and 0 <= text < float("inf"):
        return float(text)  # NaN fails the comparison too
    s = text.strip() if isinstance(text, str) else ""
    if _NUMBER.fullmatch(s):
        return float(s)
    if not _DURATION.fullmatch(s):
        raise ValueError(f"{text!r} {_DURATION_HINT}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(s))


def parse_size(text: str | int) -> int:
    """The bytes a size like ``4MiB``, ``512KiB``, ``1MB`` (10**6) or ``100`` stands for."""
    message = f"{text!r} is not a size (use 512KiB, 4MiB, 1GiB or a number of bytes)"
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(message)
    amount = Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if amount != amount.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(amount)


def text(value: Any, what: str = "a string") -> str:
    """A non-blank string, stripped; `what` names the expected value in the error."""
    if not isinstance(value, str):
        raise Problem(f"expected {what}, got {describe(value)}")
    if not value.strip():
        missing = getattr(value, "missing", "")
        raise Problem(f"is empty: {missing}" if missing else "must not be empty")
    return value.strip()


def text_of(what: str) -> Callable[[Any], str]:
    """A reader of strings that names `what` it expected."""
    return lambda value: text(value, what)


def listed(item: Callable[[Any], T], plural: str) -> Callable[[Any], tuple[T, ...]]:
    """A reader of a list whose items `item` reads; one string stands for a list of one.

    Items are read here rather than by pydantic so that a single string's error names the key
    itself, as the user wrote it, and a list item's names its index.
    """

    def read(value: Any) -> tuple[T, ...]:
        if isinstance(value, str):
            return (item(value),)
        if not isinstance(value, list | tuple):
            raise Problem(f"expected a list of {plural}, got {describe(value)}")
        items = []
        for i, one in enumerate(value):
            try:
                items.append(item(one))
            except Problem as e:
                raise Problem(str(e), i, *e.at) from None
        return tuple(items)

    return read


def unique(read: Callable[[Any], tuple[T, ...]]) -> Callable[[Any], tuple[T, ...]]:
    """`read`, with repeated items dropped (the first one kept, in order)."""
    return lambda value: tuple(dict.fromkeys(read(value)))


def _flag(value: Any) -> bool:
    if isinstance(value, EnvText) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise Problem(f"expected true or false, got {describe(value)}")
    return value


def _count(value: Any) -> int:
    """A whole number above zero, also from a string of digits (as ``${NAME}`` gives)."""
    number = value
    if isinstance(value, str):
        s = text(value, "a whole number")
        number = int(s) if _DIGITS.fullmatch(s) else None
    if isinstance(number, bool) or not isinstance(number, int):
        raise Problem(f"expected a whole number, got {describe(value)}")
    if number <= 0:
        raise Problem(f"must be more than zero, got {describe(value)}")
    return number


def _positive(parse: Callable[[Any], N]) -> Callable[[Any], N]:
    """A reader of amounts above zero, read with `parse`."""
    read_amount = _amount(parse)

    def read(value: Any) -> N:
        amount = read_amount(value)
        if amount <= 0:
            raise Problem(f"must be more than zero, got {describe(value)}")
        return amount

    return read


def _amount(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """A reader of amounts: a blank string is "empty", not "not a duration"."""
    return lambda value: parse(text(value) if isinstance(value, str) else value)


def host_port(text: str, min_port: int) -> tuple[str, int]:
    """The host and port of ``host:port`` or ``[v6addr]:port``; ValueError if it is neither."""
    m = _HOST_PORT.fullmatch(text)
    if not m:
        raise ValueError(text)
    if m.group(1) is not None:
        ipaddress.IPv6Address(m.group(1))  # raises ValueError
    host, port = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    if not min_port <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


def redis_url(store: str) -> str:
    """A ``redis://`` or ``rediss://`` (TLS) URL with a host, and a database number if any.

    The password the URL may carry is never part of a problem's message.
    """
    parts = urlsplit(store)
    shown_ = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
    try:
        port = parts.port
    except ValueError:
        raise Problem(f"{shown_!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise Problem(f"{shown_!r} names no host (use redis://host:6379/0)")
    if port == 0:
        raise Problem(f"{shown_!r}: the port is not a number from 1 to 65535")
    db = parts.path.lstrip("/")
    if db and not _DIGITS.fullmatch(db):
        raise Problem(f"{shown_!r}: the database after the host is a number (like /0), not {db!r}")
    return store


def header_name(value: Any) -> str:
    """An HTTP header name, lowercased."""
    name = text(value, "a header name")
    if not _HEADER_NAME.fullmatch(name):
        raise Problem(f"{name!r} is not a valid HTTP header name")
    return name.lower()


def _status_code(value: Any) -> str:
    """A gRPC status code name in any case (``unavailable``), kept as gRPC spells it.

    OK is refused: neither a retry nor a fallback acts on a success.
    """
    name = text(value, "a gRPC status code name")
    code = name.upper()
    if code in STATUS_CODES:
        return code
    if code == "OK":
        raise Problem("OK is not a failure: list the codes of failed calls, like UNAVAILABLE")
    close = difflib.get_close_matches(code, STATUS_CODES, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(STATUS_CODES)}"
    raise Problem(f"{name!r} is not a gRPC status code name ({hint})")


def _status_codes(value: Any) -> tuple[str, ...]:
    codes = unique(listed(_status_code, "gRPC status code names"))(value)
    if not codes:
        raise Problem("required: list at least one code, like UNAVAILABLE")
    return codes


def _any_case(word: str) -> str:
    """A JSON Schema pattern of `word` in any case (ECMA-262 patterns have no ``(?i)``)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def written(default: Any, **field: Any) -> Any:
    """A field's default as the file would write it (``"4MiB"``, ``{}``), validated like a
    value read from the file: parsed, its paths resolved against the file's folder, and shown
    in the JSON Schema as a user would write it."""
    return Field(default, **field)


def or_env(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema that also takes a string holding a ``${NAME}`` reference."""
    return {"anyOf": [*schema.get("anyOf", [schema]), {"type": "string", "pattern": _ENV_PATTERN}]}


STRINGS: Final[dict[str, Any]] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
}

Text = Annotated[str, BeforeValidator(text)]
Bool = Annotated[bool, BeforeValidator(_flag), WithJsonSchema(or_env({"type": "boolean"}))]
Count = Annotated[
    int,
    BeforeValidator(_count),
    WithJsonSchema(or_env({"anyOf": [
        {"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\s*[0-9]+\s*$"}
    ]})),
]  # fmt: skip
Size = Annotated[
    int,
    BeforeValidator(_positive(parse_size)),
    WithJsonSchema(or_env({"anyOf": [
        {"type": "integer", "minimum": 1}, {"type": "string", "pattern": _SIZE_PATTERN}
    ]})),
]  # fmt: skip
_DURATION_STRING: Final = {"type": "string", "pattern": _DURATION_PATTERN}
Duration = Annotated[
    float,
    BeforeValidator(_amount(parse_duration)),
    WithJsonSchema(or_env({"anyOf": [{"type": "number", "minimum": 0}, _DURATION_STRING]})),
]
PositiveDuration = Annotated[
    float,
    BeforeValidator(_positive(parse_duration)),
    WithJsonSchema(
        or_env({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _DURATION_STRING]})
    ),
]
HeaderName = Annotated[str, BeforeValidator(header_name)]
HeaderNames = Annotated[
    tuple[str, ...],
    BeforeValidator(unique(listed(header_name, "header names"))),
    WithJsonSchema(STRINGS),
]

_STATUS_CODE: Final = or_env({"anyOf": [
    {"enum": list(STATUS_CODES)},  # what an editor completes
    {"type": "string", "pattern": rf"^\s*({'|'.join(map(_any_case, STATUS_CODES))})\s*$"},
]})  # fmt: skip
StatusCodes = Annotated[
    tuple[str, ...],
    BeforeValidator(_status_codes),
    WithJsonSchema({"anyOf": [
        *_STATUS_CODE["anyOf"], {"type": "array", "items": _STATUS_CODE, "minItems": 1}
    ]}),
]  # fmt: skip


class Section(BaseModel):
    """A mapping of the config file: frozen, every key known, null the same as no value.

    Unknown keys are named here, before pydantic validates the known ones, so that a misspelt
    key is reported rather than the "required" its absence causes. ``extra="forbid"`` still
    puts ``additionalProperties: false`` in the JSON Schema.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )
    # Keys in the product's contract (SPEC sections 7 and 10) that this version does not build:
    # refused loudly rather than silently running without what the user asked for.
    _unsupported: ClassVar[frozenset[str]] = frozenset()
    # The key a bare list stands for (``rate_limits: [...]`` means ``rate_limits: {rules: [...]}``).
    _bare_list: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, list) and cls._bare_list:
            return {cls._bare_list: data}
        if not isinstance(data, dict):
            return data  # pydantic says "expected a mapping"
        known = sorted(field.alias or name for name, field in cls.model_fields.items())
        for key in data:
            if key in cls._unsupported:
                raise Problem(NOT_SUPPORTED, key)
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted({*known, *cls._unsupported}))
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                raise Problem(f"unknown key ({hint})", key)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls._bare_list:
            whole = handler.resolve_ref_schema(schema)
            bare = {"type": "array", "items": whole["properties"][cls._bare_list]["items"]}
            mapping = dict(whole)
            whole.clear()
            whole.update(anyOf=[bare, mapping], description=mapping.pop("description", ""))
        return schema
