"""The config file's sections about serving: protos, upstreams, JSON and limits.

Their field docstrings are the config reference: they become the descriptions of the JSON
Schema that ``bridge schema`` prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, WithJsonSchema

from bridge.config.values import (
    REDIS_SCHEMES,
    STRINGS,
    Bool,
    Count,
    PositiveDuration,
    Problem,
    Section,
    Size,
    StatusCodes,
    host_port,
    kind,
    listed,
    redis_url,
    text,
    written,
)

DEFAULT_TIMEOUT: Final[float] = 30.0
DEFAULT_STORE: Final[str] = ".bridge/registry"  # relative to the config file's folder


def resolved(path: Path, info: ValidationInfo) -> Path:
    """A path made absolute against the config file's folder (given as the ``folder`` context
    of validation; the current folder when settings are built in code)."""
    folder = (info.context or {}).get("folder") or os.getcwd()
    return Path(os.path.normpath(Path(folder) / path))


def _path(value: Any) -> Path:
    return value if isinstance(value, Path) else Path(text(value, "a path"))


def _resolved_all(paths: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
    return tuple(resolved(p, info) for p in paths)


def _store_place(store: str, info: ValidationInfo) -> str:
    """A folder made absolute against the config's folder; a Redis URL as it is."""
    return store if store.startswith(REDIS_SCHEMES) else str(resolved(Path(store), info))


def _store_folder(value: Any) -> str:
    store = text(value, "a folder")
    if store.startswith(REDIS_SCHEMES):
        return redis_url(store)
    if "://" in store:
        raise Problem(f"{store!r}: use a folder, or a Redis URL (redis://host:port/db)")
    return store


def _admin_token(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # no token, or an unset ${VAR}: the admin API is off
    if not isinstance(value, str):
        raise Problem(f"expected a string, got {kind(value)}")
    return value.strip()


def _target(value: Any) -> str:
    target = text(value, "host:port")
    if target.startswith("unix:") and len(target) > len("unix:"):
        return target
    try:
        host_port(target, min_port=1)
    except ValueError:
        raise Problem(
            f"{target!r} is not host:port with a port from 1 to 65535, nor unix:/path"
        ) from None
    return target


def _targets(value: Any) -> tuple[str, ...]:
    targets = listed(_target, "host:port")(value)
    if not targets:
        raise Problem("required: list at least one host:port")
    return targets


Paths = Annotated[
    tuple[Path, ...],
    BeforeValidator(listed(_path, "paths")),
    AfterValidator(_resolved_all),
    WithJsonSchema(STRINGS),
]
FilePath = Annotated[
    Path,
    BeforeValidator(_path),
    AfterValidator(resolved),
    WithJsonSchema({"type": "string"}),
]
Targets = Annotated[tuple[str, ...], BeforeValidator(_targets), WithJsonSchema(STRINGS)]


class AdminSection(Section):
    """The admin API: proto registrations at run time."""

    token: Annotated[str | None, BeforeValidator(_admin_token)] = Field(None, repr=False)
    """Bearer token of the admin API (`Authorization: Bearer <token>`); unset or empty turns
    the admin API off."""


class ProtosSection(Section):
    """Where the .proto sources come from and where runtime registrations persist."""

    include: Paths = ()
    """.proto files or folders compiled at start; a folder is the import root of the files
    under it."""
    store: Annotated[
        str,
        BeforeValidator(_store_folder),
        AfterValidator(_store_place),
    ] = DEFAULT_STORE
    """Folder where runtime registrations persist, or a Redis URL (`redis://host:port/db`,
    `rediss://` for TLS) that several instances share."""


class RetrySettings(Section):
    """Retries of calls that are safe to repeat (a `get` rule, or an `idempotency_level` of
    `NO_SIDE_EFFECTS` or `IDEMPOTENT`), within the call's deadline."""

    attempts: Count = 3
    """Tries in all, the first included."""
    on: StatusCodes = ("UNAVAILABLE",)
    """The gRPC status codes (names in any case, like UNAVAILABLE; not OK) that make a safe
    call try again."""
    backoff: PositiveDuration = written("50ms")
    """Wait before the first retry, doubled for each further one, each jittered by +-50%."""


class BreakerSettings(Section):
    """A circuit breaker per target: it counts UNAVAILABLE, DEADLINE_EXCEEDED and connect
    failures."""

    failures: Count = 5
    """Consecutive failures that open the circuit: the target leaves the rotation."""
    reset: PositiveDuration = written("10s")
    """How long an open circuit waits before one trial call closes or reopens it."""


class UpstreamSection(Section):
    """One named group of gRPC backends, load-balanced, and how calls to it are made."""

    targets: Targets
    """`host:port`, `[v6addr]:port` or `unix:/path` of each backend; several are used
    round-robin (healthy, circuit-closed ones only), one long-lived channel each."""
    timeout: PositiveDuration = DEFAULT_TIMEOUT
    """Deadline of unary and client-streaming calls when the client sends none, and the cap on
    the `grpc-timeout` it sends."""
    tls: Bool = False
    """TLS to the backends, with the system roots."""
    reflection: Bool = False
    """Discover services through gRPC server reflection."""
    retries: RetrySettings | None = None
    """Retries of safe calls on the listed codes; unset, only calls that never reached a
    backend are tried again (on another target)."""
    circuit_breaker: BreakerSettings | None = None
    """A circuit breaker per target; unset, targets are never taken out for failing calls."""
    health_check: Bool = False
    """Watch each target with grpc.health.v1 (`Watch`); one not SERVING leaves the rotation
    until it is again."""


class UpstreamSettings(UpstreamSection):
    """An upstream as the code uses it: a section of `upstreams`, with its name."""

    name: str
    """The key of `upstreams` (or the registration) that names it."""


class JsonOptions(Section):
    """How messages are written to and read from JSON (the `json` section)."""

    emit_unpopulated: Bool = True
    """Zero-valued fields are written out and unset message fields are `null`, as
    grpc-gateway v2's default marshaler does."""
    use_proto_names: Bool = False
    """`snake_case` field names out instead of `lowerCamelCase`; both are always accepted in."""
    discard_unknown: Bool = False
    """Unknown request fields are ignored instead of a 400."""


class Limits(Section):
    """Size, count and time limits on what clients may send (the `limits` section)."""

    max_body: Size = written("4MiB")
    """Larger request bodies are a 413."""
    ws_max_frame: Size = written("1MiB")
    """A larger WebSocket frame closes the socket with 1009."""
    ws_max_calls: Count = 100
    """Open calls per WebSocket; one more is answered RESOURCE_EXHAUSTED."""
    max_metadata: Size = written("8KiB")
    """Total bytes of request metadata; more is a 400 before any backend call."""
    admin_max_body: Size = written("16MiB")
    """Admin API request bodies (proto sources may be larger than calls)."""
    ws_heartbeat: PositiveDuration = written("20s")
    """WebSocket ping interval; no pong within half of it drops the socket."""
    max_connections: Count = 10_000
    """Open client connections; at the limit the one that has waited longest, idle or without
    a complete head, is closed to make room."""
    header_timeout: PositiveDuration = written("10s")
    """Time to send a request head: from connect for the first request, from its first byte
    for later ones on a kept-alive connection; then 408."""
    idle_timeout: PositiveDuration = written("75s")
    """A keep-alive connection with no request for this long is closed."""
    body_timeout: PositiveDuration = written("60s")
    """The whole request body must arrive within this, from when the handler starts reading
    it: a total, not a gap between reads, so a byte-a-second trickle cannot hold a handler."""
    send_timeout: PositiveDuration = written("60s")
    """A client that takes none of the output waiting for it (a REST stream, WebSocket frames,
    any answer) for this long is disconnected, and its calls are cancelled."""
