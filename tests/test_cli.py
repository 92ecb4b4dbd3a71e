"""The bridge command: check, and serve refusing bad configs and protos before it listens."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bridge(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp_path: Path, body: str, protos: dict[str, str] | None = None) -> Path:
    for name, text in (protos or {}).items():
        path = tmp_path / "protos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    path = tmp_path / "bridge.yaml"
    path.write_text(body)
    return path


ONE_SERVICE = """
protos: {include: [protos]}
upstreams: {svc: {targets: ["127.0.0.1:1"]}}
services: {"x.*": svc}
"""

GOOD_PROTO = """syntax = "proto3";
package x;
import "google/api/annotations.proto";
message Req { string id = 1; }
service A {
  rpc Get(Req) returns (Req) { option (google.api.http) = { get: "/v1/things/{id}" }; }
}
"""


# What `make run` gives the committed config's auth policy (services/credentials.py).
DEV_CREDENTIALS = {"BRIDGE_API_KEYS": "demo=k", "BRIDGE_JWT_SECRET": "s" * 32}


def test_check_prints_the_route_table_of_the_committed_config():
    result = bridge("check", "--config", "bridge.yaml", env=DEV_CREDENTIALS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split() for line in lines]
    assert rows[0] == ["VERB", "PATH", "METHOD", "KIND", "UPSTREAM"]
    assert ["GET", "/v1/users/{id}", "demo.users.v1.UserService/GetUser", "unary", "users"] in rows
    assert ["PATCH", "/v1/{user.name=users/*}", "demo.users.v1.UserService/UpdateUser", "unary",
            "users"] in rows  # fmt: skip
    assert ["POST", "/demo.echo.v1.EchoService/Echo", "demo.echo.v1.EchoService/Echo", "unary",
            "echo"] in rows  # fmt: skip
    # the config's routes too, and the aggregate's calls in a note below the table
    assert ["GET", "/bff/v1/users/{id}/home", "aggregates[0]", "aggregate", "-"] in rows
    assert ["GET", "/v1/status", "static[0]", "static", "200", "-"] in rows
    assert any(line.startswith("aggregates[0]: aggregate of user (") for line in lines)
    # aligned: every column starts where the header's does
    table = lines[: lines.index("")]
    for column in ("PATH", "METHOD", "KIND", "UPSTREAM"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in table)


def test_a_closed_pipe_ends_quietly():
    # `bridge openapi --config bridge.yaml | head -1`: the reader leaves after one line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "openapi", "--config", "bridge.yaml"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **DEV_CREDENTIALS},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "{\n"
    proc.stdout.close()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode in (0, 141), err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def _parsers(parser):
    """The parser and every subcommand's parser, recursively."""
    yield parser
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_argument_has_a_help_text_and_no_markup():
    from bridge.cli import _parser

    parsers = list(_parsers(_parser()))
    assert {p.prog for p in parsers} >= {"bridge serve", "bridge protos add", "bridge protos list"}
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (parser.prog, action.dest)
        assert "``" not in parser.format_help() and "`" not in parser.format_help(), parser.prog


@pytest.mark.parametrize(
    ("body", "protos", "expected"),
    [
        pytest.param(
            ONE_SERVICE.replace("targets", "tragets"),
            {"x.proto": GOOD_PROTO},
            ["bridge.yaml", "upstreams.svc.tragets", "did you mean 'targets'"],
            id="unknown-key",
        ),
        pytest.param(
            ONE_SERVICE + "listen: nowhere\n",
            {"x.proto": GOOD_PROTO},
            ["bridge.yaml", "listen"],
            id="bad-listen",
        ),
        pytest.param(
            ONE_SERVICE,
            {"x.proto": GOOD_PROTO.replace("string id = 1;", "string id = 1")},
            ["x.proto:4:", 'Expected ";"'],
            id="proto-syntax-error-with-line",
        ),
        pytest.param(
            ONE_SERVICE,
            {
                "x.proto": GOOD_PROTO.replace(
                    'import "google/api/annotations.proto";', 'import "missing/thing.proto";'
                )
            },
            ["missing/thing.proto"],
            id="proto-missing-import",
        ),
        pytest.param(
            ONE_SERVICE,
            {
                "x.proto": GOOD_PROTO,
                "y.proto": GOOD_PROTO.replace("package x;", "package x.y;").replace("Req", "R2"),
            },
            ["route conflict", "x.A/Get", "x.y.A/Get", "/v1/things/{id}"],
            id="route-collision",
        ),
        pytest.param(
            ONE_SERVICE.replace('"x.*"', '"other.*"'),
            {"x.proto": GOOD_PROTO},
            ["service x.A has no upstream"],
            id="service-without-upstream",
        ),
        pytest.param(
            ONE_SERVICE,
            {"x.proto": GOOD_PROTO.replace("/v1/things/{id}", "/v1/things/{idd}")},
            ["x.A/Get", "/v1/things/{idd}", "idd"],
            id="path-variable-names-no-field",
        ),
        pytest.param(
            ONE_SERVICE,
            {"x.proto": GOOD_PROTO.replace("/v1/things/{id}", "v1/{id")},
            ["x.A/Get", "v1/{id"],
            id="bad-template",
        ),
    ],
)
def test_check_and_serve_refuse_bad_input_with_one_readable_message(
    tmp_path, body, protos, expected
):
    path = config(tmp_path, body, protos)
    port = free_port()
    for command in (
        ["check", "--config", str(path)],
        ["serve", "--config", str(path), "--listen", f"127.0.0.1:{port}"],
    ):
        result = bridge(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("bridge: ")
        for text in expected:
            assert text in result.stderr, (text, result.stderr)
    with socket.socket() as s:  # serve stopped before listening: the port is still free
        s.bind(("127.0.0.1", port))


def test_serve_listens_answers_healthz_and_stops_on_sigterm(tmp_path):
    path = config(tmp_path, ONE_SERVICE, {"x.proto": GOOD_PROTO})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--config", str(path),
         "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "bridge did not start"
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_committed_config_names_the_dev_credentials_it_lacks():
    result = bridge("check", "--config", "bridge.yaml", env={"BRIDGE_API_KEYS": ""})
    assert result.returncode == 2
    assert "environment variable BRIDGE_API_KEYS is set but empty" in result.stderr


def test_check_builds_the_chains_so_a_fallback_that_does_not_fit_stops_it(tmp_path):
    body = f"""
protos: {{include: ["{ROOT / "protos"}"]}}
upstreams: {{echo: {{targets: ["127.0.0.1:1"]}}, users: {{targets: ["127.0.0.1:2"]}}}}
services: {{"demo.echo.v1.*": echo, "demo.users.v1.*": users}}
fallbacks:
  - {{match: demo.users.v1.UserService/ListUsers, on: [UNAVAILABLE], response: {{nope: 1}}}}
"""
    result = bridge("check", "--config", str(config(tmp_path, body)))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert "fallbacks[0]" in result.stderr and "has no field named \"nope\"" in result.stderr
