"""The auth step alone (SPEC 6): API keys, real JWTs (tests/tokens.py), every refusal, rules,
scopes, the JWKS watcher; against a fake next step and fake calls."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from multidict import CIMultiDict

from bridge import errors
from bridge.call import Call, Principal
from bridge.config import ApiKey, ApiKeySettings, AuthRule, AuthSettings, ConfigError, JwtSettings
from bridge.errors import BridgeError
from bridge.policy import auth as auth_module
from bridge.policy.auth import UNMATCHED, Authenticator, AuthStep
from tests.tokens import (
    AUDIENCE,
    ISSUER,
    SECRET,
    Keys,
    b64,
    claims,
    confusion,
    es256,
    hs256,
    jwk,
    new_keys,
    relative,
    rs256,
    standard_jwks,
    tampered,
    write_jwks,
)  # fmt: skip

KEYS: Final = {"alice-key-0123456789": "alice", "anonymous-key-9876543210": None}
METHOD: Final = "demo.users.v1.UserService/GetUser"


# --- the authenticator and fake calls --------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> Keys:
    return new_keys()


def jwt_settings(**changes: Any) -> JwtSettings:
    defaults = {
        "issuer": ISSUER, "audience": (AUDIENCE,), "secret": SECRET, "leeway": 5.0,
        "algorithms": ("RS256", "ES256", "PS256", "EdDSA", "HS256"),
    }  # fmt: skip
    values = {**defaults, **changes}
    if values.get("jwks_file"):
        values["jwks_file"] = str(values["jwks_file"])  # the model takes the file's text
    return JwtSettings(**values)


def rule(match: str, require: str, *scopes: str) -> AuthRule:
    return AuthRule(match=match, require=require, scopes=scopes)


def authenticator(
    tmp_path: Path,
    keys: Keys,
    *,
    tokens: JwtSettings | None = None,
    rules: tuple[AuthRule, ...] = (),
    **jwt_changes: Any,
) -> Authenticator:
    if tokens is None:
        jwks = standard_jwks(tmp_path / "jwks.json", keys)
        tokens = jwt_settings(**{"jwks_file": jwks, **jwt_changes})
    api_keys = ApiKeySettings(keys=tuple(ApiKey(key=k, subject=s) for k, s in KEYS.items()))
    settings = AuthSettings(api_keys=api_keys, jwt=tokens, rules=rules)
    return Authenticator.from_settings(settings, "bridge.yaml")


@pytest.fixture
def auth(tmp_path: Path, keys: Keys) -> Authenticator:
    return authenticator(tmp_path, keys)


def bearer(token: str) -> CIMultiDict[str]:
    return CIMultiDict({"Authorization": f"Bearer {token}"})


def api_key(key: str) -> CIMultiDict[str]:
    return CIMultiDict({"X-Api-Key": key})


def fake_call(headers: Any = (), principal: Principal | None = None) -> Call:
    return Call(
        binding=None,  # type: ignore[arg-type]  # the step never looks at it
        request=None,  # type: ignore[arg-type]
        metadata=[], timeout=None, peer="127.0.0.1", transport="http", request_id="r",
        headers=CIMultiDict(headers), principal=principal,
    )  # fmt: skip


class FakeNext:
    """The next step: records the calls that got through."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, call: Call) -> Any:
        self.calls.append(call)
        return "reply"


def refusal(action: Callable[[], object]) -> BridgeError:
    with pytest.raises(BridgeError) as caught:
        action()
    return caught.value


def assert_not_echoed(error: BridgeError, secret: str) -> None:
    shown = error.message + json.dumps(error.headers)
    assert secret not in shown
    assert all(part not in shown for part in secret.split(".") if len(part) > 8)


# --- tokens ----------------------------------------------------------------------------------

ACCEPTED: Final = [
    pytest.param(rs256(), "user-1", frozenset(), id="rs256"),
    pytest.param(es256(), "user-1", frozenset(), id="es256"),
    pytest.param(hs256(), "user-1", frozenset(), id="hs256-with-the-secret"),
    pytest.param(
        lambda k: jwt.encode(claims(), k.rsa, "PS256", headers={"kid": "r1"}), "user-1",
        frozenset(), id="ps256-with-the-same-rsa-key",
    ),
    pytest.param(
        lambda k: jwt.encode(claims(), k.ed, "EdDSA", headers={"kid": "d1"}), "user-1",
        frozenset(), id="eddsa",
    ),
    pytest.param(relative(exp=-2), "user-1", frozenset(),
                 id="expired-within-the-leeway"),
    pytest.param(relative(nbf=2), "user-1", frozenset(),
                 id="nbf-within-the-leeway"),
    pytest.param(rs256(claims(scope="read write")), "user-1", frozenset({"read", "write"}),
                 id="scope-space-separated"),
    pytest.param(rs256(claims(scp=["read", "admin"])), "user-1", frozenset({"read", "admin"}),
                 id="scp-list"),
    pytest.param(rs256(claims(scp="read admin")), "user-1", frozenset({"read", "admin"}),
                 id="scp-string-like-azure"),
    pytest.param(rs256(claims(scope="a", scp=["b", 3])), "user-1", frozenset({"a", "b"}),
                 id="scope-and-scp-together-non-strings-ignored"),
    pytest.param(rs256(claims(aud=["other", AUDIENCE])), "user-1", frozenset(),
                 id="one-of-several-audiences"),
    pytest.param(rs256(claims(exp=None)), "user-1", frozenset(), id="no-exp"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "subject", "scopes"), ACCEPTED)
def test_good_tokens_prove_their_subject_and_scopes(auth, keys, make, subject, scopes):
    token = make(keys)
    principal = auth.identify(bearer(token))
    assert principal is not None
    assert (principal.subject, principal.kind, principal.scopes) == (subject, "jwt", scopes)
    assert principal.expires == jwt.decode(token, options={"verify_signature": False}).get("exp")


def test_the_bearer_scheme_is_case_insensitive(auth, keys):
    headers = CIMultiDict({"authorization": f"bearer  {rs256()(keys)} "})
    assert auth.identify(headers).subject == "user-1"


REFUSED: Final = [
    pytest.param(relative(exp=-60), "token expired", id="expired"),
    pytest.param(relative(nbf=60), "not valid yet", id="nbf-future"),
    pytest.param(relative(iat=60), "not valid yet", id="iat-future"),
    pytest.param(rs256(claims(iss="https://evil.test")), "wrong issuer", id="wrong-issuer"),
    pytest.param(rs256(claims(iss=None)), "no iss claim", id="no-issuer"),
    pytest.param(rs256(claims(aud="other")), "wrong audience", id="wrong-audience"),
    pytest.param(rs256(claims(aud=None)), "no aud claim", id="no-audience"),
    pytest.param(rs256(claims(sub=None)), "no sub claim", id="no-subject"),
    pytest.param(rs256(claims(sub=42)), "subject (sub) is not a string", id="subject-not-string"),
    pytest.param(rs256(claims(sub="a\nb")), "not printable ASCII", id="subject-with-newline"),
    pytest.param(rs256(claims(sub="")), "(sub) is empty", id="subject-empty"),
    pytest.param(lambda k: jwt.encode(claims(), k.other_rsa, "RS256", headers={"kid": "r1"}),
                 "bad signature", id="signed-by-another-rsa-key"),
    pytest.param(tampered, "bad signature", id="payload-changed-after-signing"),
    pytest.param(hs256(secret="x" * 32), "bad signature", id="hs256-with-another-secret"),
    pytest.param(confusion, "bad signature", id="hs256-signed-with-the-rsa-public-key"),
    pytest.param(lambda k: jwt.encode(claims(), None, "none"), "algorithm none is not allowed",
                 id="alg-none"),
    pytest.param(lambda k: jwt.encode(claims(), k.rsa, "RS384", headers={"kid": "r1"}),
                 "algorithm RS384 is not allowed", id="algorithm-not-listed"),
    pytest.param(lambda k: jwt.encode(claims(), k.ec, "ES256", headers={"kid": "r1"}),
                 "key id 'r1' is not a key for ES256", id="ec-token-naming-the-rsa-key"),
    pytest.param(rs256(kid="k2"), "unknown key id 'k2'", id="unknown-kid"),
    pytest.param(rs256(kid="k\r\n2"), "unknown key id 'k\\r\\n2'", id="kid-escaped"),
    pytest.param(rs256(kid=None), "names no key (kid)", id="no-kid"),
    pytest.param(lambda k: "garbage", "malformed token", id="garbage"),
    pytest.param(lambda k: "a.b.c", "malformed token", id="three-garbage-parts"),
    pytest.param(lambda k: b64(b'{"alg":"RS256"}') + ".e30", "malformed token",
                 id="two-parts"),
    pytest.param(lambda k: b64(b"[1]") + ".e30.", "malformed token", id="header-not-object"),
    pytest.param(lambda k: b64(b'{"typ":"JWT"}') + ".e30.", "names no algorithm",
                 id="no-alg"),
    pytest.param(lambda k: "ey\u00e9.x.y", "not a JWT", id="not-ascii"),
    pytest.param(lambda k: "ey\udcff.x.y", "not a JWT", id="not-utf8-bytes"),
    pytest.param(rs256(claims(exp="soon")), "malformed token", id="exp-not-a-number"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason"), REFUSED)
def test_bad_tokens_are_401_with_a_bearer_challenge(auth, keys, make, reason):
    token = make(keys)
    error = refusal(lambda: auth.identify(bearer(token), "jwt"))
    assert (error.code, error.status) == (errors.UNAUTHENTICATED, 401)
    assert reason in error.message
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="bridge", error="invalid_token"'
    assert_not_echoed(error, token)


def test_hs_rs_confusion_without_hs_listed_is_an_algorithm_refusal(tmp_path, keys):
    auth = authenticator(tmp_path, keys, algorithms=("RS256",), secret=None)
    error = refusal(lambda: auth.identify(bearer(confusion(keys))))
    assert error.message == "algorithm HS256 is not allowed"


def test_without_issuer_or_audience_configured_they_are_not_checked(tmp_path, keys):
    auth = authenticator(tmp_path, keys, issuer=None, audience=())
    token = rs256(claims(iss="anyone", aud="anything"))(keys)
    assert auth.identify(bearer(token)).subject == "user-1"


def test_an_empty_bearer_token_is_refused(auth):
    error = refusal(lambda: auth.identify(CIMultiDict({"Authorization": "Bearer "})))
    assert error.message == "the bearer token is empty"


def test_other_authorization_schemes_are_not_credentials(auth):
    assert auth.identify(CIMultiDict({"Authorization": "Basic dXNlcjpwdw=="})) is None
    assert auth.identify(CIMultiDict()) is None


def test_a_key_without_kid_matches_tokens_without_kid(tmp_path, keys):
    jwks = write_jwks(tmp_path / "one.json", jwk(keys.rsa.public_key(), None))
    settings = jwt_settings(jwks_file=jwks, secret=None, algorithms=("RS256",))
    auth = authenticator(tmp_path, keys, tokens=settings)
    assert auth.identify(bearer(rs256(kid=None)(keys))).subject == "user-1"
    error = refusal(lambda: auth.identify(bearer(rs256(kid="r1")(keys))))
    assert error.message == "unknown key id 'r1'"


def test_a_jwk_declaring_its_alg_serves_only_that_one(tmp_path, keys):
    jwks = write_jwks(tmp_path / "one.json", jwk(keys.rsa.public_key(), "r1", alg="PS256"))
    settings = jwt_settings(jwks_file=jwks, secret=None, algorithms=("RS256", "PS256"))
    auth = authenticator(tmp_path, keys, tokens=settings)
    ps256 = jwt.encode(claims(), keys.rsa, "PS256", headers={"kid": "r1"})
    assert auth.identify(bearer(ps256)).subject == "user-1"
    assert refusal(lambda: auth.identify(bearer(rs256()(keys)))).message == (
        "key id 'r1' is not a key for RS256"
    )


# --- the verified-token cache ----------------------------------------------------------------


def test_a_verified_token_is_remembered(auth, keys):
    token = rs256()(keys)
    assert auth.identify(bearer(token)) is auth.identify(bearer(token))


def test_the_cache_is_bounded(auth, keys, monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_SIZE", 3)
    tokens = [rs256(claims(sub=f"u{i}"))(keys) for i in range(5)]
    first = auth.identify(bearer(tokens[0]))
    for token in tokens[1:]:
        auth.identify(bearer(token))
    assert len(auth._tokens._cache) == 3
    assert auth.identify(bearer(tokens[0])) is not first  # the oldest was dropped


async def test_a_remembered_token_still_expires(tmp_path, keys):
    auth = authenticator(tmp_path, keys, leeway=0.0)
    token = rs256(claims(exp=int(time.time()) + 1))(keys)
    assert auth.identify(bearer(token)) is not None
    await asyncio.sleep(max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"]
                            - time.time()) + 0.05)  # fmt: skip
    assert refusal(lambda: auth.identify(bearer(token))).message == "token expired"


# --- API keys --------------------------------------------------------------------------------


def test_an_api_key_proves_its_configured_subject(auth):
    principal = auth.identify(api_key("alice-key-0123456789"))
    digest = hashlib.sha256(b"alice-key-0123456789").hexdigest()
    assert principal == Principal("alice", "api_key", key_id=digest[:16])


def test_an_api_key_without_subject_is_named_by_its_digest(auth):
    principal = auth.identify(api_key("anonymous-key-9876543210"))
    digest = hashlib.sha256(b"anonymous-key-9876543210").hexdigest()
    assert (principal.subject, principal.key_id) == (f"apikey-{digest[:8]}", digest[:16])


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("wrong-key-0123456789", id="unknown"),
        pytest.param("alice-key-012345678", id="a-prefix-of-a-good-key"),
        pytest.param("", id="empty"),
        pytest.param("alice-key-0123456789\udcff", id="not-utf8"),
    ],
)
def test_a_bad_api_key_is_401_naming_the_header(auth, given):
    error = refusal(lambda: auth.identify(api_key(given), "api_key"))
    assert (error.status, error.message) == (401, "unknown API key in the x-api-key header")
    assert error.headers == {"WWW-Authenticate": 'ApiKey realm="bridge", header="x-api-key"'}
    if given:
        assert_not_echoed(error, given)


def test_both_credentials_must_be_good_and_the_token_wins(auth, keys):
    good_key, token = "alice-key-0123456789", rs256()(keys)
    both = CIMultiDict({"X-Api-Key": good_key, "Authorization": f"Bearer {token}"})
    assert auth.identify(both).kind == "jwt"
    assert auth.identify(both, "api_key").kind == "api_key"
    bad_token = CIMultiDict({"X-Api-Key": good_key, "Authorization": "Bearer garbage"})
    error = refusal(lambda: auth.identify(bad_token))
    assert error.message == "malformed token"
    assert error.headers["WWW-Authenticate"] == (
        'Bearer realm="bridge", error="invalid_token", ApiKey realm="bridge", header="x-api-key"'
    )
    assert auth.identify(bad_token, "api_key").subject == "alice"  # Authorization not read


# --- rules -----------------------------------------------------------------------------------

RULES: Final = (
    rule("demo.users.v1.UserService/Get*", "any"),
    rule("demo.users.v1.UserService/*User", "jwt", "admin"),
    rule("demo.echo.v1.*", "api_key"),
    rule("demo.public.*", "none"),
)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        pytest.param(METHOD, RULES[0], id="first-match-wins"),
        pytest.param("demo.users.v1.UserService/DeleteUser", RULES[1], id="second-rule"),
        pytest.param("demo.echo.v1.EchoService/Echo", RULES[2], id="package-glob"),
        pytest.param("demo.public.v1.Info/Get", RULES[3], id="open"),
        pytest.param("demo.users.v1.userservice/GetUser", UNMATCHED, id="case-sensitive"),
        pytest.param("demo.other.v1.New/Call", UNMATCHED, id="unmatched-needs-any-credential"),
    ],
)
def test_rule_for_takes_the_first_matching_glob(tmp_path, keys, method, expected):
    assert authenticator(tmp_path, keys, rules=RULES).rule_for(method) is expected
    assert (UNMATCHED.require, UNMATCHED.scopes) == ("any", ())


def test_require_none_has_no_step(auth):
    assert auth.step(rule("*", "none")) is None
    assert isinstance(auth.step(rule("*", "any")), AuthStep)


# --- the step --------------------------------------------------------------------------------

GOOD_KEY: Final = {"X-Api-Key": "alice-key-0123456789"}
BOTH: Final = 'Bearer realm="bridge", ApiKey realm="bridge", header="x-api-key"'
STEPS: Final = [
    pytest.param("api_key", (), GOOD_KEY, "alice", id="api_key-rule-key"),
    pytest.param("jwt", (), "token", "user-1", id="jwt-rule-token"),
    pytest.param("any", (), GOOD_KEY, "alice", id="any-rule-key"),
    pytest.param("any", (), "token", "user-1", id="any-rule-token"),
    pytest.param("jwt", ("read",), "token:read write", "user-1", id="jwt-rule-scope-held"),
    pytest.param("any", ("a", "b"), "token:a b c", "user-1", id="any-rule-scopes-held"),
]


def credentials(keys: Keys, given: Any) -> Any:
    if isinstance(given, str):
        _, _, scope = given.partition(":")
        return bearer(rs256(claims(scope=scope or None))(keys))
    return given


@pytest.mark.parametrize(("require", "scopes", "given", "subject"), STEPS)
async def test_the_step_lets_the_right_credentials_through(auth, keys, require, scopes, given,
                                                           subject):  # fmt: skip
    step, next_step = auth.step(rule("*", require, *scopes)), FakeNext()
    call = fake_call(credentials(keys, given))
    assert await step(call, next_step) == "reply"
    assert next_step.calls == [call] and call.principal.subject == subject


STEP_REFUSALS: Final = [
    pytest.param("api_key", (), {}, 401, "this method needs an API key in the x-api-key header",
                 'ApiKey realm="bridge", header="x-api-key"', id="api_key-rule-nothing"),
    pytest.param("jwt", (), {}, 401,
                 "this method needs a bearer token (Authorization: Bearer <JWT>)",
                 'Bearer realm="bridge"', id="jwt-rule-nothing"),
    pytest.param("any", (), {}, 401, "this method needs an API key in the x-api-key header or "
                 "a bearer token (Authorization: Bearer <JWT>)", BOTH, id="any-rule-nothing"),
    pytest.param("api_key", (), "token", 401, "needs an API key in the x-api-key header",
                 'ApiKey realm="bridge", header="x-api-key"', id="api_key-rule-token-only"),
    pytest.param("jwt", (), GOOD_KEY, 401, "a bearer token (Authorization: Bearer <JWT>)",
                 'Bearer realm="bridge"', id="jwt-rule-key-only"),
    pytest.param("jwt", ("admin",), "token:read", 403, "the credential lacks the scope 'admin'",
                 'Bearer realm="bridge", error="insufficient_scope"', id="scope-missing"),
    pytest.param("jwt", ("b", "a"), "token", 403, "lacks the scopes 'a', 'b'",
                 'Bearer realm="bridge", error="insufficient_scope"', id="scopes-missing"),
    pytest.param("any", ("read",), GOOD_KEY, 403, "lacks the scope 'read'", None,
                 id="api-keys-hold-no-scopes"),
    pytest.param("any", (), {"X-Api-Key": "nope"}, 401, "unknown API key", BOTH,
                 id="any-rule-bad-key"),
]  # fmt: skip


@pytest.mark.parametrize(("require", "scopes", "given", "status", "message", "challenge"),
                         STEP_REFUSALS)  # fmt: skip
async def test_the_step_refuses_with_its_own_status(auth, keys, require, scopes, given, status,
                                                    message, challenge):  # fmt: skip
    step, next_step = auth.step(rule("*", require, *scopes)), FakeNext()
    call = fake_call(credentials(keys, given))
    with pytest.raises(BridgeError) as caught:
        await step(call, next_step)
    error = caught.value
    assert (error.status, error.headers.get("WWW-Authenticate")) == (status, challenge)
    assert message in error.message
    assert next_step.calls == [] and call.principal is None


async def test_a_principal_from_the_upgrade_is_used_until_it_expires(auth):
    step, next_step = auth.step(rule("*", "jwt", "read")), FakeNext()
    good = Principal("sock", "jwt", frozenset({"read"}), expires=time.time() + 60)
    await step(fake_call(principal=good), next_step)
    assert next_step.calls[0].principal is good
    stale = Principal("sock", "jwt", frozenset({"read"}), expires=time.time() - 60)
    error = await _refused(step(fake_call(principal=stale), next_step))
    assert (error.status, error.message) == (401, "token expired")
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="bridge", error="invalid_token"'


async def test_an_upgrade_principal_of_the_wrong_kind_falls_back_to_the_upgrade_headers(auth):
    step, next_step = auth.step(rule("*", "api_key")), FakeNext()
    principal = Principal("sock", "jwt", expires=time.time() + 60)
    error = await _refused(step(fake_call(principal=principal), next_step))
    assert error.message == "this method needs an API key in the x-api-key header"
    await step(fake_call(GOOD_KEY, principal=principal), next_step)
    assert next_step.calls[0].principal.subject == "alice"


async def _refused(awaitable: Any) -> BridgeError:
    with pytest.raises(BridgeError) as caught:
        await awaitable
    return caught.value


# --- configuration mistakes ------------------------------------------------------------------


def rsa_1024(k: Keys) -> dict[str, Any]:
    return jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), "w")


JWKS_ERRORS: Final = [
    pytest.param(None, "cannot read", id="missing"),
    pytest.param('{"keys": [', "is not JSON: Expecting value at line 1 column 11", id="not-json"),
    pytest.param(b'{"keys": "\xff"}', "is not UTF-8 text (bad byte at offset 10)", id="not-utf8"),
    pytest.param("[]", 'a JSON object with a "keys" list', id="not-an-object"),
    pytest.param({"keys": [{"kid": "x"}]}, 'keys[0]: not a JWK (an object with a "kty")',
                 id="no-kty"),
    pytest.param({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]},
                 "keys[0] ('h'): holds secret key material (k)", id="symmetric-key"),
    pytest.param(lambda k: {"keys": [json.loads(RSAAlgorithm.to_jwk(k.rsa)) | {"kid": "p"}]},
                 "holds secret key material (d, p, q, dp, dq, qi)", id="private-key"),
    pytest.param(lambda k: {"keys": [rsa_1024(k)]}, "1024 bits", id="weak-rsa-key"),
    pytest.param(lambda k: {"keys": [jwk(k.rsa.public_key(), "r"), jwk(k.rsa.public_key(), "r")]},
                 "keys[1]: key id 'r' is used twice", id="kid-twice"),
    pytest.param(lambda k: {"keys": [jwk(k.rsa.public_key(), "r", use="enc")]},
                 "no signing key for the algorithms listed (RS256, ES256)", id="only-enc-keys"),
    pytest.param({"keys": []}, "no signing key", id="empty"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "problem"), JWKS_ERRORS)
def test_a_bad_jwks_file_is_a_config_error_naming_it(tmp_path, keys, content, problem):
    path = tmp_path / "keys.json"
    if callable(content):
        content = content(keys)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    settings = jwt_settings(jwks_file=path, secret=None, algorithms=("RS256", "ES256"))
    with pytest.raises(ConfigError) as caught:
        authenticator(tmp_path, keys, tokens=settings)
    assert caught.value.file == "bridge.yaml" and caught.value.key == "auth.jwt.jwks_file"
    assert str(path) in caught.value.problem and problem in caught.value.problem


# --- the JWKS watcher ------------------------------------------------------------------------


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.01)


def accepted(auth: Authenticator, token: str) -> bool:
    try:
        return auth.identify(bearer(token)) is not None
    except BridgeError:
        return False


async def test_a_rotated_jwks_file_is_picked_up_and_a_bad_one_keeps_the_keys(
    tmp_path, keys, caplog
):
    auth = authenticator(tmp_path, keys)
    auth.watch_interval = 0.02
    path = auth._tokens.jwks_file
    old = rs256()(keys)
    new = jwt.encode(claims(), keys.other_rsa, "RS256", headers={"kid": "r2"})
    assert accepted(auth, old) and not accepted(auth, new)
    await auth.start()
    try:
        write_jwks(path, jwk(keys.other_rsa.public_key(), "r2"))  # r1 retired, r2 in
        await eventually(lambda: accepted(auth, new))
        assert refusal(lambda: auth.identify(bearer(old))).message == "unknown key id 'r1'"
        with caplog.at_level(logging.WARNING, logger="bridge.policy.auth"):
            path.write_text('{"keys": [')  # an editor's half-written save
            await eventually(lambda: len(caplog.records) > 0)
            await asyncio.sleep(0.1)  # more looks at the same bad file: no more warnings
        [record] = caplog.records
        assert "is not JSON" in record.getMessage() and "keys in use are kept" in record.message
        assert accepted(auth, new)
        path.unlink()
        write_jwks(path, jwk(keys.rsa.public_key(), "r1"))  # back, under a new inode
        await eventually(lambda: accepted(auth, old))
    finally:
        await auth.close()
    assert auth._watcher is None


async def test_close_without_start_and_twice_is_fine(auth):
    await auth.close()
    await auth.start()
    await auth.close()
    await auth.close()


def test_nothing_secret_is_logged(tmp_path, keys, caplog):
    caplog.set_level(logging.DEBUG)
    auth = authenticator(tmp_path, keys)
    token = rs256()(keys)
    auth.identify(bearer(token))
    for given in (bearer(token + "x"), api_key("wrong-key-0123456789")):
        refusal(lambda given=given: auth.identify(given))
    text = caplog.text + repr(auth.identify(bearer(token)))
    assert token not in text and SECRET not in text and "key-0123456789" not in text
