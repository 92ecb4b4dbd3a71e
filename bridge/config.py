"""The YAML configuration file -> frozen, validated settings (errors name the file and the key).

Anything a user can get wrong in the file surfaces as one `ConfigError` whose text is a single
line, ``<file>: <dotted key>: <what is wrong>``. `${NAME}` (or `${NAME:-default}`) anywhere in a
string value is read from the environment before validation; `$${` is a literal `${`.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import yaml

DEFAULT_LISTEN: Final[tuple[str, int]] = ("127.0.0.1", 8080)
DEFAULT_TIMEOUT: Final[float] = 30.0
DEFAULT_STORE: Final[str] = ".bridge/registry"  # relative to the config file's folder
DEFAULT_FORWARD_HEADERS: Final = ("authorization", "x-request-id", "traceparent", "tracestate")
NOT_SUPPORTED: Final[str] = "not supported by this version of Bridge"

_TOP_KEYS: Final = frozenset(
    {"listen", "admin", "protos", "upstreams", "services", "json", "forward_headers", "cors",
     "limits"}
)  # fmt: skip
# In the product's contract (SPEC sections 6 and 7) but not implemented yet: refuse them loudly
# rather than silently run without the auth or limits the user asked for.
_TOP_UNSUPPORTED: Final = frozenset(
    {"auth", "rate_limits", "cache", "fallbacks", "static", "aggregates"}
)
_UPSTREAM_KEYS: Final = frozenset({"targets", "timeout", "tls", "reflection"})
_UPSTREAM_UNSUPPORTED: Final = frozenset({"retries", "circuit_breaker", "health_check"})
_LIMIT_SIZES: Final = ("max_body", "ws_max_frame", "max_metadata", "admin_max_body")
_LIMIT_COUNTS: Final = ("ws_max_calls", "max_connections")
_LIMIT_DURATIONS: Final = ("ws_heartbeat", "header_timeout", "idle_timeout", "body_timeout")
_JSON_FLAGS: Final = ("emit_unpopulated", "use_proto_names", "discard_unknown")
_STORE_SCHEMES: Final = ("redis://", "rediss://")

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
_ENV_REF: Final = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_INNER: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_UPSTREAM_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_PORT: Final = re.compile(r"\[([^\]]+)\]:(\d{1,5})|([A-Za-z0-9_.-]+):(\d{1,5})")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_SERVICE_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")


class ConfigError(Exception):
    """A mistake in the configuration, told in one line: ``<file>: <key>: <problem>``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = " ".join(problem.split())
        super().__init__(f"{file}: {key}: {self.problem}" if key else f"{file}: {self.problem}")


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


@dataclass(frozen=True)
class JsonOptions:
    """How messages are written to and read from JSON (the `json` section)."""

    emit_unpopulated: bool = True
    use_proto_names: bool = False
    discard_unknown: bool = False


@dataclass(frozen=True)
class UpstreamSettings:
    """One named group of gRPC backends, load-balanced, and how calls to it are made."""

    name: str
    targets: tuple[str, ...]  # "host:port", "[v6]:port" or "unix:/path", as gRPC spells them
    # Seconds: the deadline when the client sends none, and the cap on one it sends.
    timeout: float = DEFAULT_TIMEOUT
    tls: bool = False
    reflection: bool = False


@dataclass(frozen=True)
class Limits:
    """Size and count limits on what clients may send (the `limits` section)."""

    max_body: int = 4 * 1024 * 1024
    ws_max_frame: int = 1024 * 1024
    ws_max_calls: int = 100
    max_metadata: int = 8 * 1024  # total bytes of request metadata
    admin_max_body: int = 16 * 1024 * 1024  # admin uploads (proto sources) may be larger
    ws_heartbeat: float = 20.0  # seconds between WebSocket pings; no pong in half that closes
    max_connections: int = 10_000  # open client connections; idle ones make room for new ones
    header_timeout: float = 10.0  # seconds to send a request head (from connect, or first byte)
    idle_timeout: float = 75.0  # seconds a keep-alive connection may wait for its next request
    # Seconds for a whole request body, from when the handler starts reading it: a total, not a
    # gap between reads, so a byte-a-second trickle cannot hold a handler (nginx's 60 s is a gap).
    body_timeout: float = 60.0


@dataclass(frozen=True)
class CorsSettings:
    """Which browser origins may call the bridge (the `cors` section); ``*`` allows any."""

    allow_origins: tuple[str, ...] = ()  # lowercased "scheme://host[:port]", or "*"


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one bridge process."""

    source: Path  # the config file, absolute
    listen: tuple[str, int] = DEFAULT_LISTEN
    admin_token: str | None = None  # None: the admin API is off
    protos_include: tuple[Path, ...] = ()
    protos_store: str = ""  # an absolute folder, or a redis:// URL; "" becomes the default
    upstreams: Mapping[str, UpstreamSettings] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    services: tuple[tuple[str, str], ...] = ()  # (service glob, upstream name), in file order
    json: JsonOptions = field(default_factory=JsonOptions)
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS  # lowercased
    cors: CorsSettings = field(default_factory=CorsSettings)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.protos_store:
            object.__setattr__(self, "protos_store", str(self.source.parent / DEFAULT_STORE))

    def upstream_for(self, service: str) -> str | None:
        """The upstream of the first `services` glob matching a fully-qualified service name."""
        for glob, upstream in self.services:
            if fnmatch.fnmatchcase(service, glob):
                return upstream
        return None


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """The settings in a YAML file; `env` (default `os.environ`) resolves `${NAME}` references."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(label, "", "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(label, "", "is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(label, "", f"not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(label, "", f"cannot read the config file ({e.strerror})") from None
    return _build(_parse_yaml(label, text), Path(os.path.abspath(path)), label, env)


def settings_from_dict(
    data: Mapping[str, Any] | None, source: Path, env: Mapping[str, str] | None = None
) -> Settings:
    """The settings in already-parsed YAML data, as if read from the file `source`."""
    return _build(data, Path(os.path.abspath(source)), str(source), env)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` and then overriding a merged key is legitimate
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float):
                continue  # unhashable or exotic keys are rejected later as unknown keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(label: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            problem = f"{problem} ({e.context})"
        raise ConfigError(label, where, problem) from None
    except yaml.YAMLError as e:
        raise ConfigError(label, "", f"invalid YAML: {e}") from None


@dataclass
class _Context:
    """What validation needs besides the data: the file's name and what `${...}` did."""

    file: str
    env: Mapping[str, str]
    substituted: set[str] = field(default_factory=set)  # keys whose value had a ${...}
    blanks: dict[str, str] = field(default_factory=dict)  # key -> why its ${...} gave nothing

    def fail(self, key: str, problem: str) -> NoReturn:
        blank = self.blanks.get(key)
        if blank and blank not in problem:
            problem = f"{problem} ({blank})"  # the likely cause of a bad value
        raise ConfigError(self.file, key, problem)


def _key(parent: str, child: object) -> str:
    return f"{parent}.{child}" if parent else str(child)


def _describe(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "nothing"}[value]
    if isinstance(value, str | int | float):
        return repr(value)
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return f"{type(value).__name__} {value}"  # e.g. a YAML date


def _expand(ctx: _Context, key: str, value: Any) -> Any:
    """A copy of the YAML data with every `${NAME}` in a string value read from the environment."""
    if isinstance(value, dict):
        return {k: _expand(ctx, _key(key, k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(ctx, f"{key}[{i}]", v) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        escaped, inner, closed = m.groups()
        if escaped:
            return m.group(0)[1:]  # `$${X}` is the literal text `${X}`
        ref = _ENV_INNER.fullmatch(inner)
        if not closed or not ref:
            ctx.fail(key, f"{m.group(0)!r} is not an environment reference (use ${{NAME}})")
        found = ctx.env.get(ref.group(1), "")
        if not found and ref.group(2) is None:
            state = "is set but empty" if ref.group(1) in ctx.env else "is not set"
            missing.append(f"environment variable {ref.group(1)} {state}")
        return found or ref.group(2) or ""

    result = _ENV_REF.sub(replace, value)
    ctx.substituted.add(key)
    if missing:
        ctx.blanks[key] = ", ".join(missing)
    return result


def _section(
    ctx: _Context, key: str, value: Any, known: frozenset[str] | tuple[str, ...] | None,
    unsupported: frozenset[str] = frozenset(),
) -> dict[Any, Any]:  # fmt: skip
    """A mapping (null is an empty one) whose keys are all among `known` (None: any key)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(key, f"expected a mapping, got {_describe(value)}")
    if known is None:
        return value
    known = frozenset(known)
    for k in value:
        if k in unsupported:
            ctx.fail(_key(key, k), NOT_SUPPORTED)
        if k not in known:
            close = difflib.get_close_matches(str(k), sorted(known | unsupported), n=1)
            hint = f"known keys: {', '.join(sorted(known))}"
            hint = f"did you mean {close[0]!r}?" if close else hint
            ctx.fail(_key(key, k), f"unknown key ({hint})")
    return value


def _text(ctx: _Context, key: str, value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"expected {what}, got {_describe(value)}")
    if not value.strip():
        ctx.fail(key, f"is empty: {ctx.blanks[key]}" if key in ctx.blanks else "must not be empty")
    return value.strip()


def _texts(
    ctx: _Context, key: str, value: Any, what: str, plural: str
) -> Iterator[tuple[str, str]]:
    """The (dotted key, string) items of a list of strings; one string is a list of one."""
    if value is None:
        return
    if isinstance(value, str):
        yield key, _text(ctx, key, value, what)
        return
    if not isinstance(value, list):
        ctx.fail(key, f"expected a list of {plural}, got {_describe(value)}")
    for i, item in enumerate(value):
        yield f"{key}[{i}]", _text(ctx, f"{key}[{i}]", item, what)


def _bool(ctx: _Context, key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if key in ctx.substituted and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        ctx.fail(key, f"expected true or false, got {_describe(value)}")
    return value


def _amount(ctx: _Context, key: str, value: Any, default: Any, parse: Callable[[Any], Any]) -> Any:
    """A duration, size or count above zero, read with `parse` (null means `default`)."""
    if value is None:
        return default
    try:
        amount = parse(_text(ctx, key, value, "a string") if isinstance(value, str) else value)
    except ValueError as e:
        ctx.fail(key, str(e))
    if amount <= 0:
        ctx.fail(key, f"must be more than zero, got {_describe(value)}")
    return amount


def _count(value: str | int) -> int:
    """A whole number, also from a string of digits (as `${NAME}` gives)."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {_describe(value)}")
    return value


def _host_port(text: str, min_port: int) -> tuple[str, int]:
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


def _listen(ctx: _Context, value: Any) -> tuple[str, int]:
    if value is None:
        return DEFAULT_LISTEN
    text = _text(ctx, "listen", value, "host:port")
    try:
        return _host_port(text, min_port=0)
    except ValueError:
        ctx.fail("listen", f"{text!r} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)")


def _target(ctx: _Context, key: str, text: str) -> str:
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text
    try:
        _host_port(text, min_port=1)
    except ValueError:
        ctx.fail(key, f"{text!r} is not host:port with a port from 1 to 65535, nor unix:/path")
    return text


def _upstream(ctx: _Context, name: Any, value: Any) -> UpstreamSettings:
    key = _key("upstreams", name)
    if not isinstance(name, str) or not _UPSTREAM_NAME.fullmatch(name):
        ctx.fail(key, "an upstream name may only use letters, digits, '_', '.' and '-'")
    data = _section(ctx, key, value, _UPSTREAM_KEYS, _UPSTREAM_UNSUPPORTED)
    listed = data.get("targets")
    items = _texts(ctx, f"{key}.targets", listed, "host:port", "host:port")
    targets = tuple(_target(ctx, k, t) for k, t in items)
    if not targets:
        ctx.fail(f"{key}.targets", "required: list at least one host:port")
    return UpstreamSettings(
        name=name,
        targets=targets,
        timeout=_amount(
            ctx, f"{key}.timeout", data.get("timeout"), DEFAULT_TIMEOUT, parse_duration
        ),
        tls=_bool(ctx, f"{key}.tls", data.get("tls"), False),
        reflection=_bool(ctx, f"{key}.reflection", data.get("reflection"), False),
    )


def _services(
    ctx: _Context, value: Any, upstreams: Mapping[str, UpstreamSettings]
) -> tuple[tuple[str, str], ...]:
    routes = []
    for glob, upstream in _section(ctx, "services", value, None).items():
        key = _key("services", glob)
        if not isinstance(glob, str) or not _SERVICE_GLOB.fullmatch(glob):
            ctx.fail(key, "expected a fully-qualified service name or glob, like demo.users.v1.*")
        name = _text(ctx, key, upstream, "an upstream name")
        if name not in upstreams:
            close = difflib.get_close_matches(name, list(upstreams), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = f"known upstreams: {', '.join(upstreams)}" if upstreams else "none are defined"
            ctx.fail(key, f"unknown upstream {name!r} for {glob!r} ({hint}{known})")
        routes.append((glob, name))
    return tuple(routes)


def _protos(ctx: _Context, value: Any, folder: Path) -> tuple[tuple[Path, ...], str]:
    data = _section(ctx, "protos", value, ("include", "store"))
    items = _texts(ctx, "protos.include", data.get("include"), "a path", "paths")
    paths = tuple(Path(os.path.normpath(folder / p)) for _, p in items)
    if data.get("store") is None:
        return paths, str(folder / DEFAULT_STORE)
    store = _text(ctx, "protos.store", data["store"], "a folder or a redis:// URL")
    if store.startswith(_STORE_SCHEMES):
        return paths, store
    if "://" in store:
        ctx.fail("protos.store", f"{store!r}: only a folder or a redis:// URL is supported")
    return paths, os.path.normpath(folder / store)


def _origin(ctx: _Context, key: str, text: str) -> str:
    origin = text.lower()  # browsers send the Origin header lowercased
    parts = urlsplit(origin)
    if origin != "*" and (not parts.netloc or origin != f"{parts.scheme}://{parts.netloc}"):
        ctx.fail(key, f"{text!r} is not an origin: use scheme://host[:port] with no path, or '*'")
    return origin


def _cors(ctx: _Context, value: Any) -> CorsSettings:
    origins = _section(ctx, "cors", value, ("allow_origins",)).get("allow_origins")
    items = _texts(ctx, "cors.allow_origins", origins, "an origin", "origins")
    return CorsSettings(tuple(_origin(ctx, k, o) for k, o in items))


def _headers(ctx: _Context, value: Any) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_FORWARD_HEADERS
    names: dict[str, None] = {}  # an ordered set
    for key, name in _texts(ctx, "forward_headers", value, "a header name", "header names"):
        if not _HEADER_NAME.fullmatch(name):
            ctx.fail(key, f"{name!r} is not a valid HTTP header name")
        names[name.lower()] = None
    return tuple(names)


def _limits(ctx: _Context, value: Any) -> Limits:
    kinds = ((_LIMIT_SIZES, parse_size), (_LIMIT_COUNTS, _count),
             (_LIMIT_DURATIONS, _positive_duration))  # fmt: skip
    data = _section(ctx, "limits", value, tuple(n for names, _ in kinds for n in names))
    d = Limits()
    return Limits(**{
        n: _amount(ctx, f"limits.{n}", data.get(n), getattr(d, n), parse)
        for names, parse in kinds for n in names
    })  # fmt: skip


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be above zero")
    return seconds


def _json(ctx: _Context, value: Any) -> JsonOptions:
    data = _section(ctx, "json", value, _JSON_FLAGS)
    d = JsonOptions()
    return JsonOptions(
        **{n: _bool(ctx, f"json.{n}", data.get(n), getattr(d, n)) for n in _JSON_FLAGS}
    )


def _admin_token(ctx: _Context, value: Any) -> str | None:
    token = _section(ctx, "admin", value, ("token",)).get("token")
    if token is None or (isinstance(token, str) and not token.strip()):
        return None  # no token, or an unset ${VAR}: the admin API is off
    return _text(ctx, "admin.token", token)


def _build(data: Any, source: Path, label: str, env: Mapping[str, str] | None) -> Settings:
    """Settings from parsed YAML data; upstreams come first because `services` names them."""
    ctx = _Context(label, os.environ if env is None else env)
    if data is not None and not isinstance(data, Mapping):
        ctx.fail("", f"the top level must be a mapping of settings, got {_describe(data)}")
    root = _section(ctx, "", _expand(ctx, "", dict(data or {})), _TOP_KEYS, _TOP_UNSUPPORTED)
    upstreams = {
        name: _upstream(ctx, name, value)
        for name, value in _section(ctx, "upstreams", root.get("upstreams"), None).items()
    }
    include, store = _protos(ctx, root.get("protos"), source.parent)
    return Settings(
        source=source,
        listen=_listen(ctx, root.get("listen")),
        admin_token=_admin_token(ctx, root.get("admin")),
        protos_include=include,
        protos_store=store,
        upstreams=MappingProxyType(upstreams),
        services=_services(ctx, root.get("services"), upstreams),
        json=_json(ctx, root.get("json")),
        forward_headers=_headers(ctx, root.get("forward_headers")),
        cors=_cors(ctx, root.get("cors")),
        limits=_limits(ctx, root.get("limits")),
    )
