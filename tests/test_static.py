"""Static routes (SPEC 7): answered by the bridge itself, next to the proto routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from bridge.cli import main
from bridge.config import ConfigError
from tests.conftest import StartBridge, demo_config
from tests.teams import PING, PING_FILE, admin_config, register

STATUS = {"route": "GET /v1/status", "status": 200, "body": {"ok": True, "n": [1, 2]},
          "headers": {"X-Build": "42", "Cache-Control": "max-age=5"}}  # fmt: skip


async def test_a_static_route_answers_status_body_and_headers(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    gone = {"route": "GET /v1/old/{rest=**}", "status": 410, "body": {"moved": "/v2"}}
    empty = {"route": "DELETE /v1/status", "status": 204}
    bridge = await start_bridge(
        demo_config(users_server, echo_server, static=[STATUS, gone, empty])
    )
    status, body, headers = await bridge.json("GET", "/v1/status", headers={"X-Request-Id": "s1"})
    assert (status, body) == (200, {"ok": True, "n": [1, 2]})
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Build"] == "42" and headers["Cache-Control"] == "max-age=5"
    assert headers["X-Request-Id"] == "s1"
    status, body, _ = await bridge.json("GET", "/v1/old/a/b")
    assert (status, body) == (410, {"moved": "/v2"})
    async with bridge.request("DELETE", "/v1/status") as resp:
        assert resp.status == 204 and await resp.read() == b""
    status, body, headers = await bridge.json("POST", "/v1/status")
    assert status == 405 and headers["Allow"] == "DELETE, GET"
    assert body["code"] == 12
    status, body, _ = await bridge.json("GET", "/v1/users/1")  # the proto routes still answer
    assert status == 200 and body["id"] == "1"


async def test_a_content_type_header_replaces_json(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    headers = {"Content-Type": "application/problem+json", "Retry-After": "60"}
    problem = {"route": "GET /v1/down", "status": 503, "body": {"title": "maintenance"},
               "headers": headers}  # fmt: skip
    bridge = await start_bridge(demo_config(users_server, echo_server, static=[problem]))
    status, body, headers = await bridge.json("GET", "/v1/down")
    assert (status, body["title"]) == (503, "maintenance")
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Retry-After"] == "60"


async def test_a_static_route_taking_a_proto_route_is_a_start_error(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    taken = {"route": "GET /v1/users/{user}", "body": {}}
    with pytest.raises(ConfigError) as caught:
        await start_bridge(demo_config(users_server, echo_server, static=[taken]))
    assert caught.value.key == "static[0].route"
    assert "demo.users.v1.UserService/GetUser" in caught.value.problem


async def test_a_registration_taking_a_config_route_is_refused(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    ping = {"route": "GET /ping/{name}", "body": {"pong": True}}
    bridge = await start_bridge(admin_config(tmp_path / "store", static=[ping]))
    status, body = await register(bridge, "ping", {PING_FILE: PING}, "127.0.0.1:1")
    assert status == 409, body
    assert "static[0]" in body["message"] and "acme.ping.v1.Ping/Get" in body["message"]
    status, reply, _ = await bridge.json("GET", "/ping/x")
    assert (status, reply) == (200, {"pong": True})


async def test_check_and_openapi_list_static_routes(
    start_bridge: StartBridge,
    users_server: int,
    echo_server: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = demo_config(users_server, echo_server, static=[STATUS])
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["check", "--config", str(path)]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if " /v1/status " in x)
    assert row.split() == ["GET", "/v1/status", "static[0]", "static", "200", "-"]
    bridge = await start_bridge(config)
    _, document, _ = await bridge.json("GET", "/openapi.json")
    operation = document["paths"]["/v1/status"]["get"]
    assert operation["tags"] == ["static"]
    ok = operation["responses"]["200"]["content"]["application/json"]
    assert ok["example"] == {"ok": True, "n": [1, 2]}
    assert {"name": "static"} in document["tags"]


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ({"route": "/v1/status"}, "static[0].route", "is not 'METHOD /path'"),
        ({"route": "GET /v1/{"}, "static[0].route", "bad path template"),
        ({"route": "GET /x", "status": 99}, "static[0].status", "from 200 to 599"),
        ({"route": "GET /x", "status": 304, "body": {}}, "static[0].body", "has no body"),
        ({"route": "GET /x", "headers": {"Content-Length": "3"}},
         "static[0].headers.content-length", "written by the HTTP server"),
        ({"route": "GET /x", "colour": 1}, "static[0].colour", "unknown key"),
    ],
    ids=["no-method", "bad-template", "status", "body-on-304", "framing-header", "unknown-key"],
)  # fmt: skip
def test_static_config_errors(entry: dict, key: str, problem: str, tmp_path: Path) -> None:
    from bridge.config import settings_from_dict

    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"static": [entry]}, tmp_path / "b.yaml")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_two_config_routes_on_the_same_paths_are_refused(tmp_path: Path) -> None:
    from bridge.config import settings_from_dict

    agg = {"route": "GET /v1/{x}", "calls": {"a": {"method": "a.b.C/D"}}}
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"aggregates": [agg], "static": [{"route": "GET /v1/{y}"}]},
                           tmp_path / "b.yaml")  # fmt: skip
    assert caught.value.key == "static[0].route"
    assert "aggregates[0] ('GET /v1/{x}')" in caught.value.problem
