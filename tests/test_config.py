"""Tests for bridge.config: durations, sizes, a full valid file, and every kind of user error."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.config import (
    DEFAULT_FORWARD_HEADERS,
    ConfigError,
    CorsSettings,
    JsonOptions,
    Limits,
    Settings,
    UpstreamSettings,
    load_settings,
    parse_duration,
    parse_size,
    settings_from_dict,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("250ms", 0.25, id="ms"),
        pytest.param("5s", 5.0, id="s"),
        pytest.param("2m", 120.0, id="m"),
        pytest.param("1h", 3600.0, id="h"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param("1m30s", 90.0, id="compound"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param(" 5s ", 5.0, id="spaces-around"),
        pytest.param("3", 3.0, id="bare-string-is-seconds"),
        pytest.param("0.5", 0.5, id="bare-fraction-string"),
        pytest.param(7, 7.0, id="int-is-seconds"),
        pytest.param(0.1, 0.1, id="float-is-seconds"),
    ],
)
def test_parse_duration_valid(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("5x", id="unknown-unit"),
        pytest.param("", id="empty"),
        pytest.param("s", id="unit-only"),
        pytest.param("-5s", id="negative-string"),
        pytest.param(-1, id="negative-number"),
        pytest.param("5 s", id="space-inside"),
        pytest.param("5S", id="upper-case-unit"),
        pytest.param("1d", id="days"),
        pytest.param(True, id="bool"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(None, id="none"),
    ],
)
def test_parse_duration_invalid(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("4MiB", 4 * 2**20, id="MiB"),
        pytest.param("512KiB", 512 * 2**10, id="KiB"),
        pytest.param("1GiB", 2**30, id="GiB"),
        pytest.param("1MB", 10**6, id="MB-is-decimal"),
        pytest.param("2kB", 2000, id="kB"),
        pytest.param("100", 100, id="bare-bytes"),
        pytest.param("100B", 100, id="B"),
        pytest.param("4 MiB", 4 * 2**20, id="space-before-unit"),
        pytest.param("4mib", 4 * 2**20, id="lower-case"),
        pytest.param("1.5KiB", 1536, id="whole-fraction"),
        pytest.param(2048, 2048, id="int"),
        pytest.param(0, 0, id="zero"),
    ],
)
def test_parse_size_valid(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("4M", "is not a size", id="ambiguous-M"),
        pytest.param("4XB", "is not a size", id="unknown-unit"),
        pytest.param("", "is not a size", id="empty"),
        pytest.param("MiB", "is not a size", id="unit-only"),
        pytest.param("-1", "is not a size", id="negative-string"),
        pytest.param(-1, "is not a size", id="negative-int"),
        pytest.param(1.5, "is not a size", id="float"),
        pytest.param(True, "is not a size", id="bool"),
        pytest.param("0.1KiB", "not a whole number of bytes", id="fractional-bytes"),
    ],
)
def test_parse_size_invalid(text: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_size(text)  # type: ignore[arg-type]


FULL_CONFIG = """\
listen: "[::1]:9090"
admin:
  token: ${ADMIN_TOKEN}
protos:
  include: [protos, /abs/protos]
  store: state/registry
upstreams:
  users:
    targets: [127.0.0.1:50051, "users-2.internal:50051"]
    timeout: 5s
    tls: false
  orders:
    targets: ${ORDERS_TARGET}
    timeout: 250ms
    tls: true
    reflection: true
  local:
    targets: [unix:/run/local.sock]
services:
  demo.users.v1.*: users
  demo.orders.v1.OrderService: orders
  demo.*: local
json:
  emit_unpopulated: false
  use_proto_names: true
  discard_unknown: true
forward_headers: [Authorization, X-Tenant, x-tenant]
cors:
  allow_origins: ["http://localhost:3000", "HTTPS://App.Example.com"]
limits:
  max_body: 8MiB
  ws_max_frame: 512KiB
  ws_max_calls: 10
  max_metadata: 16KiB
"""


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_full_config_sets_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_CONFIG)
    env = {"ADMIN_TOKEN": "s3cret", "ORDERS_TARGET": "orders.internal:443"}

    s = load_settings(path, env=env)

    assert s.source == path
    assert s.source.is_absolute()
    assert s.listen == ("::1", 9090)
    assert s.admin_token == "s3cret"
    assert s.protos_include == (tmp_path / "protos", Path("/abs/protos"))
    assert s.protos_store == str(tmp_path / "state" / "registry")
    assert list(s.upstreams) == ["users", "orders", "local"]
    assert s.upstreams["users"] == UpstreamSettings(
        name="users", targets=("127.0.0.1:50051", "users-2.internal:50051"), timeout=5.0
    )
    assert s.upstreams["orders"] == UpstreamSettings(
        name="orders", targets=("orders.internal:443",), timeout=0.25, tls=True, reflection=True
    )
    assert s.upstreams["local"] == UpstreamSettings(
        name="local", targets=("unix:/run/local.sock",), timeout=30.0
    )
    assert s.services == (
        ("demo.users.v1.*", "users"),
        ("demo.orders.v1.OrderService", "orders"),
        ("demo.*", "local"),
    )
    assert s.json == JsonOptions(emit_unpopulated=False, use_proto_names=True, discard_unknown=True)
    assert s.forward_headers == ("authorization", "x-tenant")
    assert s.cors == CorsSettings(
        allow_origins=("http://localhost:3000", "https://app.example.com")
    )
    assert s.limits == Limits(
        max_body=8 * 2**20, ws_max_frame=512 * 2**10, ws_max_calls=10, max_metadata=16 * 2**10
    )


def test_edge_limits_and_their_defaults(tmp_path: Path) -> None:
    """SPEC section 6's connection limits: durations as strings, the count as a number."""
    assert Limits() == Limits(
        max_connections=10_000, header_timeout=10.0, idle_timeout=75.0, body_timeout=60.0
    )
    text = """
    limits:
      max_connections: 500
      header_timeout: 2500ms
      idle_timeout: 2m
      body_timeout: 1m30s
    """
    limits = load_settings(write(tmp_path, text), env={}).limits
    assert (limits.max_connections, limits.header_timeout) == (500, 2.5)
    assert (limits.idle_timeout, limits.body_timeout) == (120.0, 90.0)
    assert limits.max_body == Limits().max_body  # the other limits keep their defaults


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL_CONFIG), env={"ORDERS_TARGET": "o:1"})
    with pytest.raises(AttributeError):
        s.listen = ("0.0.0.0", 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.upstreams["x"] = s.upstreams["users"]  # type: ignore[index]
    assert hash(s) == hash(s)


@pytest.mark.parametrize(
    ("service", "upstream"),
    [
        pytest.param("demo.users.v1.UserService", "users", id="first-glob"),
        pytest.param("demo.orders.v1.OrderService", "orders", id="exact-name"),
        pytest.param("demo.orders.v1.Other", "local", id="falls-through-to-later-glob"),
        pytest.param("acme.Thing", None, id="no-match"),
        pytest.param("DEMO.users.v1.UserService", None, id="case-sensitive"),
    ],
)
def test_upstream_for_uses_first_matching_glob(
    tmp_path: Path, service: str, upstream: str | None
) -> None:
    s = load_settings(write(tmp_path, FULL_CONFIG), env={"ORDERS_TARGET": "o:1"})
    assert s.upstream_for(service) == upstream


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    s = load_settings(path, env={})
    assert s == Settings(source=path)
    assert s.listen == ("127.0.0.1", 8080)
    assert s.admin_token is None
    assert s.protos_include == ()
    assert s.protos_store == str(tmp_path / ".bridge" / "registry")
    assert dict(s.upstreams) == {}
    assert s.services == ()
    assert s.json == JsonOptions()
    assert s.forward_headers == DEFAULT_FORWARD_HEADERS
    assert s.cors == CorsSettings()
    assert s.limits == Limits()


def test_unset_admin_token_turns_admin_api_off(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "admin:\n  token: ${BRIDGE_ADMIN_TOKEN}\n"), env={})
    assert s.admin_token is None


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_TOKEN", "from-os")
    s = load_settings(write(tmp_path, "admin: {token: '${BRIDGE_TEST_TOKEN}'}\n"))
    assert s.admin_token == "from-os"


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        pytest.param("${HOST}:50051", {"HOST": "db"}, "db:50051", id="part-of-value"),
        pytest.param("${HOST}:${PORT}", {"HOST": "db", "PORT": "1"}, "db:1", id="two-refs"),
        pytest.param("${HOST:-fallback}:5", {}, "fallback:5", id="default-when-unset"),
        pytest.param("${HOST:-fallback}:5", {"HOST": ""}, "fallback:5", id="default-when-empty"),
        pytest.param("${HOST:-x}:5", {"HOST": "db"}, "db:5", id="set-wins-over-default"),
    ],
)
def test_env_substitution_in_strings(value: str, env: dict[str, str], expected: str) -> None:
    data = {"upstreams": {"u": {"targets": [value]}}}
    s = settings_from_dict(data, Path("bridge.yaml"), env=env)
    assert s.upstreams["u"].targets == (expected,)


def test_escaped_env_reference_is_literal() -> None:
    s = settings_from_dict({"admin": {"token": "a$${NOT_ENV}b"}}, Path("b.yaml"), env={})
    assert s.admin_token == "a${NOT_ENV}b"


def test_env_values_for_bools_and_counts() -> None:
    data = {
        "upstreams": {"u": {"targets": ["h:1"], "tls": "${TLS}", "timeout": "${T}"}},
        "limits": {"ws_max_calls": "${CALLS}", "max_body": "${BODY}"},
    }
    env = {"TLS": "true", "T": "2s", "CALLS": "7", "BODY": "1KiB"}
    s = settings_from_dict(data, Path("b.yaml"), env=env)
    assert s.upstreams["u"].tls is True
    assert s.upstreams["u"].timeout == 2.0
    assert s.limits.ws_max_calls == 7
    assert s.limits.max_body == 1024


def test_settings_from_dict_resolves_against_source_folder(tmp_path: Path) -> None:
    s = settings_from_dict({"protos": {"include": "p"}}, tmp_path / "conf" / "b.yaml", env={})
    assert s.protos_include == (tmp_path / "conf" / "p",)
    assert s.protos_store == str(tmp_path / "conf" / ".bridge" / "registry")


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        pytest.param("/var/lib/bridge", "/var/lib/bridge", id="absolute-path"),
        pytest.param("state/../registry", "{folder}/registry", id="relative-to-the-file"),
    ],
)
def test_protos_store(tmp_path: Path, store: str, expected: str) -> None:
    s = settings_from_dict({"protos": {"store": store}}, tmp_path / "b.yaml", env={})
    assert s.protos_store == expected.format(folder=tmp_path)


@pytest.mark.parametrize(
    ("store", "kept"),
    [
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("rediss://:pw@cache:6380", "rediss://:pw@cache:6380"),
        ("${STORE}", "redis://r:6379"),
    ],
)
def test_a_redis_protos_store_is_kept_as_a_url_not_made_a_folder(
    tmp_path: Path, store: str, kept: str
) -> None:
    """SPEC 10: a Redis URL names the shared store; it must not become a folder named `redis:`."""
    settings = settings_from_dict(
        {"protos": {"store": store}}, tmp_path / "b.yaml", env={"STORE": "redis://r:6379"}
    )
    assert settings.protos_store == kept
    assert not (tmp_path / "redis:").exists()


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ("redis://:secret@cache:99999/0", "'redis://cache/0': the port is not a number from 1 to "
         "65535"),
        ("redis:///0", "'redis:///0' names no host (use redis://host:6379/0)"),
        ("redis://:secret@cache/db", "'redis://cache/db': the database after the host is a "
         "number (like /0), not 'db'"),
        ("s3://bucket", "'s3://bucket': use a folder, or a Redis URL (redis://host:port/db)"),
    ],
)  # fmt: skip
def test_a_bad_store_url_is_named_without_its_password(
    tmp_path: Path, store: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"protos": {"store": store}}, tmp_path / "b.yaml")
    assert str(info.value) == f"{tmp_path / 'b.yaml'}: protos.store: {problem}"
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("0.0.0.0:80", ("0.0.0.0", 80), id="ipv4"),
        pytest.param("localhost:8080", ("localhost", 8080), id="hostname"),
        pytest.param("[::]:8080", ("::", 8080), id="ipv6-any"),
        pytest.param("127.0.0.1:0", ("127.0.0.1", 0), id="ephemeral-port"),
    ],
)
def test_listen(listen: str, expected: tuple[str, int]) -> None:
    assert settings_from_dict({"listen": listen}, Path("b.yaml"), env={}).listen == expected


# retries and fallbacks read their `on` alike: where each key's list sits in a file.
ON_KEYS = [
    pytest.param(lambda on: {"upstreams": {"u": {"targets": "h:1", "retries": {"on": on}}}},
                 "upstreams.u.retries.on", id="retries"),
    pytest.param(lambda on: {"fallbacks": [{"match": "*", "on": on, "response": {}}]},
                 "fallbacks[0].on", id="fallbacks"),
]  # fmt: skip


def _codes(settings: Settings) -> tuple[str, ...]:
    if settings.fallbacks:
        return settings.fallbacks[0].on
    retries = settings.upstreams["u"].retries
    assert retries is not None
    return retries.on


@pytest.mark.parametrize(("place", "key"), ON_KEYS)
def test_status_code_names_are_read_in_any_case_and_kept_as_grpc_spells_them(
    place: Callable[[object], dict], key: str
) -> None:
    on = ["unavailable", " Deadline_Exceeded ", "UNAVAILABLE"]
    assert _codes(settings_from_dict(place(on), Path("b.yaml"), env={})) == (
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    )
    assert _codes(settings_from_dict(place("aborted"), Path("b.yaml"), env={})) == ("ABORTED",)


@pytest.mark.parametrize(("place", "key"), ON_KEYS)
@pytest.mark.parametrize(
    ("on", "problem"),
    [
        pytest.param(["ok"], "[0]: OK is not a failure: list the codes of failed calls, like "
                     "UNAVAILABLE", id="ok"),
        pytest.param([], ": required: list at least one code, like UNAVAILABLE", id="empty"),
        pytest.param(["UNAVAILABLE", "deadline-exceeded"], "[1]: 'deadline-exceeded' is not a "
                     "gRPC status code name (did you mean 'DEADLINE_EXCEEDED'?)", id="misspelt"),
        pytest.param("nope", ": 'nope' is not a gRPC status code name (use one of CANCELLED, "
                     "UNKNOWN, INVALID_ARGUMENT,", id="unknown"),
        pytest.param([3], "[0]: expected a gRPC status code name, got 3", id="number"),
    ],
)  # fmt: skip
def test_status_code_names_are_refused_alike_under_both_keys(
    place: Callable[[object], dict], key: str, on: object, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(place(on), Path("b.yaml"), env={})
    assert f"b.yaml: {key}{problem}" in str(info.value)


def test_yaml_merge_keys_are_allowed(tmp_path: Path) -> None:
    text = """\
    upstreams:
      a: &base {targets: ["h:1"], timeout: 2s}
      b:
        <<: *base
        timeout: 3s
    """
    s = load_settings(write(tmp_path, text), env={})
    assert s.upstreams["b"].timeout == 3.0
    assert s.upstreams["b"].targets == ("h:1",)


# Each case: YAML text, env, then the pieces the one-line message must contain.
ERROR_CASES = [
    pytest.param(
        "upstreams:\n  users:\n    targets: [h:1]\n    timout: 5s\n",
        {},
        ["upstreams.users.timout: unknown key (did you mean 'timeout'?)"],
        id="unknown-key-with-suggestion",
    ),
    pytest.param(
        "lissten: 127.0.0.1:8080\n",
        {},
        ["lissten: unknown key (did you mean 'listen'?)"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "json:\n  zzz: true\n",
        {},
        ["json.zzz: unknown key (known keys: discard_unknown, emit_unpopulated"],
        id="unknown-key-lists-known-keys",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: [h:1]\n    timeout: 5x\n",
        {},
        ["upstreams.users.timeout: '5x' is not a duration (use 250ms, 5s, 2m)"],
        id="bad-duration",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: [h:1]\n    timeout: 0s\n",
        {},
        ["upstreams.users.timeout: must be more than zero, got '0s'"],
        id="zero-timeout",
    ),
    pytest.param(
        "upstreams:\n  users: {targets: [h:1]}\n  orders: {targets: [h:2]}\n"
        "services:\n  demo.users.v1.*: user\n",
        {},
        [
            "services.demo.users.v1.*",
            "unknown upstream 'user'",
            "did you mean 'users'?",
            "known upstreams: users, orders",
        ],
        id="unknown-upstream-in-services",
    ),
    pytest.param(
        "services:\n  demo.*: users\n",
        {},
        ["services.demo.*", "unknown upstream 'users'", "none are defined"],
        id="services-without-upstreams",
    ),
    pytest.param(
        "cache:\n  rules: []\n  store: redis://cache:http\n",
        {},
        ["cache.store: 'redis://cache': the port is not a number from 1 to 65535"],
        id="cache-redis-store-bad-port",
    ),
    pytest.param(
        "fallbacks:\n  - {match: '*', on: [unavailble], response: {}}\n",
        {},
        [
            "fallbacks[0].on[0]: 'unavailble' is not a gRPC status code name (did you mean "
            "'UNAVAILABLE'?)"
        ],
        id="fallback-code-name",
    ),
    pytest.param(
        "upstreams:\n  c:\n    targets: [h:1]\n    retries: {attempts: 0}\n",
        {},
        ["upstreams.c.retries.attempts: must be more than zero, got 0"],
        id="upstream-retries-attempts",
    ),
    pytest.param(
        "upstreams:\n  c:\n    targets: [h:1]\n    health_chek: {}\n",
        {},
        ["upstreams.c.health_chek: unknown key (did you mean 'health_check'?)"],
        id="misspelt-unsupported-key-is-suggested",
    ),
    pytest.param(
        "upstreams:\n  c:\n    tragets: [h:1]\n",
        {},
        ["upstreams.c.tragets: unknown key (did you mean 'targets'?)"],
        id="misspelt-required-key-named-before-the-missing-one",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: ['${USERS_TARGET}']\n",
        {},
        ["upstreams.users.targets[0]", "environment variable USERS_TARGET is not set"],
        id="required-env-unset",
    ),
    pytest.param(
        "listen: ${LISTEN}\n",
        {"LISTEN": ""},
        ["listen: is empty", "environment variable LISTEN is set but empty"],
        id="required-env-empty",
    ),
    pytest.param(
        "admin:\n  token: ${BAD-NAME}\n",
        {},
        ["admin.token", "is not an environment reference"],
        id="malformed-env-reference",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: ${USERS_TARGET}\n",
        {},
        ["upstreams.users.targets: is empty: environment variable USERS_TARGET is not set"],
        id="required-env-unset-single-string",
    ),
    pytest.param(
        "upstreams:\n  users: {targets: ['${HOST}:${PORT}']}\n",
        {"HOST": ""},
        ["environment variable HOST is set but empty, environment variable PORT is not set"],
        id="required-env-names-every-variable",
    ),
    pytest.param(
        "upstreams:\n  users:\n",
        {},
        ["upstreams.users.targets: required"],
        id="upstream-without-settings",
    ),
    pytest.param(
        "protos:\n  include: ''\n",
        {},
        ["protos.include: must not be empty"],
        id="empty-include",
    ),
    pytest.param(
        "services:\n  demo.Users/Get: users\nupstreams: {users: {targets: [h:1]}}\n",
        {},
        ["services.demo.Users/Get: expected a fully-qualified service name or glob"],
        id="method-instead-of-service",
    ),
    pytest.param(
        "upstreams:\n  users:\n    timeout: 5s\n",
        {},
        ["upstreams.users.targets: required"],
        id="missing-targets",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: []\n",
        {},
        ["upstreams.users.targets: required"],
        id="empty-targets",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: [localhost]\n",
        {},
        ["upstreams.users.targets[0]: 'localhost' is not host:port"],
        id="target-without-port",
    ),
    pytest.param(
        "upstreams:\n  users:\n    targets: ['h:0', 'h:70000']\n",
        {},
        ["upstreams.users.targets[0]: 'h:0' is not host:port"],
        id="target-port-out-of-range",
    ),
    pytest.param(
        "upstreams:\n  u:\n    targets: ['::1:50051']\n",
        {},
        ["upstreams.u.targets[0]: '::1:50051' is not host:port"],
        id="ipv6-target-without-brackets",
    ),
    pytest.param(
        "upstreams:\n  'bad name': {targets: [h:1]}\n",
        {},
        ["upstreams.bad name: an upstream name may only use"],
        id="bad-upstream-name",
    ),
    pytest.param(
        "upstreams:\n  u: [h:1]\n",
        {},
        ["upstreams.u: expected a mapping, got a list"],
        id="upstream-not-a-mapping",
    ),
    pytest.param(
        "json:\n  emit_unpopulated: 'yes'\n",
        {},
        ["json.emit_unpopulated: expected true or false, got 'yes'"],
        id="bool-wrong-type",
    ),
    pytest.param(
        "upstreams:\n  u: {targets: [h:1], tls: 'true'}\n",
        {},
        ["upstreams.u.tls: expected true or false, got 'true'"],
        id="quoted-bool-is-not-a-bool",
    ),
    pytest.param(
        "listen: 8080\n",
        {},
        ["listen: expected host:port, got 8080"],
        id="listen-port-only",
    ),
    pytest.param(
        "listen: 'localhost'\n",
        {},
        ["listen: 'localhost' is not host:port"],
        id="listen-without-port",
    ),
    pytest.param(
        "limits:\n  max_body: 4M\n",
        {},
        ["limits.max_body: '4M' is not a size"],
        id="bad-size",
    ),
    pytest.param(
        "limits:\n  ws_max_calls: 0\n",
        {},
        ["limits.ws_max_calls: must be more than zero, got 0"],
        id="zero-ws-max-calls",
    ),
    pytest.param(
        "limits:\n  ws_max_calls: 1.5\n",
        {},
        ["limits.ws_max_calls: expected a whole number, got 1.5"],
        id="fractional-ws-max-calls",
    ),
    pytest.param(
        "limits:\n  header_timeout: 10 sec\n",
        {},
        ["limits.header_timeout: '10 sec' is not a duration"],
        id="bad-header-timeout",
    ),
    pytest.param(
        "limits:\n  idle_timeout: 0s\n",
        {},
        ["limits.idle_timeout: must be more than zero, got '0s'"],
        id="zero-idle-timeout",
    ),
    pytest.param(
        "limits:\n  body_timeout: [1s]\n",
        {},
        ["limits.body_timeout: ['1s'] is not a duration"],
        id="body-timeout-not-a-string",
    ),
    pytest.param(
        "limits:\n  max_connections: 0\n",
        {},
        ["limits.max_connections: must be more than zero, got 0"],
        id="zero-max-connections",
    ),
    pytest.param(
        "limits:\n  max_connections: 10k\n",
        {},
        ["limits.max_connections: expected a whole number, got '10k'"],
        id="max-connections-with-a-unit",
    ),
    pytest.param(
        "limits:\n  header_timout: 5s\n",
        {},
        ["limits.header_timout: unknown key (did you mean 'header_timeout'?)"],
        id="misspelt-limit",
    ),
    pytest.param(
        "forward_headers: [x-ok, 'bad header']\n",
        {},
        ["forward_headers[1]: 'bad header' is not a valid HTTP header name"],
        id="bad-header-name",
    ),
    pytest.param(
        "forward_headers: {a: b}\n",
        {},
        ["forward_headers: expected a list of header names, got a mapping"],
        id="headers-not-a-list",
    ),
    pytest.param(
        "cors:\n  allow_origins: ['http://localhost:3000/']\n",
        {},
        ["cors.allow_origins[0]: 'http://localhost:3000/' is not an origin"],
        id="origin-with-path",
    ),
    pytest.param(
        "protos:\n  include: [protos, 3]\n",
        {},
        ["protos.include[1]: expected a path, got 3"],
        id="include-item-not-a-string",
    ),
    pytest.param(
        "protos:\n  store: s3://bucket\n",
        {},
        ["protos.store: 's3://bucket': use a folder, or a Redis URL (redis://host:port/db)"],
        id="unsupported-store-url",
    ),
    pytest.param(
        "json: true\n",
        {},
        ["json: expected a mapping, got true"],
        id="section-not-a-mapping",
    ),
    pytest.param(
        "- listen\n- admin\n",
        {},
        ["the top level must be a mapping of settings, got a list"],
        id="top-level-list",
    ),
    pytest.param(
        "listen: 127.0.0.1:8080\nadmin:\n  token: a\n   bad: indent\n",
        {},
        ["line 4, column", "mapping values are not allowed here"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        "upstreams:\n  users: {targets: [h:1]}\n  users: {targets: [h:2]}\n",
        {},
        ["line 3, column 3: duplicate key 'users'"],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        "listen: !!python/object:os.system x\n",
        {},
        ["line 1, column 9", "could not determine a constructor"],
        id="yaml-unsafe-tag",
    ),
]


@pytest.mark.parametrize(("text", "env", "expected"), ERROR_CASES)
def test_config_errors(tmp_path: Path, text: str, env: dict[str, str], expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for piece in expected:
        assert piece in message


def test_error_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "upstreams:\n  users:\n    targets: [h:1]\n    timeout: 5x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings("bridge.yaml", env={})
    assert str(info.value) == (
        "bridge.yaml: upstreams.users.timeout: '5x' is not a duration (use 250ms, 5s, 2m)"
    )
    assert info.value.file == "bridge.yaml"
    assert info.value.key == "upstreams.users.timeout"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_settings(path, env={})


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_settings(tmp_path, env={})


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"listen: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not UTF-8 text"):
        load_settings(path, env={})


def test_settings_from_dict_errors_name_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^conf/b\.yaml: cors\.allow_origin: unknown key"):
        settings_from_dict({"cors": {"allow_origin": ["*"]}}, Path("conf/b.yaml"), env={})
