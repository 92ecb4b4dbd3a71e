"""The whole config file (`ConfigFile`, the JSON Schema's root) and the `Settings` the code reads.

The two differ in shape only: the file groups keys as a person writes them (``admin.token``,
``protos.include``, services as a mapping), the settings as the code uses them (flat, upstreams
named, services an ordered tuple, relative paths already resolved).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, ConfigDict, WithJsonSchema
from pydantic import model_validator as checks

from bridge.config.composition import Aggregate, AggregateSection, StaticRoute, check_routes
from bridge.config.policies import (
    AuthSettings,
    CacheSettings,
    CorsSettings,
    FallbackRule,
    Network,
    Networks,
    RateLimitRule,
    RateLimitSettings,
)
from bridge.config.sections import (
    DEFAULT_STORE,
    AdminSection,
    JsonOptions,
    Limits,
    ProtosSection,
    UpstreamSection,
    UpstreamSettings,
)
from bridge.config.values import HeaderNames, Problem, Section, host_port, text, text_of, written

DEFAULT_LISTEN: Final[tuple[str, int]] = ("127.0.0.1", 8080)
DEFAULT_FORWARD_HEADERS: Final = ("authorization", "x-request-id", "traceparent", "tracestate")
SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

_UPSTREAM_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_SERVICE_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")


def _listen(value: Any) -> tuple[str, int]:
    where = text(value, "host:port")
    try:
        return host_port(where, min_port=0)
    except ValueError:
        raise Problem(f"{where!r} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)") from None


def _upstream_name(value: Any) -> str:
    if not isinstance(value, str) or not _UPSTREAM_NAME.fullmatch(value):
        raise Problem("an upstream name may only use letters, digits, '_', '.' and '-'")
    return value


def _service_glob(value: Any) -> str:
    if not isinstance(value, str) or not _SERVICE_GLOB.fullmatch(value):
        raise Problem("expected a fully-qualified service name or glob, like demo.users.v1.*")
    return value


class ConfigFile(Section):
    """The configuration file of one bridge: one YAML mapping.

    Durations are `250ms`, `5s`, `2m`, `1h` (or seconds); sizes `512KiB`, `4MiB`, `1MB`.
    `${NAME}` in a string is read from the environment. Relative paths are resolved against
    the folder of the config file.
    """

    model_config = ConfigDict(title="Bridge configuration")

    listen: Annotated[
        tuple[str, int], BeforeValidator(_listen), WithJsonSchema({"type": "string"})
    ] = written("{}:{}".format(*DEFAULT_LISTEN))
    """Address to serve HTTP on, `host:port` or `[v6addr]:port` (`--listen` overrides it)."""
    admin: AdminSection = written({})
    """The admin API."""
    protos: ProtosSection = written({})
    """Proto sources and the registration store."""
    upstreams: dict[Annotated[str, BeforeValidator(_upstream_name)], UpstreamSection] = written({})
    """Named groups of gRPC backends."""
    services: dict[
        Annotated[str, BeforeValidator(_service_glob)],
        Annotated[str, BeforeValidator(text_of("an upstream name"))],
    ] = written({})
    """Fully-qualified service name (glob allowed) -> upstream; the first match wins, in file
    order."""
    json_options: JsonOptions = written({}, alias="json")
    """How messages are written to and read from JSON."""
    forward_headers: HeaderNames = DEFAULT_FORWARD_HEADERS
    """Request headers forwarded as metadata without the `Grpc-Metadata-` prefix."""
    cors: CorsSettings = written({})
    """Browser origins and CORS preflights."""
    limits: Limits = written({})
    """Limits on what clients may send."""
    auth: AuthSettings | None = None
    """Authentication: API keys, JWTs and the rules of which method needs what."""
    rate_limits: RateLimitSettings = written({})
    """Token-bucket rate limits by method glob."""
    trusted_proxies: Networks = ()
    """Addresses or networks (CIDR) of proxies whose `X-Forwarded-For` is believed; from any
    other peer it is ignored, so the `ip` rate-limit key cannot be forged."""
    cache: CacheSettings = written({})
    """Answers of unary methods kept and served again, by method glob."""
    fallbacks: tuple[FallbackRule, ...] = ()
    """Default answers for methods whose backend fails with the listed codes; the first rule
    whose glob matches a method applies."""
    aggregates: tuple[AggregateSection, ...] = ()
    """Routes answered by several gRPC calls at once, as one JSON object keyed by call name."""
    static: tuple[StaticRoute, ...] = ()
    """Routes the bridge answers itself with a fixed status, JSON body and headers."""

    @checks(mode="after")
    def _config_routes_differ(self) -> ConfigFile:
        check_routes(self.aggregates, self.static)
        return self

    @checks(mode="after")
    def _services_name_upstreams(self) -> ConfigFile:
        for glob, name in self.services.items():
            if name not in self.upstreams:
                problem = f"unknown upstream {name!r} for {glob!r} ({_known(name, self.upstreams)})"
                raise Problem(problem, "services", glob)
        return self


def _known(name: str, upstreams: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(upstreams), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return hint + (f"known upstreams: {', '.join(upstreams)}" if upstreams else "none are defined")


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one bridge process."""

    source: Path  # the config file, absolute
    listen: tuple[str, int] = DEFAULT_LISTEN
    admin_token: str | None = field(default=None, repr=False)  # None: the admin API is off
    protos_include: tuple[Path, ...] = ()
    protos_store: str = ""  # an absolute folder or a Redis URL; "" becomes the default folder
    upstreams: Mapping[str, UpstreamSettings] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    services: tuple[tuple[str, str], ...] = ()  # (service glob, upstream name), in file order
    json: JsonOptions = field(default_factory=JsonOptions)
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS  # lowercased
    cors: CorsSettings = field(default_factory=CorsSettings)
    limits: Limits = field(default_factory=Limits)
    auth: AuthSettings | None = None  # None: no `auth` section, every method is open
    rate_limits: tuple[RateLimitRule, ...] = ()
    rate_limits_store: str = "memory"  # or a Redis URL (SPEC 10)
    trusted_proxies: tuple[Network, ...] = ()
    cache: CacheSettings = field(default_factory=CacheSettings)
    fallbacks: tuple[FallbackRule, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    static: tuple[StaticRoute, ...] = ()

    def __post_init__(self) -> None:
        if not self.protos_store:
            object.__setattr__(self, "protos_store", str(self.source.parent / DEFAULT_STORE))

    @classmethod
    def of(cls, file: ConfigFile, source: Path) -> Settings:
        """The settings a validated config file read from `source` (absolute) stands for."""
        return cls(
            source=source,
            listen=file.listen,
            admin_token=file.admin.token,
            protos_include=file.protos.include,
            protos_store=file.protos.store,
            upstreams=MappingProxyType(
                {
                    name: UpstreamSettings(name=name, **dict(upstream))
                    for name, upstream in file.upstreams.items()
                }
            ),
            services=tuple(file.services.items()),
            json=file.json_options,
            forward_headers=file.forward_headers,
            cors=file.cors,
            limits=file.limits,
            auth=file.auth,
            rate_limits=file.rate_limits.rules,
            rate_limits_store=file.rate_limits.store,
            trusted_proxies=file.trusted_proxies,
            cache=file.cache,
            fallbacks=file.fallbacks,
            aggregates=tuple(a.plan(i) for i, a in enumerate(file.aggregates)),
            static=file.static,
        )

    def upstream_for(self, service: str) -> str | None:
        """The upstream of the first `services` glob matching a fully-qualified service name."""
        for glob, upstream in self.services:
            if fnmatch.fnmatchcase(service, glob):
                return upstream
        return None


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, as ``bridge schema`` prints it."""
    schema = ConfigFile.model_json_schema(by_alias=True)
    return {"$schema": SCHEMA_DIALECT, **_unwrapped(schema)}


def _unwrapped(schema: Any) -> Any:
    """The schema with its descriptions' lines (docstrings wrapped at 100) joined into one."""
    if isinstance(schema, list):
        return [_unwrapped(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _paragraphs(value) if key == "description" else _unwrapped(value)
        for key, value in schema.items()
    }


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
