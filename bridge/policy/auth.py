"""Authentication (SPEC 6): API keys and JWTs proven into a `Principal`, and the step that
holds each method to its rule.

An `Authenticator` is built once from the config's ``auth`` section. ``identify`` turns a
request's credentials into a principal (None when it carries none, a 401 when one is bad);
``step(rule_for(method))`` is the policy step a method's chain gets, or None when its rule is
``require: none``. Tokens are verified by PyJWT only: HS* algorithms with ``secret`` and the
asymmetric ones with the JWKS keys chosen by ``kid``, so an HS256 token "signed" with a
published RSA key is only ever checked against the secret. A JWKS file is watched off the event
loop and re-read when it changes. Keys, secrets and tokens are never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt

from bridge import errors
from bridge.call import Call, Invoke, Principal, Reply
from bridge.config import AuthRule, ConfigError
from bridge.edge.protocol import quote
from bridge.errors import BridgeError
from bridge.observe.metrics import REJECTED_AUTH, REJECTED_SCOPE

if TYPE_CHECKING:
    from bridge.config import ApiKeySettings, AuthSettings, JwtSettings

log = logging.getLogger(__name__)

NONE: Final = "none"
API_KEY: Final = "api_key"
JWT: Final = "jwt"
ANY: Final = "any"

# The rule of a method no configured rule matches: never open by accident.
UNMATCHED: Final = AuthRule(match="*", require=ANY)
CACHE_SIZE: Final = 10_000  # verified tokens remembered; a token costs ~100 bytes plus claims
WATCH_INTERVAL: Final = 1.0  # seconds between two looks at the JWKS file
_AUTHORIZATION: Final = "authorization"
_REALM: Final = 'realm="bridge"'
# A JWKS holding these members holds a private or a symmetric key: the bridge needs neither.
_SECRET_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_Signature = tuple[int, int, int] | None  # a file's mtime, size and inode; None: missing
# PyJWT's exceptions, most specific first, as the reason a client is told.
_TOKEN_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet (nbf or iat in the future)"),
    (jwt.InvalidIssuerError, "wrong issuer (iss)"),
    (jwt.InvalidAudienceError, "wrong audience (aud)"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.exceptions.InvalidSubjectError, "the subject (sub) is not a string"),
    (jwt.InvalidIssuedAtError, "the issued-at time (iat) is not a number"),
)


def _asymmetric(algorithm: str) -> bool:
    return not algorithm.startswith("HS")


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable public keys of a JWKS file, by (kid, algorithm); kid None for a key without."""

    keys: Mapping[tuple[str | None, str], jwt.PyJWK]
    kids: frozenset[str | None]

    @classmethod
    def load(cls, path: Path, algorithms: Iterable[str]) -> KeySet:
        """The keys in a JWKS file for these (asymmetric) algorithms; a ValueError naming what
        is wrong (the file's text is never quoted: it may hold what it should not)."""
        try:
            document = json.loads(path.read_bytes())
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:  # its msg and position quote nothing of the file
            where = f"line {e.lineno} column {e.colno}"
            raise ValueError(f"{path} is not JSON: {e.msg} at {where}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f'{path} is not a JWKS: a JSON object with a "keys" list')
        keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        for i, entry in enumerate(entries):
            for algorithm, key in _jwk_keys(entry, algorithms, f"{path}: keys[{i}]"):
                if (key.key_id, algorithm) in keys:
                    raise ValueError(f"{path}: keys[{i}]: key id {key.key_id!r} is used twice")
                keys[key.key_id, algorithm] = key
        if not keys:
            listed = ", ".join(algorithms)
            raise ValueError(f"{path} holds no signing key for the algorithms listed ({listed})")
        return cls(keys, frozenset(kid for kid, _ in keys))


def _jwk_keys(entry: Any, algorithms: Iterable[str], where: str) -> Iterable[tuple[str, jwt.PyJWK]]:
    """One JWKS entry as a key for each listed algorithm it fits (none for encryption keys)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kty"), str):
        raise ValueError(f'{where}: not a JWK (an object with a "kty")')
    if not isinstance(entry.get("kid", ""), str):
        raise ValueError(f"{where}: its kid is not a string")
    where = f"{where} ({entry['kid']!r})" if "kid" in entry else where
    held = [m for m in _SECRET_MEMBERS if m in entry]
    if held:
        raise ValueError(
            f"{where}: holds secret key material ({', '.join(held)}); the JWKS file is for "
            "public keys only (HS* tokens are checked with auth.jwt.secret)"
        )
    if entry.get("use", "sig") != "sig":
        return []
    declared = entry.get("alg")
    fits = []
    for algorithm in algorithms:
        if declared not in (None, algorithm):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm)
        except jwt.PyJWTError:
            continue  # another key type or curve: the key is for other algorithms
        weak = key.Algorithm.check_key_length(key.Algorithm.prepare_key(key.key))
        if weak:
            raise ValueError(f"{where}: {weak}")
        fits.append((algorithm, key))
    return fits


class _ApiKeys:
    """The configured keys, found by the SHA-256 digest of what the client sent.

    The dict lookup compares digests, never keys: its timing tells at most how much of a
    digest matched, which says nothing about any key to someone without a SHA-256 preimage.
    So it is the constant-time comparison, and it stays O(1) however many keys there are.
    """

    def __init__(self, settings: ApiKeySettings) -> None:
        self.header = settings.header
        self._principals: dict[bytes, Principal] = {}
        for entry in settings.keys:  # the config made sure each is listed once
            digest = _digest(entry.key)
            subject = entry.subject or f"apikey-{digest.hex()[:8]}"
            self._principals[digest] = Principal(subject, API_KEY, key_id=digest.hex()[:16])

    def identify(self, headers: Mapping[str, str]) -> Principal | None:
        given = headers.get(self.header)
        if given is None:
            return None
        principal = self._principals.get(_digest(given))
        if principal is None:
            raise _Refused(f"unknown API key in the {self.header} header")
        return principal


class _Tokens:
    """JWT verification by PyJWT, with the keys each algorithm may use, and a cache of
    tokens already verified (so a socket's calls and repeated requests skip the signature)."""

    def __init__(self, settings: JwtSettings, source: str) -> None:
        self.algorithms = settings.algorithms  # checked by the config against the keys given
        self.jwks_file = settings.jwks_file
        self.leeway = settings.leeway
        self._issuer = settings.issuer
        self._audience = list(settings.audience) or None
        self._options: Any = {
            "require": ["sub"],
            "verify_aud": self._audience is not None,  # PyJWT refuses any aud when not told one
            "enforce_minimum_key_length": True,  # checked at start-up, so never a warning
        }
        self._secret = None if settings.secret is None else settings.secret.encode()
        self.keys = KeySet({}, frozenset())
        self.signature: _Signature = None  # the JWKS file's, when the keys in use were read
        if self.jwks_file is not None:
            self.signature = _signature(self.jwks_file)
            try:
                self.keys = KeySet.load(self.jwks_file, self.asymmetric)
            except ValueError as e:
                raise ConfigError(source, "auth.jwt.jwks_file", str(e)) from None
        self._cache: dict[bytes, Principal] = {}

    @property
    def asymmetric(self) -> tuple[str, ...]:
        return tuple(a for a in self.algorithms if _asymmetric(a))

    def use(self, keys: KeySet) -> None:
        """Verify with these keys from now on; tokens verified with the old ones are forgotten
        (a key removed from the file stops working at once)."""
        self.keys = keys
        self._cache.clear()

    def verify(self, token: str) -> Principal:
        digest = _digest(token)
        principal = self._cache.get(digest)
        if principal is not None and not self.expired(principal):
            return principal
        principal = self._verify(token)
        if len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[digest] = principal
        return principal

    def expired(self, principal: Principal) -> bool:
        """Past exp, with PyJWT's rule (a token is good while now - leeway < exp)."""
        return principal.expires is not None and time.time() - self.leeway >= principal.expires

    def _verify(self, token: str) -> Principal:
        if not token.isascii():  # a JWT is base64url and dots; aiohttp keeps bad bytes as-is
            raise _Refused("the bearer token is not a JWT", token=True)
        try:
            header = jwt.get_unverified_header(token)
            key = self._key(header)
            claims = jwt.decode(
                token, key, algorithms=[header["alg"]], options=self._options,
                audience=self._audience, issuer=self._issuer, leeway=self.leeway,
            )  # fmt: skip
        except _Refused:
            raise
        except jwt.MissingRequiredClaimError as e:
            raise _Refused(f"the token has no {e.claim} claim", token=True) from None
        except jwt.PyJWTError as e:
            raise _Refused(_reason(e), token=True) from None
        subject = claims["sub"]
        if not _printable(subject):
            raise _Refused("the token's subject (sub) is empty or not printable ASCII", token=True)
        expires = claims.get("exp")
        return Principal(subject, JWT, _scopes(claims), None if expires is None else float(expires))

    def _key(self, header: dict[str, Any]) -> jwt.PyJWK | bytes:
        """The key this token's algorithm may be checked with, or a refusal saying why not."""
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise _Refused("the token names no algorithm (alg)", token=True)
        if algorithm not in self.algorithms:  # "none" among them: it is never listed
            raise _Refused(f"algorithm {quote(algorithm)} is not allowed", token=True)
        if not _asymmetric(algorithm):
            assert self._secret is not None  # an HS* algorithm is listed only with a secret
            return self._secret
        kid = header.get("kid")  # PyJWT made sure it is a string when present
        key = self.keys.keys.get((kid, algorithm))
        if key is not None:
            return key
        named = "the key without a kid" if kid is None else f"key id '{quote(kid)}'"
        if kid in self.keys.kids:
            raise _Refused(f"{named} is not a key for {algorithm}", token=True)
        if kid is None:
            raise _Refused("the token names no key (kid)", token=True)
        raise _Refused(f"unknown {named}", token=True)


def _reason(error: Exception) -> str:
    for kind, reason in _TOKEN_REASONS:
        if isinstance(error, kind):
            return reason
    return "malformed token"  # DecodeError and the rest: nothing of the token is echoed


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space separated, OAuth 2) and ``scp`` (a list, or a string as
    Azure AD sends it); entries that are not strings grant nothing."""
    found: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        items = value.split() if isinstance(value, str) else value
        if isinstance(items, list):
            found.update(s for s in items if isinstance(s, str) and s)
    return frozenset(found)


def _digest(secret: str) -> bytes:
    # aiohttp keeps header bytes that are not UTF-8 as surrogates: hash them as they came.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def _printable(text: str) -> bool:
    """Fit to be a metadata value as it is: gRPC allows printable ASCII only."""
    return bool(text) and text.isascii() and text.isprintable()


class _Refused(Exception):
    """A credential that was presented and refused; the message never holds the credential."""

    def __init__(self, message: str, *, token: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.token = token  # a bearer token (RFC 6750 error="invalid_token"), else an API key


class Authenticator:
    """API keys and JWTs checked against the config, and the rules saying which method needs
    what. Built once per process; ``start``/``close`` run the JWKS file's watcher."""

    def __init__(
        self,
        api_keys: _ApiKeys | None,
        tokens: _Tokens | None,
        rules: tuple[AuthRule, ...],
        *,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self._api_keys = api_keys
        self._tokens = tokens
        self.rules = rules
        self.watch_interval = watch_interval
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, auth: AuthSettings, source: str | Path = "config") -> Authenticator:
        """The authenticator for the config's ``auth`` section (validated by the config
        models); a ConfigError naming ``source``, the config file, for a bad JWKS file."""
        api_keys = None if auth.api_keys is None else _ApiKeys(auth.api_keys)
        tokens = None if auth.jwt is None else _Tokens(auth.jwt, str(source))
        return cls(api_keys, tokens, auth.rules)

    @property
    def api_key_header(self) -> str | None:
        """The (lowercase) header API keys come in; None when ``api_keys`` is not configured.
        A WebSocket upgrade also takes the key as the query parameter of this name."""
        return None if self._api_keys is None else self._api_keys.header

    def rule_for(self, method: str) -> AuthRule:
        """The first rule whose glob matches ``pkg.Service/Method``; a method that none
        matches needs a credential of either kind, so a newly registered service is never
        open by accident (end the rules with ``{match: "*", require: none}`` to open the rest).
        """
        for rule in self.rules:
            if fnmatchcase(method, rule.match):
                return rule
        return UNMATCHED

    def step(self, rule: AuthRule) -> AuthStep | None:
        """The step enforcing ``rule``; None for ``require: none`` (such a method pays nothing)."""
        if rule.require == NONE:
            return None
        return AuthStep(self, rule.require, frozenset(rule.scopes))

    def identify(self, headers: Mapping[str, str], require: str = ANY) -> Principal | None:
        """Who the request's credentials prove, None when it has none; a 401 for a bad one.

        ``headers`` are aiohttp's (case-insensitive) or a mapping with lowercase names. The
        credentials read are the ones ``require`` takes: the API-key header for ``api_key``,
        ``Authorization: Bearer`` for ``jwt``, both for ``any``. When both are sent, both must
        be good (a forged token is refused even next to a good key) and the token's principal
        is the one used: a user is more specific than the key of the app they use. An
        ``Authorization`` header of another scheme (Basic...) is not the bridge's credential.
        """
        try:
            key = self._api_keys.identify(headers) if self._api_keys and require != JWT else None
            token = self._bearer(headers) if self._tokens and require != API_KEY else None
        except _Refused as e:
            raise self.unauthenticated(require, e.message, invalid_token=e.token) from None
        return token or key

    def fresh(self, principal: Principal, require: str = ANY) -> Principal:
        """``principal`` while its token has not expired (one proven earlier: at a socket's
        upgrade); a 401 once it has."""
        if self._tokens is not None and self._tokens.expired(principal):
            raise self.unauthenticated(require, "token expired", invalid_token=True)
        return principal

    def unauthenticated(
        self, require: str, message: str, *, invalid_token: bool = False
    ) -> BridgeError:
        """A 401 whose challenges name the credentials ``require`` takes (RFC 9110 11.6.1)."""
        challenges = []
        if self._tokens is not None and require in (JWT, ANY):
            error = ', error="invalid_token"' if invalid_token else ""
            challenges.append(f"Bearer {_REALM}{error}")
        if self._api_keys is not None and require in (API_KEY, ANY):
            challenges.append(f'ApiKey {_REALM}, header="{self._api_keys.header}"')
        headers = {"WWW-Authenticate": ", ".join(challenges or [f"Bearer {_REALM}"])}
        REJECTED_AUTH.inc()
        return BridgeError(errors.UNAUTHENTICATED, message, headers=headers)

    def wanted(self, require: str) -> str:
        """What a method with this rule needs, as a client should read it."""
        kinds = []
        if self._api_keys is not None and require != JWT:
            kinds.append(f"an API key in the {self._api_keys.header} header")
        if self._tokens is not None and require != API_KEY:
            kinds.append("a bearer token (Authorization: Bearer <JWT>)")
        return " or ".join(kinds) or "a credential, and none is configured"

    def _bearer(self, headers: Mapping[str, str]) -> Principal | None:
        assert self._tokens is not None
        value = headers.get(_AUTHORIZATION)
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token:
            raise _Refused("the bearer token is empty", token=True)
        return self._tokens.verify(token)

    async def start(self) -> None:
        """Start watching the JWKS file (if any) for changes."""
        if self._tokens is not None and self._tokens.jwks_file and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(self._tokens), name="jwks watcher")

    async def close(self) -> None:
        """Stop the watcher."""
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, tokens: _Tokens) -> None:
        """Re-read the JWKS file when its mtime, size or inode change; the file is stat'ed and
        read in a thread, never on the loop. A bad new file keeps the keys in use and is
        warned about once; the keys are swapped whole, so a call sees the old or the new set.
        """
        path = tokens.jwks_file
        assert path is not None
        while True:
            await asyncio.sleep(self.watch_interval)
            signature = await asyncio.to_thread(_signature, path)
            if signature == tokens.signature:
                continue
            tokens.signature = signature  # taken before the read: a change during it is seen
            try:
                keys = await asyncio.to_thread(KeySet.load, path, tokens.asymmetric)
            except ValueError as e:
                log.warning("auth.jwt.jwks_file: %s; the keys in use are kept", e)
                continue
            tokens.use(keys)
            log.info("auth.jwt.jwks_file: reloaded %s (%d keys)", path, len(keys.keys))


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing: KeySet.load says so, once, and the keys in use are kept
    return st.st_mtime_ns, st.st_size, st.st_ino


class AuthStep:
    """The policy step of one rule: the call's principal proven, of the kind the rule takes,
    holding its scopes; then the next step."""

    __slots__ = ("_auth", "require", "scopes")

    def __init__(self, auth: Authenticator, require: str, scopes: frozenset[str]) -> None:
        self._auth = auth
        self.require = require
        self.scopes = scopes

    async def __call__(self, call: Call, next: Invoke) -> Reply:
        auth = self._auth
        principal = call.principal  # proven at a socket's upgrade, when set
        if principal is not None and self.require in (ANY, principal.kind):
            principal = auth.fresh(principal, self.require)  # it may have expired since
        else:  # also a socket's JWT on an api_key rule: its upgrade may have sent a key too
            principal = auth.identify(call.headers, self.require)
        if principal is None:
            needs = f"this method needs {auth.wanted(self.require)}"
            raise auth.unauthenticated(self.require, needs)
        missing = self.scopes - principal.scopes
        if missing:
            raise _forbidden(missing, principal)
        call.principal = principal
        return await next(call)


def _forbidden(missing: frozenset[str], principal: Principal) -> BridgeError:
    names = ", ".join(f"'{s}'" for s in sorted(missing))
    plural = "s" if len(missing) > 1 else ""
    headers = {}
    if principal.kind == JWT:  # RFC 6750 section 3.1
        headers["WWW-Authenticate"] = f'Bearer {_REALM}, error="insufficient_scope"'
    REJECTED_SCOPE.inc()
    return BridgeError(
        errors.PERMISSION_DENIED,
        f"the credential lacks the scope{plural} {names}",
        headers=headers,
    )
