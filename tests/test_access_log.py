"""The access log, the audit log and WebSocket request ids (SPEC section 8), through a real
bridge in front of the example services; the lines are read with caplog as `logging` gets them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from bridge.observe import log
from tests.conftest import Bridge, StartBridge, demo_config
from tests.teams import TOKEN, admin, admin_config, register
from tests.test_tracing import pair_config
from tests.ws_client import connect, messages

FIELDS = {
    "time", "request_id", "subject", "transport", "method", "route", "http_status", "grpc_code",
    "duration_ms", "bytes_in", "bytes_out",
}  # fmt: skip
ECHO = "demo.echo.v1.EchoService/Echo"
FAIL = "demo.echo.v1.EchoService/Fail"
SECRET = "tok-s3cret-123"


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """The JSON lines logged so far by ``logger`` (``bridge.access`` unless told)."""
    caplog.set_level("INFO", logger="bridge.access")
    caplog.set_level("INFO", logger="bridge.audit")

    def read(logger: str = "bridge.access") -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == logger]

    return read


async def test_a_rest_call_is_one_line(demo: Bridge, lines) -> None:  # type: ignore[no-untyped-def]
    body = b'{"message": "hi"}'
    async with demo.request("POST", "/v1/echo", data=body, headers={"X-Request-Id": "r-1"}) as r:
        answer = await r.read()
    [line] = lines()
    assert set(line) == FIELDS
    assert line["time"].endswith("Z") and line["duration_ms"] >= 0
    assert {k: line[k] for k in FIELDS - {"time", "duration_ms"}} == {
        "request_id": "r-1", "subject": None, "transport": "http", "method": ECHO,
        "route": "POST /v1/echo", "http_status": 200, "grpc_code": "OK",
        "bytes_in": len(body), "bytes_out": len(answer),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "route", "method", "status", "code"),
    [
        pytest.param("/v1/fail/5", "GET /v1/fail/{code}", FAIL, 404, "NOT_FOUND", id="backend"),
        pytest.param("/nowhere", None, None, 404, "NOT_FOUND", id="no-route"),
    ],
)
async def test_refused_calls_are_logged_with_their_codes(  # type: ignore[no-untyped-def]
    demo: Bridge, lines, path, route, method, status, code
) -> None:
    async with demo.request("GET", path) as r:
        assert r.status == status
    [line] = lines()
    assert (line["route"], line["method"], line["http_status"], line["grpc_code"]) == (
        route,
        method,
        status,
        code,
    )


async def test_a_stream_failing_after_its_headers_logs_its_code(  # type: ignore[no-untyped-def]
    demo: Bridge, lines
) -> None:
    async with demo.request("GET", "/v1/ticks?count=3&failAfter=1") as r:
        assert r.status == 200
        body = await r.read()
    [line] = lines()
    assert (line["route"], line["http_status"]) == ("GET /v1/ticks", 200)
    assert line["bytes_out"] == len(body) and b'"error"' in body
    assert line["grpc_code"] == "UNAVAILABLE"


async def test_no_secret_reaches_the_log(demo: Bridge, lines) -> None:  # type: ignore[no-untyped-def]
    async with demo.request(
        "GET", f"/v1/echo/hi?access_token={SECRET}", headers={"Authorization": f"Bearer {SECRET}"}
    ) as r:
        assert r.status == 400  # no such query parameter: refused, still logged
    async with connect(demo.url, params={"access_token": SECRET}) as ws:
        await ws.call(1, "Echo", {"message": "x"})
    assert len(lines()) == 2
    assert [line["route"] for line in lines()] == ["GET /v1/echo/{message}", "/ws"]
    assert SECRET not in json.dumps(lines())


async def test_the_verified_subject_is_logged(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, users_server: int, echo_server: int, lines
) -> None:
    auth = {"api_keys": {"header": "x-api-key", "keys": f"alice={SECRET}"},
            "rules": [{"match": ECHO, "require": "api_key"}]}  # fmt: skip
    bridge = await start_bridge(demo_config(users_server, echo_server, auth=auth))
    for headers in ({"x-api-key": SECRET}, {}):
        async with bridge.request("GET", "/v1/echo/hi", headers=headers):
            pass
    assert [(line["subject"], line["http_status"]) for line in lines()] == [
        ("alice", 200), (None, 401)
    ]  # fmt: skip
    assert SECRET not in json.dumps(lines())


async def test_an_api_key_in_the_upgrade_url_reaches_no_log(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, users_server: int, echo_server: int, lines, caplog
) -> None:
    caplog.set_level("DEBUG")  # every logger, the error and debug lines too
    bad = "bad-" + SECRET
    auth = {"api_keys": {"header": "x-api-key", "keys": f"alice={SECRET}"},
            "rules": [{"match": ECHO, "require": "api_key"}]}  # fmt: skip
    bridge = await start_bridge(demo_config(users_server, echo_server, auth=auth))
    async with connect(bridge.url, params={"x-api-key": SECRET}) as ws:
        await ws.call(1, "Echo", {"message": "x"})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(bridge.url + "/ws", params={"x-api-key": bad})
    async with bridge.request("GET", "/v1/echo/hi", params={"x-api-key": bad}) as r:
        assert r.status == 400  # REST takes no key from the query
    assert [(line["subject"], line["route"]) for line in lines()] == [
        ("alice", "/ws"), (None, "GET /v1/echo/{message}")
    ]  # fmt: skip
    assert SECRET not in caplog.text and SECRET not in json.dumps(lines())


async def test_a_websocket_call_is_one_line_and_keeps_the_clients_id(  # type: ignore[no-untyped-def]
    demo: Bridge, lines
) -> None:
    start = {"id": 1, "method": ECHO, "message": {"message": "hi"},
             "metadata": {"x-request-id": "ws-given"}}  # fmt: skip
    async with connect(demo.url) as ws:
        await ws.send(start)
        ws.starts[1] += 1
        frames = await ws.until_status(1)
        generated = await ws.call(2, "Echo", {"message": "hi"})
    assert frames[0]["headers"]["x-request-id"] == "ws-given"
    assert messages(frames)[0]["metadata"]["x-request-id"] == "ws-given"  # the backend saw it
    made = generated[0]["headers"]["x-request-id"]
    assert made and made != "ws-given"
    assert messages(generated)[0]["metadata"]["x-request-id"] == made
    first, second = lines()
    assert {k: first[k] for k in ("request_id", "transport", "method", "route", "http_status",
                                  "grpc_code")} == {
        "request_id": "ws-given", "transport": "ws", "method": ECHO, "route": "/ws",
        "http_status": None, "grpc_code": "OK",
    }  # fmt: skip
    assert first["bytes_in"] == len(json.dumps(start))
    assert first["bytes_out"] == sum(len(json.dumps(f, separators=(",", ":"))) for f in frames)
    assert second["request_id"] == made


async def test_an_aggregate_is_one_line_for_its_route(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, users_server: int, echo_server: int, lines
) -> None:
    bridge = await start_bridge(pair_config(users_server, echo_server))
    status, _, headers = await bridge.json("GET", "/bff/v1/pair")
    assert status == 200
    [line] = lines()
    assert (line["transport"], line["route"], line["method"], line["grpc_code"]) == (
        "aggregate",
        "GET /bff/v1/pair",
        None,
        "OK",
    )
    assert line["request_id"] == headers["X-Request-Id"]


async def test_an_aggregates_line_names_its_caller(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, users_server: int, echo_server: int, lines
) -> None:
    """The subject of an aggregate is the principal its calls' auth steps proved."""
    config = pair_config(users_server, echo_server)
    config["auth"] = {"api_keys": {"header": "x-api-key", "keys": f"alice={SECRET}"},
                      "rules": [{"match": ECHO, "require": "api_key"}]}  # fmt: skip
    bridge = await start_bridge(config)
    for headers in ({"x-api-key": SECRET}, {}):
        async with bridge.request("GET", "/bff/v1/pair", headers=headers):
            pass
    assert [(line["transport"], line["subject"], line["http_status"]) for line in lines()] == [
        ("aggregate", "alice", 200), ("aggregate", None, 401)
    ]  # fmt: skip
    assert SECRET not in json.dumps(lines())


async def test_a_request_refused_before_routing_is_one_line(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, users_server: int, echo_server: int, lines
) -> None:
    """A body declared over limits.max_body, refused before any route, still gets its line."""
    bridge = await start_bridge(demo_config(users_server, echo_server, limits={"max_body": "1KiB"}))
    headers = {"x-request-id": "big-1"}
    async with bridge.request("POST", "/v1/echo", data=b"x" * 2000, headers=headers) as resp:
        assert resp.status == 413 and resp.headers["X-Request-Id"] == "big-1"
    [line] = lines()
    assert line.keys() == FIELDS
    assert (line["request_id"], line["route"], line["http_status"], line["grpc_code"]) == (
        "big-1", None, 413, "RESOURCE_EXHAUSTED"
    )  # fmt: skip


TINY = {"acme/tiny/v1/tiny.proto": 'syntax = "proto3";\npackage acme.tiny.v1;\n'}


async def test_admin_changes_are_audited_without_the_token(  # type: ignore[no-untyped-def]
    start_bridge: StartBridge, lines
) -> None:
    bridge = await start_bridge(admin_config())
    assert (await register(bridge, "tiny", TINY, "127.0.0.1:1"))[0] == 201
    assert (await register(bridge, "tiny", TINY, "127.0.0.1:1"))[0] == 200
    assert (await admin(bridge, "GET", "/admin/protos"))[0] == 200  # a read: not audited
    assert (await admin(bridge, "DELETE", "/admin/protos/tiny"))[0] == 200
    wrong = {"Authorization": "Bearer wrong"}
    async with bridge.request("DELETE", "/admin/protos/tiny", headers=wrong):
        pass  # refused: no change
    audited = lines("bridge.audit")
    assert [(a["action"], a["registration"], a["who"], a["peer"]) for a in audited] == [
        ("register", "tiny", "admin", "127.0.0.1"),
        ("replace", "tiny", "admin", "127.0.0.1"),
        ("remove", "tiny", "admin", "127.0.0.1"),
    ]
    assert audited[0]["files"] == ["acme/tiny/v1/tiny.proto"]
    assert audited[0]["targets"] == ["127.0.0.1:1"]
    assert TOKEN not in json.dumps(audited)


def test_a_line_costs_microseconds(caplog: pytest.LogCaptureFixture) -> None:
    """The cost of one access-log line written by a handler (caplog's), measured, not guessed."""
    caplog.set_level("INFO", logger="bridge.access")
    n = 2000
    begin = time.perf_counter()
    for i in range(n):
        log.access(request_id=f"{i:032x}", subject="alice", transport="http", method=ECHO,
                   route="POST /v1/echo", http_status=200, grpc_code=0, started=begin,
                   bytes_in=17, bytes_out=120)  # fmt: skip
    per_line = (time.perf_counter() - begin) / n * 1e6
    assert len(caplog.records) == n
    assert per_line < 1000, f"{per_line:.1f} µs per line"  # generous: caplog and CI are slow
