"""The config file's JSON Schema: `bridge schema` prints it, bridge.schema.json holds it, the
committed bridge.yaml validates against it, and it takes what the loader takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge.cli import main
from bridge.config import ConfigError, config_schema, settings_from_dict
from bridge.config.load import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft202012Validator(config_schema())


def test_the_committed_schema_is_what_bridge_schema_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == (ROOT / "bridge.schema.json").read_text(encoding="utf-8"), (
        "bridge.schema.json is stale: run `bridge schema > bridge.schema.json`"
    )
    assert json.loads(printed) == config_schema()


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(config_schema())


def test_the_committed_config_validates_and_names_the_schema() -> None:
    text = (ROOT / "bridge.yaml").read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=bridge.schema.json\n")
    # YAML 1.2 (the YAML language server's) and the bridge's loader keep `on:` a key; PyYAML's
    # YAML 1.1 safe_load would read it as true.
    VALIDATOR.validate(parse_yaml("bridge.yaml", text))


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", schema)] + [(name, d) for name, d in schema["$defs"].items()]
    return [
        (f"{where}.{key}", value)
        for where, d in found
        for key, value in d.get("properties", {}).items()
    ] + [(name, {"description": d.get("description")}) for name, d in schema["$defs"].items()]


@pytest.mark.parametrize(("where", "schema"), _properties(config_schema()))
def test_every_key_and_section_is_described(where: str, schema: dict[str, Any]) -> None:
    """The descriptions are the config reference an editor shows on hover."""
    assert schema.get("description"), where
    assert "\n" not in schema["description"].replace("\n\n", ""), where


# Shapes the loader accepts; the schema must take each of them too (an editor would otherwise
# flag a valid file). Durations and sizes as text or numbers, ${NAME} for any scalar.
VALID = [
    pytest.param({"upstreams": {"u": {"targets": "h:1", "timeout": 2.5}}}, id="number-duration"),
    pytest.param({"upstreams": {"u": {"targets": ["h:1"], "timeout": "1m30s"}}}, id="duration"),
    pytest.param({"upstreams": {"u": {"targets": "${T}", "tls": "${TLS}"}}}, id="env-bool"),
    pytest.param({"limits": {"max_body": 1024, "ws_max_frame": "512KiB"}}, id="sizes"),
    pytest.param({"limits": {"max_body": "${BODY}", "ws_max_calls": "${CALLS}"}}, id="env-size"),
    pytest.param({"limits": {"ws_max_calls": "7", "header_timeout": "${D}"}}, id="count-string"),
    pytest.param({"forward_headers": "x-tenant", "protos": {"include": "p"}}, id="single-strings"),
    pytest.param({"cors": {"max_age": 600, "allow_credentials": "${C}"}}, id="cors"),
    pytest.param({"auth": {"api_keys": {"keys": "${KEYS}"}, "rules": [
        {"match": "*", "require": "api_key"}]}}, id="auth-keys-env"),
    pytest.param({"auth": {"api_keys": {"keys": ["a=k1", "k2"]}}}, id="auth-keys-list"),
    pytest.param({"auth": {"jwt": {"algorithms": "RS256", "jwks_file": "k.json",
                                   "audience": ["a"], "leeway": 5}}}, id="jwt"),
    pytest.param({"rate_limits": [{"match": "*", "key": "ip", "rate": "100/s", "burst": 200}]},
                 id="rate-limits-list"),
    pytest.param({"rate_limits": {"rules": [{"match": "*", "key": "ip", "rate": "${RATE}"}],
                                  "store": "memory"}}, id="rate-limits-mapping"),
    pytest.param({"trusted_proxies": ["10.0.0.0/8", "::1"]}, id="trusted-proxies"),
    pytest.param({"cache": [{"match": "*", "ttl": "30s", "vary": ["subject", "header:x-t"],
                             "stale_if_error": "5m"}]}, id="cache-list"),
    pytest.param({"cache": {"rules": [{"match": "*", "ttl": 1}], "store": "memory",
                            "max_entries": 10, "max_bytes": "1MiB"}}, id="cache-mapping"),
    pytest.param({"fallbacks": [{"match": "*", "on": "UNAVAILABLE", "response": {"a": []}}]},
                 id="fallbacks"),
    pytest.param({"upstreams": {"u": {"targets": "h:1", "retries": {"on": "unavailable"}}},
                  "fallbacks": [{"match": "*", "on": [" Aborted", "${CODE}"], "response": {}}]},
                 id="status-codes-any-case"),
    pytest.param({"admin": {"token": None}, "auth": None}, id="nulls"),
]  # fmt: skip
ENV = {"T": "h:1", "D": "2s", "TLS": "true", "BODY": "1KiB", "CALLS": "3", "C": "false",
       "KEYS": "k1", "RATE": "1/s", "CODE": "internal"}  # fmt: skip


@pytest.mark.parametrize("data", VALID)
def test_what_the_loader_takes_the_schema_takes(data: dict[str, Any]) -> None:
    settings_from_dict(data, Path("/c/bridge.yaml"), env=ENV)
    VALIDATOR.validate(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"lissten": "h:1"}, id="unknown-key"),
        pytest.param({"cache": [{"match": "*"}]}, id="cache-rule-without-ttl"),
        pytest.param(
            {"fallbacks": [{"match": "*", "on": ["unavailble"], "response": {}}]},
            id="fallback-code-name",
        ),
        pytest.param(
            {"fallbacks": [{"match": "*", "on": [], "response": {}}]}, id="fallback-no-codes"
        ),
        pytest.param(
            {"upstreams": {"u": {"targets": "h:1", "retries": {"on": ["OK"]}}}}, id="status-code"
        ),
        pytest.param({"upstreams": {"u": {"timeout": "5s"}}}, id="missing-targets"),
        pytest.param({"limits": {"max_body": "4M"}}, id="bad-size"),
        pytest.param({"limits": {"idle_timeout": "5x"}}, id="bad-duration"),
        pytest.param({"json": {"emit_unpopulated": "yes"}}, id="bool-as-text"),
        pytest.param({"rate_limits": [{"match": "*", "key": "ipp", "rate": "1/s"}]}, id="enum"),
        pytest.param({"auth": {"rules": [{"match": "*"}]}}, id="rule-without-require"),
    ],
)
def test_what_the_schema_refuses_the_loader_refuses(data: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(data)
    with pytest.raises(ConfigError):
        settings_from_dict(data, Path("/c/bridge.yaml"), env={})
