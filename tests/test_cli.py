"""The bridge command: check, and serve refusing bad configs and protos before it listens."""

from __future__ import annotations

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
    assert "GET     /v1/users/{id}  ->  demo.users.v1.UserService/GetUser" in result.stdout
    assert "PATCH   /v1/{user.name=users/*}" in result.stdout
    assert "POST    /demo.echo.v1.EchoService/Echo" in result.stdout


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
