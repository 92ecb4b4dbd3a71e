"""The config file's gateway policies (SPEC sections 6 and 7): auth, rate limits, proxies, CORS,
the response cache and fallbacks.

Only their shape is checked here, with the cross-checks a file can fail on its own (a rule
that requires a kind of credential nobody configured, an HS* algorithm without a secret);
`bridge.policy` builds the steps that enforce them. Keys and secrets never appear in a repr
or an error message.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from jwt.algorithms import get_default_algorithms, requires_cryptography
from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema, field_validator
from pydantic import model_validator as checks

from bridge.config.sections import FilePath
from bridge.config.values import (
    REDIS_SCHEMES,
    STRINGS,
    Bool,
    Count,
    Duration,
    HeaderName,
    HeaderNames,
    PositiveDuration,
    Problem,
    Section,
    Size,
    StatusCodes,
    Text,
    describe,
    header_name,
    kind,
    listed,
    or_env,
    redis_url,
    text,
    unique,
    written,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Require = Literal["none", "api_key", "jwt", "any"]

_METHOD_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+(?:/[A-Za-z0-9_.*?\[\]!-]+)?")
_SCOPE: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 section 3.3 scope-token
_KEY: Final = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header value can carry
_SUBJECT: Final = re.compile(r"[\x20-\x7e]+")  # printable ASCII: what gRPC metadata can carry
_RATE: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*/\s*(s|m|h)")
_PER: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_HMAC_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 section 3.2


def _origin(value: Any) -> str:
    origin = text(value, "an origin").lower()  # browsers send the Origin header lowercased
    parts = urlsplit(origin)
    if origin != "*" and (not parts.netloc or origin != f"{parts.scheme}://{parts.netloc}"):
        raise Problem(
            f"{value.strip()!r} is not an origin: use scheme://host[:port] with no path, or '*'"
        )
    return origin


class CorsSettings(Section):
    """Which browser origins may call the bridge, and what their preflights are answered."""

    allow_origins: Annotated[
        tuple[str, ...], BeforeValidator(listed(_origin, "origins")), WithJsonSchema(STRINGS)
    ] = ()
    """Origins (`scheme://host[:port]`) allowed to call REST routes and open `/ws`; `*` allows
    any. The bridge's own origin always may open `/ws`."""
    allow_headers: HeaderNames | None = None
    """Request headers a preflight allows; unset, it allows the headers it was asked for."""
    expose_headers: HeaderNames | None = None
    """Response headers a browser script may read; unset, those the bridge sends
    (`x-request-id`, `Grpc-Metadata-*`/`Grpc-Trailer-*`, `RateLimit-*`, `Retry-After`,
    `X-Cache`, `X-Bridge-Fallback`)."""
    max_age: Duration = written("10m")
    """How long a browser may cache a preflight's answer."""
    allow_credentials: Bool = False
    """Let browsers send cookies and HTTP authentication (`Access-Control-Allow-Credentials`)."""

    @checks(mode="after")
    def _no_credentials_for_any_origin(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise Problem(
                "cannot be true while allow_origins holds '*' (browsers refuse credentials "
                "for any origin): list the origins instead",
                "allow_credentials",
            )
        return self


class ApiKey(Section):
    """One configured API key and the subject it proves."""

    key: str = Field(repr=False)
    subject: str | None = None
    """Sent to the backend as `x-bridge-subject`; unset, ``apikey-`` and the first 8 hex digits
    of the key's SHA-256."""


def _api_key(entry: str, i: int) -> ApiKey:
    """``key`` or ``subject=key``, split at the first ``=``."""
    before, equals, after = (part.strip() for part in entry.partition("="))
    subject, key = (before, after) if equals else (None, before)
    if subject == "":
        raise Problem("the subject before '=' is empty", i)
    if not key:
        raise Problem("the key is empty", i)
    if not _KEY.fullmatch(key):
        raise Problem("the key may only hold visible ASCII characters (it is sent in a header)", i)
    if subject is not None and not _SUBJECT.fullmatch(subject):
        raise Problem("the subject may only hold printable ASCII (it is sent as metadata)", i)
    return ApiKey(key=key, subject=subject)


def _api_keys(value: Any) -> tuple[ApiKey, ...]:
    """Keys from a comma-separated string (as ``${BRIDGE_API_KEYS}`` gives) or a list; blank
    entries are skipped, a key listed twice is an error that names both entries."""
    if isinstance(value, str):
        entries: list[Any] = text(value, "keys").split(",")
    elif isinstance(value, list | tuple):
        entries = list(value)
    else:
        raise Problem(f"expected a comma-separated string or a list of keys, got {kind(value)}")
    first: dict[str, int] = {}  # key -> the entry that listed it
    keys = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str) and not entry.strip():
            continue
        if isinstance(entry, str):
            entry = _api_key(entry, i)
        elif not isinstance(entry, ApiKey):  # ApiKey: settings built in code
            raise Problem(f"expected 'key' or 'subject=key', got {kind(entry)}", i)
        if entry.key in first:
            raise Problem(f"the same key as keys[{first[entry.key]}]: list each key once", i)
        first[entry.key] = i
        keys.append(entry)
    if not keys:
        raise Problem("required: list at least one key ('key' or 'subject=key')")
    return tuple(keys)


class ApiKeySettings(Section):
    """API keys, sent by clients in a header (`auth.api_keys`)."""

    header: HeaderName = "x-api-key"
    """The request header that carries the key."""
    keys: Annotated[tuple[ApiKey, ...], BeforeValidator(_api_keys), WithJsonSchema(STRINGS)]
    """The keys: a comma-separated string (as `${BRIDGE_API_KEYS}` gives) or a list; each is
    `key` or `subject=key` (split at the first `=`, so a key holding `=` needs a subject)."""


def _algorithm(value: Any) -> str:
    name = text(value, "an algorithm name")
    if name.lower() == "none":
        raise Problem("'none' is refused: a token without a signature proves nothing")
    known = sorted(set(get_default_algorithms()) - {"none"})
    if name in known:
        return name
    if name in requires_cryptography:
        raise Problem(f"{name!r} needs the cryptography package, which is not installed")
    close = [k for k in known if k.lower() == name.lower()]
    hint = f"did you mean {close[0]!r}?" if close else f"supported: {', '.join(known)}"
    raise Problem(f"{name!r} is not an algorithm PyJWT supports ({hint})")


def _algorithms(value: Any) -> tuple[str, ...]:
    algorithms = unique(listed(_algorithm, "algorithms"))(value)
    if not algorithms:
        raise Problem("required: list at least one algorithm, like RS256 or HS256")
    return algorithms


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise Problem(f"expected a string, got {kind(value)}")
    return text(value)


class JwtSettings(Section):
    """JSON Web Tokens, sent as `Authorization: Bearer <token>` (`auth.jwt`)."""

    issuer: Text | None = None
    """The `iss` every token must carry; unset, any issuer."""
    audience: Annotated[
        tuple[str, ...], BeforeValidator(listed(text, "audiences")), WithJsonSchema(STRINGS)
    ] = ()
    """The `aud` a token must hold one of; unset, tokens are not checked for an audience."""
    algorithms: Annotated[tuple[str, ...], BeforeValidator(_algorithms), WithJsonSchema(STRINGS)]
    """The algorithms a token may be signed with: HS256/HS384/HS512 verify with `secret`, the
    asymmetric ones (RS*, PS*, ES*, EdDSA) with the keys of `jwks_file`. `none` is refused."""
    secret: Annotated[str, BeforeValidator(_secret)] | None = Field(None, repr=False)
    """The HMAC secret of the HS* algorithms, at least as many bytes as the hash (32 for
    HS256); use `${NAME}` rather than writing it in the file."""
    jwks_file: FilePath | None = None
    """A JSON Web Key Set file holding the public keys of the asymmetric algorithms, chosen by
    `kid`; re-read when it changes."""
    leeway: Duration = written("30s")
    """Clock skew allowed when checking `exp` and `nbf`."""

    @checks(mode="after")
    def _keys_for_algorithms(self) -> JwtSettings:
        if self.secret is None and self.jwks_file is None:
            raise Problem("needs a secret (HS* algorithms) or a jwks_file (RS*, PS*, ES*, EdDSA)")
        for i, name in enumerate(self.algorithms):
            hmac = name in _HMAC_BYTES
            if hmac and self.secret is None:
                raise Problem(f"{name} verifies with a shared secret: set secret", "algorithms", i)
            if not hmac and self.jwks_file is None:
                raise Problem(f"{name} verifies with public keys: set jwks_file", "algorithms", i)
            size = len(self.secret.encode()) if self.secret is not None else 0
            if hmac and size < _HMAC_BYTES[name]:
                raise Problem(
                    f"is {size} bytes long; {name} needs at least {_HMAC_BYTES[name]} "
                    "(RFC 7518 section 3.2)",
                    "secret",
                )
        if self.secret is not None and not any(a in _HMAC_BYTES for a in self.algorithms):
            raise Problem("is set but no HS* algorithm is listed to use it", "secret")
        if self.jwks_file is not None and all(a in _HMAC_BYTES for a in self.algorithms):
            raise Problem("is set but no asymmetric algorithm is listed to use it", "jwks_file")
        return self


def _method_glob(value: Any) -> str:
    glob = text(value, "a method glob")
    if not _METHOD_GLOB.fullmatch(glob):
        raise Problem(
            f"{glob!r} is not a method glob (like demo.users.v1.UserService/Get* or demo.admin.*)"
        )
    return glob


def _scope(value: Any) -> str:
    scope = text(value, "a scope")
    if not _SCOPE.fullmatch(scope):
        raise Problem(f"{scope!r} is not a scope (no spaces, quotes or backslashes)")
    return scope


MethodGlob = Annotated[str, BeforeValidator(_method_glob)]


class AuthRule(Section):
    """Which credential the methods matching a glob need; the first matching rule wins."""

    match: MethodGlob
    """A method glob (fnmatch), like `demo.users.v1.UserService/Get*` or `demo.admin.*`."""
    require: Require
    """`none`, `api_key`, `jwt`, or `any` (an API key or a JWT)."""
    scopes: Annotated[
        tuple[str, ...], BeforeValidator(unique(listed(_scope, "scopes"))), WithJsonSchema(STRINGS)
    ] = ()
    """Scopes the JWT must hold, all of them (from its `scope` or `scp` claim); a valid token
    without them is a 403."""

    @checks(mode="after")
    def _scopes_need_a_token(self) -> AuthRule:
        if self.scopes and self.require in ("none", "api_key"):
            carrier = "an API key" if self.require == "api_key" else "a rule requiring nothing"
            raise Problem(
                f"{carrier} checks no scopes: use require: jwt or any for a rule with scopes",
                "scopes",
            )
        return self


class AuthSettings(Section):
    """Who may call which method: API keys, JWTs, and rules by method glob."""

    api_keys: ApiKeySettings | None = None
    """API keys from a request header."""
    jwt: JwtSettings | None = None
    """JSON Web Tokens from `Authorization: Bearer`."""
    rules: tuple[AuthRule, ...] = ()
    """First match wins; a method that no rule matches needs a credential of either kind (end
    with `{match: "*", require: none}` to open the rest)."""

    @checks(mode="after")
    def _rules_can_pass(self) -> AuthSettings:
        kinds = {"api_key": self.api_keys is not None, "jwt": self.jwt is not None}
        for i, rule in enumerate(self.rules):
            if rule.require in kinds and not kinds[rule.require]:
                where = "auth.api_keys" if rule.require == "api_key" else "auth.jwt"
                raise Problem(f"{rule.require} needs {where}, which is not set", "rules", i,
                              "require")  # fmt: skip
            if rule.require == "any" and not any(kinds.values()):
                raise Problem("any needs auth.api_keys or auth.jwt, and neither is set",
                              "rules", i, "require")  # fmt: skip
        return self


def _rate(value: Any) -> float:
    """Tokens per second from ``100/s``, ``10/m`` or ``5/h`` (a bare number is per second)."""
    hint = f"{describe(value)} is not a rate (use 100/s, 10/m or 5/h)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        per_second = float(value)
    elif isinstance(value, str) and (m := _RATE.fullmatch(text(value, "a rate"))):
        per_second = float(m.group(1)) / _PER[m.group(2)]
    else:
        raise Problem(hint)
    if not 0 < per_second < math.inf:
        raise Problem(f"must be more than zero, got {describe(value)}")
    return per_second


def _no_default(schema: dict[str, Any]) -> None:
    """The schema of a field whose default is computed: none shown (null is not one)."""
    del schema["default"]


_RATE_SCHEMA: Final = or_env({"anyOf": [
    {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)\s*/\s*[smh]\s*$"},
    {"type": "number", "exclusiveMinimum": 0},
]})  # fmt: skip


class RateLimitRule(Section):
    """A token bucket per client for the methods matching a glob: `burst` calls pass at once,
    then `rate` per second."""

    match: MethodGlob
    """A method glob (fnmatch), like `demo.users.v1.UserService/Get*` or `*`."""
    key: Literal["ip", "api_key", "subject"]
    """What a bucket is kept per: the client's address (`X-Forwarded-For` only from
    `trusted_proxies`), its API key, or its authenticated subject."""
    rate: Annotated[float, BeforeValidator(_rate), WithJsonSchema(_RATE_SCHEMA)]
    """Refill rate: `100/s`, `10/m` or `5/h`; held as tokens per second."""
    burst: Count = written(None, json_schema_extra=_no_default)
    """Calls that may pass at once; default: one second's worth of `rate` (at least 1)."""

    @field_validator("burst", mode="before")
    @classmethod
    def _one_second_of_rate(cls, burst: Any, info: ValidationInfo) -> Any:
        rate = info.data.get("rate")
        return max(1, math.ceil(rate)) if burst is None and rate else burst


def _memory_store(value: Any) -> str:
    store = text(value, "a store")
    if store.startswith(REDIS_SCHEMES):
        return redis_url(store)
    if store != "memory":
        raise Problem(f"{store!r} is not a store (use memory, or redis://host:port/db)")
    return store


class RateLimitSettings(Section):
    """Rate limits (`rate_limits`): a list of rules, or a mapping with `rules` and `store`."""

    _bare_list = "rules"

    rules: tuple[RateLimitRule, ...] = ()
    """The first rule whose glob matches a method limits it; a method none matches is not
    limited."""
    store: Annotated[str, BeforeValidator(_memory_store)] = "memory"
    """Where buckets are kept: `memory`, in each process, or a Redis URL
    (`redis://host:port/db`, `rediss://` for TLS) shared by every instance using it."""


def _network(value: Any) -> Network:
    where = text(value, "an address or network")
    try:
        return ipaddress.ip_network(where)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(where, strict=False)
    except ValueError:
        raise Problem(f"{where!r} is not an IP address or network (like 10.0.0.0/8)") from None
    raise Problem(f"{where!r} has host bits set (did you mean '{network}'?)")


Networks = Annotated[
    tuple[Network, ...],
    BeforeValidator(unique(listed(_network, "addresses or networks"))),
    WithJsonSchema(STRINGS),
]


VARY_SUBJECT: Final = "subject"
VARY_HEADER: Final = "header:"


def _vary(value: Any) -> str:
    """``subject``, or ``header:<name>`` (the name lowercased)."""
    part = text(value, "subject or header:<name>")
    if part == VARY_SUBJECT:
        return part
    if part.lower().startswith(VARY_HEADER):
        try:
            return VARY_HEADER + header_name(part[len(VARY_HEADER) :])
        except Problem as e:
            raise Problem(f"{part!r}: {e}") from None
    raise Problem(f"{part!r} is not subject or header:<name> (like header:x-tenant)")


class CacheRule(Section):
    """Answers of the unary methods matching a glob, kept for `ttl` and shared by the calls
    whose request and `vary` parts are the same."""

    match: MethodGlob
    """A method glob (fnmatch), like `demo.catalog.v1.CatalogService/Get*`. Streaming methods
    are never cached: a glob passes over them, a rule naming one exactly is an error."""
    ttl: PositiveDuration
    """How long an answer is served from the cache (`X-Cache: HIT`)."""
    vary: Annotated[
        tuple[str, ...], BeforeValidator(unique(listed(_vary, "vary parts"))),
        WithJsonSchema(STRINGS),
    ] = ()  # fmt: skip
    """What else tells calls apart besides the method and request: `subject` (the
    authenticated caller; anonymous calls share one entry) and `header:<name>` (a request
    header's values). Without `subject`, every caller shares an entry: name it for any method
    whose answer depends on who asks."""
    stale_if_error: Duration = written("0s")
    """How long after `ttl` an answer may still be served when the backend fails with
    UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN or DATA_LOSS (`X-Cache: STALE`,
    `X-Bridge-Fallback: true`)."""


class CacheSettings(Section):
    """The response cache (`cache`): a list of rules, or a mapping with `rules`, `store` and
    the bounds."""

    _bare_list = "rules"

    rules: tuple[CacheRule, ...] = ()
    """The first rule whose glob matches a unary method caches it; a method none matches is
    not cached."""
    store: Annotated[str, BeforeValidator(_memory_store)] = "memory"
    """Where entries are kept: `memory`, in each process, or a Redis URL
    (`redis://host:port/db`, `rediss://` for TLS) shared by every instance using it; the
    bounds below then apply to the per-instance fallback used while Redis is unreachable."""
    max_entries: Count = 10_000
    """The most entries kept; past it, the least recently used goes."""
    max_bytes: Size = written("64MiB")
    """The most bytes of answers (message, metadata, key) kept; past it, the least recently
    used go. An answer larger than this is not kept."""


class FallbackRule(Section):
    """The answer given instead of a failure, for the methods matching a glob."""

    match: MethodGlob
    """A method glob (fnmatch). Streaming methods get no fallback: a glob passes over them, a
    rule naming one exactly is an error."""
    on: StatusCodes
    """The gRPC status codes (names in any case, like UNAVAILABLE; not OK) that are answered
    with `response`; other failures reach the client."""
    response: dict[str, Any]
    """The response message as JSON, as the method's REST route would answer it; checked
    against each matching method's response type at start."""
