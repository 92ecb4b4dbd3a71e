"""Aggregates (SPEC 7) against the example services: fan-out, dependencies, concurrency,
partial failure, cancellation, policies on each child, start-up errors, check and OpenAPI."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from bridge.config import ConfigError
from tests.conftest import Bridge, StartBridge, demo_config
from tests.teams import PING, PING_FILE, TeamServer, admin, admin_config, ping, register

GET_USER = "demo.users.v1.UserService/GetUser"
ECHO = "demo.echo.v1.EchoService/Echo"
FAIL = "demo.echo.v1.EchoService/Fail"
STATS = "demo.echo.v1.EchoService/GetStats"
HOME = "GET /bff/v1/users/{id}/home"
KEY = "k-123456"


def aggregate(calls: dict[str, Any], route: str = HOME) -> dict[str, Any]:
    return {"route": route, "calls": calls}


def home_calls() -> dict[str, Any]:
    """GetUser, an Echo that waits for the user's display name, and GetStats."""
    return {
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "greeting": {
            "method": ECHO,
            "request": {"message": "Hello {user.displayName}", "sleepMs": "{sleep}"},
        },
        "stats": {"method": STATS},
    }


async def serve(start_bridge: StartBridge, users: int, echo: int, *aggregates: Any, **extra: Any):
    return await start_bridge(demo_config(users, echo, aggregates=list(aggregates), **extra))


async def test_three_calls_one_waiting_for_another(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(home_calls()))
    status, body, headers = await bridge.json(
        "GET", "/bff/v1/users/1/home?sleep=1", headers={"X-Request-Id": "agg-1"}
    )
    assert status == 200, body
    assert list(body) == ["user", "greeting", "stats"]
    assert body["user"]["displayName"] == "Ada Lovelace"
    assert body["greeting"]["message"] == "Hello Ada Lovelace"
    assert body["greeting"]["request"]["sleepMs"] == 1  # the query parameter, as an int32
    assert body["greeting"]["metadata"]["x-request-id"] == "agg-1"  # the parent's request id
    assert set(body["stats"]) >= {"started", "cancelled"}  # ran alongside the user call
    assert "errors" not in body
    assert headers["X-Request-Id"] == "agg-1"


async def test_independent_calls_run_concurrently(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    slow = {"method": ECHO, "request": {"message": "{id}", "sleepMs": 200}}
    calls = {"a": slow, "b": slow, "c": slow}
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(calls))
    await bridge.json("GET", "/bff/v1/users/warm/home")  # channels open, first-call costs paid
    started = time.perf_counter()
    status, body, _ = await bridge.json("GET", "/bff/v1/users/x/home")
    elapsed = time.perf_counter() - started
    assert status == 200, body
    assert [body[n]["message"] for n in "abc"] == ["x", "x", "x"]
    assert 0.2 <= elapsed < 0.45, f"three 200 ms calls took {elapsed:.3f}s: not concurrent"


async def test_an_optional_failure_is_listed_under_errors(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    calls = {
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "orders": {"method": FAIL, "request": {"code": 14, "message": "down"}, "optional": True},
        "after": {"method": ECHO, "request": {"extra": {"o": "{orders}"}}, "optional": True},
    }
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(calls))
    status, body, _ = await bridge.json("GET", "/bff/v1/users/2/home")
    assert status == 200, body
    assert body["user"]["id"] == "2"
    assert "orders" not in body and "after" not in body
    assert body["errors"]["orders"] == {"code": 14, "message": "down", "details": []}
    assert body["errors"]["after"]["code"] == 14  # it needed orders' answer: not made
    assert "not made" in body["errors"]["after"]["message"]


async def test_a_required_failure_fails_the_request_and_cancels_the_others(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    calls = {
        "slow": {"method": ECHO, "request": {"message": "s", "sleepMs": 3000}},
        "broken": {"method": FAIL, "request": {"code": 14, "message": "gone"}},
    }
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(calls))
    started = time.perf_counter()
    status, body, _ = await bridge.json("GET", "/bff/v1/users/1/home")
    assert time.perf_counter() - started < 1.5  # not waiting for the slow call
    assert status == 503
    assert body["code"] == 14
    assert "call 'broken'" in body["message"] and FAIL in body["message"]
    assert "gone" in body["message"]
    stats: dict[str, Any] = {}
    for _ in range(50):  # the cancel reaches the backend asynchronously
        _, stats, _ = await bridge.json("GET", "/v1/stats")
        if stats["cancelledByMethod"].get("Echo") == "1":
            break
        await asyncio.sleep(0.02)
    assert stats["cancelledByMethod"] == {"Echo": "1"}, stats
    assert stats["active"] == "0"


def keyed_auth() -> dict[str, Any]:
    return {
        "api_keys": {"keys": [f"alice={KEY}"]},
        "rules": [{"match": GET_USER, "require": "api_key"}, {"match": "*", "require": "none"}],
    }


@pytest.mark.parametrize("optional", [False, True], ids=["required", "optional"])
async def test_policies_apply_to_each_child(
    start_bridge: StartBridge, users_server: int, echo_server: int, optional: bool
) -> None:
    calls = {
        "user": {"method": GET_USER, "request": {"id": "{id}"}, "optional": optional},
        "echo": {"method": ECHO, "request": {"message": "hi"}},
    }
    bridge = await serve(
        start_bridge, users_server, echo_server, aggregate(calls), auth=keyed_auth()
    )
    status, body, headers = await bridge.json("GET", "/bff/v1/users/1/home")
    if optional:
        assert status == 200, body
        assert body["errors"]["user"]["code"] == 16
        assert body["echo"]["message"] == "hi"
    else:
        assert status == 401, body
        assert body["code"] == 16 and "call 'user'" in body["message"]
        assert "WWW-Authenticate" in headers
    status, body, _ = await bridge.json("GET", "/bff/v1/users/1/home", headers={"x-api-key": KEY})
    assert status == 200, body
    assert body["user"]["id"] == "1"


async def test_children_carry_the_subject(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    auth = keyed_auth()
    auth["rules"] = [{"match": ECHO, "require": "api_key"}, {"match": "*", "require": "none"}]
    calls = {"echo": {"method": ECHO, "request": {"message": "{id}"}}}
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(calls), auth=auth)
    status, body, _ = await bridge.json("GET", "/bff/v1/users/1/home", headers={"x-api-key": KEY})
    assert status == 200, body
    assert body["echo"]["metadata"]["x-bridge-subject"] == "alice"


BAD_CONFIGS = [
    pytest.param(
        {"a": {"method": ECHO, "request": {"message": "{b.message}"}},
         "b": {"method": ECHO, "request": {"message": "{a.message}"}}},
        "aggregates[0].calls.a", "cycle (a -> b -> a)", id="cycle",
    ),
    pytest.param(
        {"a": {"method": ECHO, "request": {"message": "{usr.displayName}"}}},
        "aggregates[0].calls.a.request.message", "{usr.displayName} names no call",
        id="unknown-call",
    ),
]  # fmt: skip
START_ERRORS = [
    pytest.param(
        {"user": {"method": "demo.users.v1.UserService/GetUzer", "request": {"id": "{id}"}}},
        "aggregates[0].calls.user.method", "GetUzer is not served", id="unknown-method",
    ),
    pytest.param(
        {"user": {"method": GET_USER, "request": {"ident": "{id}"}}},
        "aggregates[0].calls.user.request.ident", "no field 'ident'", id="unknown-request-field",
    ),
    pytest.param(
        {"user": {"method": GET_USER, "request": {"id": "{id}"}},
         "echo": {"method": ECHO, "request": {"message": "{user.favouriteCategory}"}}},
        "aggregates[0].calls.echo.request.message", "no field 'favouriteCategory'",
        id="unknown-response-field",
    ),
    pytest.param(
        {"tick": {"method": "demo.echo.v1.EchoService/Tick"}},
        "aggregates[0].calls.tick.method", "only unary methods", id="streaming-method",
    ),
    pytest.param(
        {"user": {"method": GET_USER, "request": {"id": "{id}"}},
         "echo": {"method": ECHO, "request": {"inner": "{user.displayName}"}}},
        "aggregates[0].calls.echo.request.inner", "is a scalar", id="type-mismatch",
    ),
    pytest.param(
        {"echo": {"method": ECHO, "request": {"sleepMs": "soon"}}},
        "aggregates[0].calls.echo.request", "sleepMs", id="bad-literal",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("calls", "key", "problem"), BAD_CONFIGS + START_ERRORS)
async def test_config_errors_name_the_aggregate_and_the_call(
    start_bridge: StartBridge,
    users_server: int,
    echo_server: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    calls: dict[str, Any],
    key: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        await serve(start_bridge, users_server, echo_server, aggregate(calls))
    error = caught.value
    assert error.key == key
    assert problem in error.problem
    assert f"aggregate '{HOME}'" in error.problem
    call = key.split(".")[2]
    assert f"call '{call}'" in error.problem
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(demo_config(users_server, echo_server, aggregates=[
        aggregate(calls)])))  # fmt: skip
    assert await asyncio.to_thread(main, ["check", "--config", str(path)]) == 2
    assert f"{key}: " in capsys.readouterr().err


async def test_a_route_taken_by_a_proto_is_a_start_error(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    calls = {"user": {"method": GET_USER, "request": {"id": "{id}"}}}
    with pytest.raises(ConfigError) as caught:
        await serve(
            start_bridge, users_server, echo_server, aggregate(calls, "GET /v1/users/{name}")
        )
    assert caught.value.key == "aggregates[0].route"
    assert "GET /v1/users/{id} (demo.users.v1.UserService/GetUser)" in caught.value.problem


async def test_check_and_openapi_list_the_aggregate(
    start_bridge: StartBridge,
    users_server: int,
    echo_server: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = demo_config(users_server, echo_server, aggregates=[aggregate(home_calls())])
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if "/bff/v1/users/{id}/home" in x)
    assert row.startswith("GET ") and "aggregates[0]" in row and "aggregate" in row
    # The table's row names the aggregate; a note below it lists its calls and their order.
    note = next(x for x in out.splitlines() if x.startswith("aggregates[0]:"))
    assert f"greeting ({ECHO}, after user)" in note
    bridge: Bridge = await start_bridge(config)
    status, document, _ = await bridge.json("GET", "/openapi.json")
    assert status == 200
    operation = document["paths"]["/bff/v1/users/{id}/home"]["get"]
    assert operation["tags"] == ["aggregates"]
    assert operation["x-bridge-aggregate"]["greeting"] == {
        "method": ECHO, "optional": False, "needs": ["user"]
    }  # fmt: skip
    names = [p["name"] for p in operation["parameters"]]
    assert names == ["id", "sleep", "fields"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["user"] == {"$ref": "#/components/schemas/demo.users.v1.User"}
    assert answer["required"] == ["user", "greeting", "stats"]


async def test_an_unknown_method_is_a_warning_in_check_when_reflection_may_bring_it(
    users_server: int, echo_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = demo_config(users_server, echo_server, aggregates=[
        aggregate({"x": {"method": "acme.ping.v1.Ping/Get"}})])  # fmt: skip
    config["upstreams"]["echo"]["reflection"] = True
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["check", "--config", str(path)]) == 0
    assert "warning: " in capsys.readouterr().err


async def test_a_child_served_by_a_fallback_marks_the_answer(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    calls = {
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "orders": {"method": FAIL, "request": {"code": 14}},
    }
    fallbacks = [{"match": FAIL, "on": ["UNAVAILABLE"], "response": {}}]
    bridge = await serve(
        start_bridge, users_server, echo_server, aggregate(calls), fallbacks=fallbacks
    )
    status, body, headers = await bridge.json("GET", "/bff/v1/users/1/home")
    assert status == 200, body
    assert body["orders"] == {} and body["user"]["id"] == "1"
    assert headers["X-Bridge-Fallback"] == "true"


async def test_an_aggregate_over_a_registered_method_and_its_removal(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Checked once stored registrations are restored; a method removed later fails its call
    with UNIMPLEMENTED naming it (or is listed under errors when optional)."""
    team = await TeamServer(tmp_path / "team").start()
    await team.deploy({PING_FILE: PING}, {"acme.ping.v1.Ping/Get": ping})
    store = tmp_path / "store"
    first = await start_bridge(admin_config(store))
    assert (await register(first, "ping", {PING_FILE: PING}, team.target))[0] == 201
    calls = {
        "ping": {"method": "acme.ping.v1.Ping/Get", "request": {"id": "{id}"}},
        "again": {"method": "acme.ping.v1.Ping/Get", "request": {"id": "{ping.id}-2"},
                  "optional": True},
    }  # fmt: skip
    bridge = await start_bridge(admin_config(store, aggregates=[aggregate(calls)]))
    try:
        status, body, _ = await bridge.json("GET", "/bff/v1/users/7/home")
        assert (status, body) == (200, {"ping": {"id": "7"}, "again": {"id": "7-2"}})
        assert (await admin(bridge, "DELETE", "/admin/protos/ping"))[0] == 200
        status, body, _ = await bridge.json("GET", "/bff/v1/users/7/home")
        assert status == 501, body
        assert "acme.ping.v1.Ping/Get is not served" in body["message"]
        assert "call 'ping'" in body["message"]
    finally:
        await team.stop()


async def test_fields_trims_the_aggregate_answer(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await serve(start_bridge, users_server, echo_server, aggregate(home_calls()))
    status, body, _ = await bridge.json(
        "GET", "/bff/v1/users/1/home", params={"fields": "user(id,displayName),greeting.message"}
    )
    assert status == 200, body
    assert body == {"user": {"id": "1", "displayName": "Ada Lovelace"},
                    "greeting": {"message": "Hello Ada Lovelace"}}  # fmt: skip
    status, body, _ = await bridge.json("GET", "/bff/v1/users/1/home", params={"fields": "usr"})
    assert status == 400 and "usr" in body["message"]


async def test_each_child_takes_its_own_rate_limit_token(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    limits = [{"match": ECHO, "key": "ip", "rate": "1/h", "burst": 3}]
    calls = {n: {"method": ECHO, "request": {"message": n}} for n in ("a", "b")}
    bridge = await serve(
        start_bridge, users_server, echo_server, aggregate(calls), rate_limits=limits
    )
    status, body, _ = await bridge.json("GET", "/bff/v1/users/1/home")
    assert status == 200, body  # two of the three tokens
    status, body, headers = await bridge.json("GET", "/bff/v1/users/1/home")
    assert status == 429, body  # one child passes, the other is refused
    assert body["code"] == 8 and ECHO in body["message"]
    assert "Retry-After" in headers
