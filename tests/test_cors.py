"""CORS over real HTTP (SPEC 6): a bridge with `cors` in front of the example services answers
preflights for every route, and marks real, streamed and error responses to allowed origins.
The WebSocket Origin check at the upgrade is test_ws_limits.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import Bridge, StartBridge, demo_config
from tests.raw_http import RawConnection, exchange, request
from tests.teams import PING, PING_FILE, TeamServer, admin_config, ping, register

APP: Final = "http://localhost:3000"
EVIL: Final = "https://evil.example"
CORS: Final = {"allow_origins": [APP], "allow_headers": ["authorization", "content-type"]}
ACAO: Final = "Access-Control-Allow-Origin"
EXPOSE: Final = "Access-Control-Expose-Headers"


@pytest.fixture
async def bridge(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    return await start_bridge(demo_config(users_server, echo_server, cors=CORS))


async def preflight(
    bridge: Bridge, path: str, method: str, origin: str = APP, **headers: str
) -> tuple[int, str, Any]:
    asked = {"Origin": origin, "Access-Control-Request-Method": method, **headers}
    async with bridge.request("OPTIONS", path, headers=asked) as resp:
        return resp.status, await resp.text(), resp.headers


def exposed(headers: Any) -> list[str]:
    return [name.strip().lower() for name in headers.get(EXPOSE, "").split(",") if name.strip()]


# --- preflights -------------------------------------------------------------------------------

ANSWERED = [
    pytest.param("/v1/users/42", "GET", "DELETE, GET, PATCH", id="get-user"),
    pytest.param("/v1/users", "POST", "GET, POST", id="create-user"),
    pytest.param("/v1/users/42:ban", "POST", "DELETE, GET, PATCH, POST", id="custom-verb"),
    pytest.param("/v1/ticks", "GET", "GET", id="server-stream"),
    pytest.param("/healthz", "GET", "GET, HEAD", id="own-healthz"),
    pytest.param("/readyz", "GET", "GET, HEAD", id="own-readyz"),
    pytest.param("/openapi.json", "GET", "GET, HEAD", id="own-openapi"),
    pytest.param("/ws", "GET", "GET, HEAD", id="own-ws"),
]


@pytest.mark.parametrize(("path", "method", "methods"), ANSWERED)
async def test_preflight_from_an_allowed_origin(
    bridge: Bridge, path: str, method: str, methods: str
) -> None:
    status, text, headers = await preflight(
        bridge, path, method, **{"Access-Control-Request-Headers": "content-type,x-api-key"}
    )
    assert status == 204, text
    assert text == ""
    assert headers[ACAO] == APP
    assert headers["Vary"] == "Origin"
    assert headers["Access-Control-Allow-Methods"] == methods
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in headers


async def test_preflight_from_a_disallowed_origin(bridge: Bridge) -> None:
    status, text, headers = await preflight(bridge, "/v1/users/42", "DELETE", origin=EVIL)
    assert status == 403
    assert ACAO not in headers
    assert "Access-Control-Allow-Methods" not in headers
    body = json.loads(text)
    assert body["code"] == 7
    assert body["message"] == "origin 'https://evil.example' is not allowed (cors.allow_origins)"


REFUSED = [
    pytest.param("/v1/users/42", "PUT", 405, 12, "DELETE, GET, PATCH", id="method-not-served"),
    pytest.param("/healthz", "POST", 405, 12, "GET, HEAD", id="own-route-method"),
    pytest.param("/v2/nothing", "GET", 404, 5, None, id="no-route"),
]


@pytest.mark.parametrize(("path", "method", "status", "code", "allow"), REFUSED)
async def test_preflight_the_browser_refuses(
    bridge: Bridge, path: str, method: str, status: int, code: int, allow: str | None
) -> None:
    got, text, headers = await preflight(bridge, path, method)
    assert got == status  # not a 2xx: the browser does not send the request
    assert json.loads(text)["code"] == code
    assert headers.get("Allow") == allow
    assert "Access-Control-Allow-Methods" not in headers
    assert headers[ACAO] == APP  # so the browser reports the status, not a missing header


async def test_options_without_request_method_is_not_a_preflight(bridge: Bridge) -> None:
    async with bridge.request("OPTIONS", "/v1/users/42", headers={"Origin": APP}) as resp:
        assert resp.status == 405  # the REST handler's answer: no route serves OPTIONS there
        assert resp.headers["Allow"] == "DELETE, GET, PATCH"
        assert resp.headers[ACAO] == APP
        assert (await resp.json())["code"] == 12


async def test_credentials_and_echoed_headers(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    cors = {"allow_origins": [APP], "allow_credentials": True, "max_age": "90s"}
    bridge = await start_bridge(demo_config(users_server, echo_server, cors=cors))
    status, _, headers = await preflight(
        bridge, "/v1/users/42", "DELETE",
        **{"Access-Control-Request-Headers": "X-Api-Key, authorization"},
    )  # fmt: skip
    assert status == 204
    assert headers["Access-Control-Allow-Headers"] == "x-api-key, authorization"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Max-Age"] == "90"
    async with bridge.request("GET", "/v1/users/1", headers={"Origin": APP}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"


async def test_any_origin(start_bridge: StartBridge, users_server: int, echo_server: int) -> None:
    config = demo_config(users_server, echo_server, cors={"allow_origins": ["*"]})
    bridge = await start_bridge(config)
    status, _, headers = await preflight(bridge, "/v1/users/42", "GET", origin=EVIL)
    assert (status, headers[ACAO]) == (204, "*")
    assert "Vary" not in headers
    async with bridge.request("GET", "/v1/users/1", headers={"Origin": EVIL}) as resp:
        assert resp.headers[ACAO] == "*"


async def test_preflight_follows_the_live_route_table(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    team = await TeamServer(tmp_path / "team").start()
    try:
        await team.deploy({PING_FILE: PING}, {"acme.ping.v1.Ping/Get": ping})
        bridge = await start_bridge(admin_config(cors={"allow_origins": [APP]}))
        assert (await preflight(bridge, "/ping/7", "GET"))[0] == 404
        status, headers = (await preflight(bridge, "/admin/protos", "POST"))[::2]
        assert (status, headers["Access-Control-Allow-Methods"]) == (204, "GET, POST")
        status, reply = await register(bridge, "ping", {PING_FILE: PING}, team.target)
        assert status == 201, reply
        status, _, headers = await preflight(bridge, "/ping/7", "GET")
        assert (status, headers["Access-Control-Allow-Methods"]) == (204, "GET")
    finally:
        await team.stop()


async def test_preflight_needs_no_credentials(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    auth = {
        "api_keys": {"header": "x-api-key", "keys": "key-0123456789abcdef"},
        "rules": [{"match": "*", "require": "api_key"}],
    }
    config = demo_config(users_server, echo_server, cors={"allow_origins": [APP]}, auth=auth)
    bridge = await start_bridge(config)
    status, text, headers = await preflight(
        bridge, "/v1/users/42", "GET", **{"Access-Control-Request-Headers": "x-api-key"}
    )
    assert status == 204, text  # browsers never send credentials with a preflight
    assert headers["Access-Control-Allow-Headers"] == "x-api-key"
    status, body, headers = await bridge.json("GET", "/v1/users/42", headers={"Origin": APP})
    assert (status, body["code"]) == (401, 16)
    assert headers[ACAO] == APP  # the page can read why it was refused


# --- real responses -----------------------------------------------------------------------------


async def test_get_from_an_allowed_origin(bridge: Bridge) -> None:
    status, body, headers = await bridge.json("GET", "/v1/users/1", headers={"Origin": APP})
    assert status == 200, body
    assert headers[ACAO] == APP
    assert headers["Vary"] == "Origin"
    assert exposed(headers) == ["x-request-id"]


async def test_backend_metadata_is_exposed(bridge: Bridge) -> None:
    call = {"message": "hi", "response_headers": {"x-a": "1"}, "response_trailers": {"x-b": "2"}}
    status, body, headers = await bridge.json(
        "POST", "/v1/echo", json=call, headers={"Origin": APP}
    )
    assert status == 200, body
    assert headers["Grpc-Metadata-x-a"] == "1"
    assert headers["Grpc-Trailer-x-b"] == "2"
    assert sorted(exposed(headers)) == ["grpc-metadata-x-a", "grpc-trailer-x-b", "x-request-id"]


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_streamed_response(bridge: Bridge, accept: str) -> None:
    headers = {"Origin": APP, "Accept": accept}
    async with bridge.request("GET", "/v1/ticks?count=2", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers[ACAO] == APP
        assert sorted(exposed(resp.headers)) == ["grpc-metadata-x-tick-stream", "x-request-id"]
        assert (await resp.text()).count("seq") == 2


ERRORS = [
    pytest.param("/v1/users/nobody", 404, id="backend-not-found"),
    pytest.param("/v2/nothing", 404, id="no-route"),
    pytest.param("/v1/fail/14", 503, id="backend-unavailable"),
]


@pytest.mark.parametrize(("path", "status"), ERRORS)
async def test_errors_are_readable_by_an_allowed_origin(
    bridge: Bridge, path: str, status: int
) -> None:
    got, body, headers = await bridge.json("GET", path, headers={"Origin": APP})
    assert got == status, body
    assert "code" in body
    assert headers[ACAO] == APP
    assert "x-request-id" in exposed(headers)


async def test_own_routes_are_marked(bridge: Bridge) -> None:
    for path in ("/healthz", "/openapi.json"):
        async with bridge.request("GET", path, headers={"Origin": APP}) as resp:
            assert resp.status == 200
            assert resp.headers[ACAO] == APP


async def test_rate_limit_headers_are_exposed(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    limits = [{"match": "*", "key": "ip", "rate": "1/s", "burst": 1}]
    cors = {"allow_origins": [APP]}
    config = demo_config(users_server, echo_server, cors=cors, rate_limits=limits)
    bridge = await start_bridge(config)
    passed = await bridge.json("GET", "/v1/users/1", headers={"Origin": APP})
    refused = await bridge.json("GET", "/v1/users/1", headers={"Origin": APP})
    assert (passed[0], refused[0]) == (200, 429)
    for _, _, headers in (passed, refused):
        assert headers[ACAO] == APP
        assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(
            exposed(headers)
        )
    assert "retry-after" in exposed(refused[2])


async def test_disallowed_origin_is_served_without_cors_headers(bridge: Bridge) -> None:
    for origin in ({"Origin": EVIL}, {}):
        status, body, headers = await bridge.json("GET", "/v1/users/1", headers=origin)
        assert status == 200, body  # the browser, not the bridge, keeps the page from reading it
        assert ACAO not in headers
        assert EXPOSE not in headers
        assert "Vary" not in headers


# --- refusals at the edge, before any middleware ----------------------------------------------

EDGE_REFUSALS = [
    pytest.param("Content-Length: 1000000000", 413, 8, id="declared-length"),
    pytest.param("Expect: teapot", 417, 9, id="expect"),
]


@pytest.mark.parametrize(("header", "status", "code"), EDGE_REFUSALS)
async def test_edge_refusals_are_readable_by_an_allowed_origin(
    bridge: Bridge, header: str, status: int, code: int
) -> None:
    """Refused before routing, so before the middlewares: marked all the same, or a page
    could not tell a too-large upload from a network error."""
    try:
        allowed = await exchange(bridge.url, request("POST", "/v1/echo", f"Origin: {APP}", header))
        other = await exchange(bridge.url, request("POST", "/v1/echo", f"Origin: {EVIL}", header))
    finally:
        await RawConnection.close_all()
    allowed.assert_status(status, code)
    assert allowed.headers[ACAO.lower()] == APP
    assert allowed.headers["vary"] == "Origin"
    assert allowed.headers[EXPOSE.lower()].lower() == "x-request-id"
    other.assert_status(status, code)
    assert not {ACAO.lower(), EXPOSE.lower(), "vary"} & other.headers.keys()


async def test_edge_refusals_without_cors_configured(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(demo_config(users_server, echo_server))
    try:
        answer = await exchange(
            bridge.url, request("POST", "/v1/echo", f"Origin: {APP}", "Content-Length: 99999999")
        )
    finally:
        await RawConnection.close_all()
    answer.assert_status(413, 8)
    assert ACAO.lower() not in answer.headers
