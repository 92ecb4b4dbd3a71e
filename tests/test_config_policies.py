"""Tests for the policy sections of bridge.config (SPEC 6): auth, rate_limits, trusted_proxies
and cors, their valid shapes and each mistake with its exact key and message."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from bridge.config import (
    ApiKey,
    ApiKeySettings,
    AuthRule,
    ConfigError,
    CorsSettings,
    JwtSettings,
    RateLimitRule,
    load_settings,
    settings_from_dict,
)

SECRET = "s" * 32  # HS256 needs 32 bytes (RFC 7518 section 3.2)
KEY = "k-3f9a1c7e"  # an API key no message or repr may show


def settings(data: dict[str, Any], env: dict[str, str] | None = None, folder: Path = Path("/c")):
    return settings_from_dict(data, folder / "bridge.yaml", env=env or {})


def refusal(data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    """The one-line message of the ConfigError `data` gives, without the file name."""
    with pytest.raises(ConfigError) as info:
        settings(data, env)
    message = str(info.value)
    assert message.startswith("/c/bridge.yaml: ")
    return message.removeprefix("/c/bridge.yaml: ")


SPEC_AUTH = """
auth:
  api_keys: {header: X-Api-Key, keys: "${BRIDGE_API_KEYS}"}
  jwt: {issuer: https://issuer.example, audience: bridge, algorithms: [RS256, HS256],
        jwks_file: keys/jwks.json, secret: "${JWT_SECRET}", leeway: 5s}
  rules:
    - {match: "demo.users.v1.UserService/Get*", require: any}
    - {match: "demo.admin.*", require: jwt, scopes: [admin, "users:write"]}
    - {match: "*", require: none}
"""


def test_the_spec_auth_section(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(SPEC_AUTH)
    env = {"BRIDGE_API_KEYS": f"alice={KEY}, plain-key-1,,", "JWT_SECRET": SECRET}

    auth = load_settings(path, env=env).auth

    assert auth is not None
    assert auth.api_keys == ApiKeySettings(
        header="x-api-key", keys=(ApiKey(key=KEY, subject="alice"), ApiKey(key="plain-key-1"))
    )
    assert auth.jwt == JwtSettings(
        issuer="https://issuer.example",
        audience=("bridge",),
        algorithms=("RS256", "HS256"),
        secret=SECRET,
        jwks_file=tmp_path / "keys" / "jwks.json",
        leeway=5.0,
    )
    assert auth.rules == (
        AuthRule(match="demo.users.v1.UserService/Get*", require="any"),
        AuthRule(match="demo.admin.*", require="jwt", scopes=("admin", "users:write")),
        AuthRule(match="*", require="none"),
    )


def test_no_auth_section_is_none_and_an_empty_one_has_nothing() -> None:
    assert settings({}).auth is None
    assert settings({"auth": None}).auth is None
    auth = settings({"auth": {}}).auth
    assert auth is not None
    assert (auth.api_keys, auth.jwt, auth.rules) == (None, None, ())


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param("k1", [("k1", None)], id="one-key"),
        pytest.param(" a=k1 , k2 ", [("k1", "a"), ("k2", None)], id="spaces-around"),
        pytest.param("a=b=c==", [("b=c==", "a")], id="split-at-first-equals"),
        pytest.param("k1,,k2,", [("k1", None), ("k2", None)], id="blanks-ignored"),
        pytest.param(["ops team=k1", "k2", ""], [("k1", "ops team"), ("k2", None)], id="list"),
    ],
)
def test_api_keys(keys: Any, expected: list[tuple[str, str | None]]) -> None:
    auth = settings({"auth": {"api_keys": {"keys": keys}}}).auth
    assert auth is not None and auth.api_keys is not None
    assert auth.api_keys.header == "x-api-key"
    assert [(k.key, k.subject) for k in auth.api_keys.keys] == expected


def test_keys_and_secrets_never_appear_in_a_repr() -> None:
    s = settings({
        "auth": {
            "api_keys": {"keys": f"alice={KEY}"},
            "jwt": {"algorithms": "HS256", "secret": SECRET},
        },
        "admin": {"token": "admin-token-1"},
    })  # fmt: skip
    shown = repr(s) + str(s.auth)
    for secret in (KEY, SECRET, "admin-token-1"):
        assert secret not in shown
    assert "alice" in shown
    assert KEY not in repr(ApiKey(key=KEY)) and KEY not in str(ApiKey(key=KEY))


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(f"{KEY},{KEY}", id="duplicate"),
        pytest.param(f"={KEY}", id="empty-subject"),
        pytest.param(f"{KEY} with space", id="bad-character"),
        pytest.param([KEY, 123456], id="number"),
        pytest.param({"key": KEY}, id="mapping"),
    ],
)
def test_api_key_errors_never_show_the_key(keys: Any) -> None:
    assert KEY not in refusal({"auth": {"api_keys": {"keys": keys}}})
    assert "123456" not in refusal({"auth": {"api_keys": {"keys": keys}}})


def test_jwt_defaults_and_shapes(tmp_path: Path) -> None:
    jwt = settings(
        {"auth": {"jwt": {"algorithms": ["ES256", "EdDSA"], "jwks_file": "../jwks.json",
                          "audience": ["a", "b"]}}},
        folder=tmp_path / "conf",
    ).auth.jwt  # type: ignore[union-attr]  # fmt: skip
    assert jwt is not None
    assert (jwt.issuer, jwt.audience, jwt.secret, jwt.leeway) == (None, ("a", "b"), None, 30.0)
    assert jwt.jwks_file == tmp_path / "jwks.json"
    assert jwt.jwks_file.is_absolute()


def test_secret_and_jwks_file_together() -> None:
    data = {"algorithms": "HS512,RS256".split(","), "secret": "x" * 64, "jwks_file": "/k.json"}
    jwt = settings({"auth": {"jwt": data}}).auth.jwt  # type: ignore[union-attr]
    assert jwt is not None and jwt.algorithms == ("HS512", "RS256")


def test_values_from_the_environment() -> None:
    s = settings(
        {
            "auth": {"jwt": {"algorithms": "${ALG}", "secret": "${SECRET}", "leeway": "${LEEWAY}"}},
            "rate_limits": [{"match": "*", "key": "ip", "rate": "${RATE}", "burst": "${BURST}"}],
            "trusted_proxies": "${PROXY}",
            "cors": {"allow_credentials": "${CREDENTIALS}", "max_age": "${AGE}"},
        },
        env={"ALG": "HS256", "SECRET": SECRET, "LEEWAY": "2s", "RATE": "10/m", "BURST": "3",
             "PROXY": "10.1.0.0/16", "CREDENTIALS": "true", "AGE": "90"},
    )  # fmt: skip
    assert s.auth is not None and s.auth.jwt is not None
    assert (s.auth.jwt.algorithms, s.auth.jwt.secret, s.auth.jwt.leeway) == (("HS256",), SECRET, 2)
    assert s.rate_limits == (RateLimitRule(match="*", key="ip", rate=10 / 60, burst=3),)
    assert s.trusted_proxies == (ipaddress.ip_network("10.1.0.0/16"),)
    assert (s.cors.allow_credentials, s.cors.max_age) == (True, 90.0)


JWKS = {"algorithms": ["RS256"], "jwks_file": "k.json"}
ANY_KEY = {"api_keys": {"keys": "k1"}}

# Each case: the config data, then the whole message after the file name.
AUTH_ERRORS = [
    pytest.param(
        {"auth": {"api_key": {}}},
        "auth.api_key: unknown key (did you mean 'api_keys'?)",
        id="misspelt-section",
    ),
    pytest.param(
        {"auth": {"api_keys": {"header": "x-api-key"}}},
        "auth.api_keys.keys: required",
        id="api-keys-without-keys",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": "${BRIDGE_API_KEYS}"}}},
        "auth.api_keys.keys: is empty: environment variable BRIDGE_API_KEYS is not set",
        id="keys-env-unset",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": ", ,"}}},
        "auth.api_keys.keys: required: list at least one key ('key' or 'subject=key')",
        id="keys-all-blank",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": f"a=k1, b={KEY}, c={KEY}"}}},
        "auth.api_keys.keys[2]: the same key as keys[1]: list each key once",
        id="duplicate-key",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": ["k1", f"={KEY}"]}}},
        "auth.api_keys.keys[1]: the subject before '=' is empty",
        id="empty-subject",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": "alice="}}},
        "auth.api_keys.keys[0]: the key is empty",
        id="empty-key",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": "k\u00e9y"}}},
        "auth.api_keys.keys[0]: the key may only hold visible ASCII characters (it is sent in a "
        "header)",
        id="non-ascii-key",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": "\u00e9quipe=k1"}}},
        "auth.api_keys.keys[0]: the subject may only hold printable ASCII (it is sent as metadata)",
        id="non-ascii-subject",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": 42}}},
        "auth.api_keys.keys: expected a comma-separated string or a list of keys, got a number",
        id="keys-a-number",
    ),
    pytest.param(
        {"auth": {"api_keys": {"keys": "k1", "header": "x api key"}}},
        "auth.api_keys.header: 'x api key' is not a valid HTTP header name",
        id="bad-header",
    ),
    pytest.param(
        {"auth": {"jwt": {"jwks_file": "k.json"}}},
        "auth.jwt.algorithms: required",
        id="jwt-without-algorithms",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": [], "jwks_file": "k.json"}}},
        "auth.jwt.algorithms: required: list at least one algorithm, like RS256 or HS256",
        id="jwt-empty-algorithms",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["RS256", "none"], "jwks_file": "k.json"}}},
        "auth.jwt.algorithms[1]: 'none' is refused: a token without a signature proves nothing",
        id="alg-none",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": "None", "jwks_file": "k.json"}}},
        "auth.jwt.algorithms: 'none' is refused: a token without a signature proves nothing",
        id="alg-None-any-case",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["rs256"], "jwks_file": "k.json"}}},
        "auth.jwt.algorithms[0]: 'rs256' is not an algorithm PyJWT supports (did you mean "
        "'RS256'?)",
        id="alg-lower-case",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS1"], "secret": SECRET}}},
        "auth.jwt.algorithms[0]: 'HS1' is not an algorithm PyJWT supports (supported: ES256, "
        "ES256K, ES384, ES512, ES521, EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, "
        "RS384, RS512)",
        id="alg-unknown",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256"]}}},
        "auth.jwt: needs a secret (HS* algorithms) or a jwks_file (RS*, PS*, ES*, EdDSA)",
        id="jwt-without-keys",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["RS256", "HS256"], "jwks_file": "k.json"}}},
        "auth.jwt.algorithms[1]: HS256 verifies with a shared secret: set secret",
        id="hs-without-secret",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256", "ES256"], "secret": SECRET}}},
        "auth.jwt.algorithms[1]: ES256 verifies with public keys: set jwks_file",
        id="asymmetric-without-jwks",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256", "HS512"], "secret": SECRET}}},
        "auth.jwt.secret: is 32 bytes long; HS512 needs at least 64 (RFC 7518 section 3.2)",
        id="secret-too-short",
    ),
    pytest.param(
        {"auth": {"jwt": {**JWKS, "secret": SECRET}}},
        "auth.jwt.secret: is set but no HS* algorithm is listed to use it",
        id="unused-secret",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256"], "secret": SECRET, "jwks_file": "k.json"}}},
        "auth.jwt.jwks_file: is set but no asymmetric algorithm is listed to use it",
        id="unused-jwks-file",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256"], "secret": "${JWT_SECRET}"}}},
        "auth.jwt.secret: is empty: environment variable JWT_SECRET is not set",
        id="secret-env-unset",
    ),
    pytest.param(
        {"auth": {"jwt": {"algorithms": ["HS256"], "secret": 12345678}}},
        "auth.jwt.secret: expected a string, got a number",
        id="secret-a-number-not-shown",
    ),
    pytest.param(
        {"auth": {"jwt": {**JWKS, "leeway": "5 sec"}}},
        "auth.jwt.leeway: '5 sec' is not a duration (use 250ms, 5s, 2m)",
        id="bad-leeway",
    ),
    pytest.param(
        {"auth": {"jwt": {**JWKS, "audience": ["a", 3]}}},
        "auth.jwt.audience[1]: expected a string, got 3",
        id="bad-audience",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "*", "require": "api_key"}, {"match": "*"}]}},
        "auth.rules[1].require: required",
        id="rule-without-require",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "*", "require": "apikey"}]}},
        "auth.rules[0].require: expected 'none', 'api_key', 'jwt' or 'any', got 'apikey'",
        id="unknown-require",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "*", "require": "none", "scope": ["a"]}]}},
        "auth.rules[0].scope: unknown key (did you mean 'scopes'?)",
        id="misspelt-rule-key",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": {"match": "*", "require": "none"}}},
        "auth.rules: expected a list, got a mapping",
        id="rules-not-a-list",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "demo users/*", "require": "none"}]}},
        "auth.rules[0].match: 'demo users/*' is not a method glob (like "
        "demo.users.v1.UserService/Get* or demo.admin.*)",
        id="bad-glob",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "a/b/c", "require": "none"}]}},
        "auth.rules[0].match: 'a/b/c' is not a method glob (like "
        "demo.users.v1.UserService/Get* or demo.admin.*)",
        id="glob-with-two-slashes",
    ),
    pytest.param(
        {
            "auth": {
                "rules": [{"match": "a.*", "require": "none"}, {"match": "*", "require": "api_key"}]
            }
        },
        "auth.rules[1].require: api_key needs auth.api_keys, which is not set",
        id="api-key-rule-without-keys",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "*", "require": "jwt"}]}},
        "auth.rules[0].require: jwt needs auth.jwt, which is not set",
        id="jwt-rule-without-jwt",
    ),
    pytest.param(
        {"auth": {"rules": [{"match": "*", "require": "any"}]}},
        "auth.rules[0].require: any needs auth.api_keys or auth.jwt, and neither is set",
        id="any-rule-without-credentials",
    ),
    pytest.param(
        {"auth": {**ANY_KEY, "rules": [{"match": "*", "require": "api_key", "scopes": "admin"}]}},
        "auth.rules[0].scopes: an API key checks no scopes: use require: jwt or any for a rule "
        "with scopes",
        id="scopes-with-api-key",
    ),
    pytest.param(
        {"auth": {"rules": [{"match": "*", "require": "none", "scopes": ["admin"]}]}},
        "auth.rules[0].scopes: a rule requiring nothing checks no scopes: use require: jwt or any "
        "for a rule with scopes",
        id="scopes-with-none",
    ),
    pytest.param(
        {"auth": {"jwt": JWKS, "rules": [{"match": "*", "require": "jwt", "scopes": ["a b"]}]}},
        "auth.rules[0].scopes[0]: 'a b' is not a scope (no spaces, quotes or backslashes)",
        id="scope-with-space",
    ),
]


@pytest.mark.parametrize(("data", "message"), AUTH_ERRORS)
def test_auth_errors(data: dict[str, Any], message: str) -> None:
    assert refusal(data) == message


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        pytest.param("100/s", 100.0, id="per-second"),
        pytest.param("10/m", 10 / 60, id="per-minute"),
        pytest.param("5/h", 5 / 3600, id="per-hour"),
        pytest.param("0.5/s", 0.5, id="decimal"),
        pytest.param(".5/s", 0.5, id="leading-dot"),
        pytest.param(" 2 / s ", 2.0, id="spaces"),
        pytest.param(3, 3.0, id="bare-number-is-per-second"),
    ],
)
def test_rate(rate: Any, per_second: float) -> None:
    rule = settings({"rate_limits": [{"match": "*", "key": "ip", "rate": rate}]}).rate_limits[0]
    assert rule.rate == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        pytest.param("100/s", 100, id="one-second-of-rate"),
        pytest.param("2.5/s", 3, id="rounded-up"),
        pytest.param("10/m", 1, id="at-least-one"),
    ],
)
def test_burst_defaults_to_one_second_of_rate(rate: str, burst: int) -> None:
    rule = settings({"rate_limits": [{"match": "*", "key": "ip", "rate": rate}]}).rate_limits[0]
    assert rule.burst == burst
    assert RateLimitRule(match="*", key="ip", rate=rate).burst == burst


def test_rate_limits_list_and_mapping_forms() -> None:
    rules = [
        {"match": "*", "key": "ip", "rate": "100/s", "burst": 200},
        {"match": "demo.users.v1.UserService/*", "key": "subject", "rate": "10/m", "burst": 5},
        {"match": "demo.echo.*", "key": "api_key", "rate": "1/h", "burst": "2"},
    ]
    expected = (
        RateLimitRule(match="*", key="ip", rate=100.0, burst=200),
        RateLimitRule(match="demo.users.v1.UserService/*", key="subject", rate=1 / 6, burst=5),
        RateLimitRule(match="demo.echo.*", key="api_key", rate=1 / 3600, burst=2),
    )
    assert settings({"rate_limits": rules}).rate_limits == expected
    assert settings({"rate_limits": {"rules": rules}}).rate_limits == expected
    assert settings({"rate_limits": {"rules": rules, "store": "memory"}}).rate_limits == expected
    assert settings({}).rate_limits == ()
    assert settings({"rate_limits": []}).rate_limits == ()


RULE = {"match": "*", "key": "ip", "rate": "1/s"}
RATE_LIMIT_ERRORS = [
    pytest.param([{**RULE, "rate": "100"}], "rate_limits[0].rate: '100' is not a rate (use "
                 "100/s, 10/m or 5/h)", id="rate-without-unit"),
    pytest.param([RULE, {**RULE, "rate": "10/d"}], "rate_limits[1].rate: '10/d' is not a rate "
                 "(use 100/s, 10/m or 5/h)", id="rate-per-day"),
    pytest.param([{**RULE, "rate": "0/s"}], "rate_limits[0].rate: must be more than zero, got "
                 "'0/s'", id="zero-rate"),
    pytest.param([{**RULE, "rate": True}], "rate_limits[0].rate: true is not a rate (use 100/s, "
                 "10/m or 5/h)", id="rate-a-bool"),
    pytest.param([{**RULE, "burst": 0}], "rate_limits[0].burst: must be more than zero, got 0",
                 id="zero-burst"),
    pytest.param([{**RULE, "burst": 2.5}], "rate_limits[0].burst: expected a whole number, got "
                 "2.5", id="fractional-burst"),
    pytest.param([{**RULE, "key": "address"}], "rate_limits[0].key: expected 'ip', 'api_key' or "
                 "'subject', got 'address'", id="unknown-key-kind"),
    pytest.param([{"key": "ip", "rate": "1/s"}], "rate_limits[0].match: required",
                 id="rule-without-match"),
    pytest.param([{**RULE, "brust": 3}], "rate_limits[0].brust: unknown key (did you mean "
                 "'burst'?)", id="misspelt-burst"),
    pytest.param({"rules": [{**RULE, "rate": "1/x"}]}, "rate_limits.rules[0].rate: '1/x' is not "
                 "a rate (use 100/s, 10/m or 5/h)", id="mapping-form-names-rules"),
    pytest.param({"store": "redis://127.0.0.1:6379/x", "rules": [RULE]}, "rate_limits.store: "
                 "'redis://127.0.0.1/x': the database after the host is a number (like /0), "
                 "not 'x'", id="redis-store-bad-db"),
    pytest.param({"store": "disk"}, "rate_limits.store: 'disk' is not a store (use memory, or "
                 "redis://host:port/db)", id="unknown-store"),
    pytest.param({"rule": []}, "rate_limits.rule: unknown key (did you mean 'rules'?)",
                 id="misspelt-rules"),
    pytest.param("100/s", "rate_limits: expected a mapping, got '100/s'", id="a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "message"), RATE_LIMIT_ERRORS)
def test_rate_limit_errors(value: Any, message: str) -> None:
    assert refusal({"rate_limits": value}) == message


@pytest.mark.parametrize(
    ("proxies", "expected"),
    [
        pytest.param(["10.0.0.0/8"], ["10.0.0.0/8"], id="network"),
        pytest.param("192.168.1.7", ["192.168.1.7/32"], id="one-address"),
        pytest.param(["::1", "fd00::/8"], ["::1/128", "fd00::/8"], id="ipv6"),
        pytest.param(["10.0.0.0/8", "10.0.0.0/8"], ["10.0.0.0/8"], id="repeats-dropped"),
    ],
)
def test_trusted_proxies(proxies: Any, expected: list[str]) -> None:
    got = settings({"trusted_proxies": proxies}).trusted_proxies
    assert got == tuple(ipaddress.ip_network(n) for n in expected)


@pytest.mark.parametrize(
    ("proxies", "message"),
    [
        pytest.param(["10.0.0.0/8", "10.0.0.1/8"], "trusted_proxies[1]: '10.0.0.1/8' has host "
                     "bits set (did you mean '10.0.0.0/8'?)", id="host-bits"),
        pytest.param("proxy.internal", "trusted_proxies: 'proxy.internal' is not an IP address "
                     "or network (like 10.0.0.0/8)", id="hostname"),
        pytest.param(["10.0.0.0/33"], "trusted_proxies[0]: '10.0.0.0/33' is not an IP address "
                     "or network (like 10.0.0.0/8)", id="bad-prefix"),
        pytest.param({"a": 1}, "trusted_proxies: expected a list of addresses or networks, got "
                     "a mapping", id="mapping"),
    ],
)  # fmt: skip
def test_trusted_proxies_errors(proxies: Any, message: str) -> None:
    assert refusal({"trusted_proxies": proxies}) == message


def test_cors_defaults_and_every_key() -> None:
    assert settings({}).cors == CorsSettings(
        allow_origins=(), allow_headers=None, expose_headers=None, max_age=600.0,
        allow_credentials=False,
    )  # fmt: skip
    cors = settings({"cors": {
        "allow_origins": ["http://localhost:3000"],
        "allow_headers": ["Authorization", "content-type", "X-Api-Key", "authorization"],
        "expose_headers": "X-Request-Id",
        "max_age": "10m",
        "allow_credentials": True,
    }}).cors  # fmt: skip
    assert cors.allow_origins == ("http://localhost:3000",)
    assert cors.allow_headers == ("authorization", "content-type", "x-api-key")
    assert cors.expose_headers == ("x-request-id",)
    assert (cors.max_age, cors.allow_credentials) == (600.0, True)
    assert settings({"cors": {"allow_headers": [], "max_age": 0}}).cors.allow_headers == ()


@pytest.mark.parametrize(
    ("cors", "message"),
    [
        pytest.param({"allow_origins": ["https://a.example", "*"], "allow_credentials": True},
                     "cors.allow_credentials: cannot be true while allow_origins holds '*' "
                     "(browsers refuse credentials for any origin): list the origins instead",
                     id="credentials-for-any-origin"),
        pytest.param({"allow_headers": ["x-ok", "x bad"]}, "cors.allow_headers[1]: 'x bad' is "
                     "not a valid HTTP header name", id="bad-allow-header"),
        pytest.param({"expose_headers": "a:b"}, "cors.expose_headers: 'a:b' is not a valid HTTP "
                     "header name", id="bad-expose-header"),
        pytest.param({"max_age": "-1s"}, "cors.max_age: '-1s' is not a duration (use 250ms, 5s, "
                     "2m)", id="negative-max-age"),
        pytest.param({"allow_credentials": "yes"}, "cors.allow_credentials: expected true or "
                     "false, got 'yes'", id="credentials-yes"),
        pytest.param({"allow_origin": ["*"]}, "cors.allow_origin: unknown key (did you mean "
                     "'allow_origins'?)", id="misspelt-key"),
    ],
)  # fmt: skip
def test_cors_errors(cors: dict[str, Any], message: str) -> None:
    assert refusal({"cors": cors}) == message


def test_an_unset_variable_is_named_in_a_policy_error() -> None:
    data = {"rate_limits": [{**RULE, "rate": "${RATE}/s"}]}
    assert refusal(data) == (
        "rate_limits[0].rate: '/s' is not a rate (use 100/s, 10/m or 5/h) (environment variable "
        "RATE is not set)"
    )
