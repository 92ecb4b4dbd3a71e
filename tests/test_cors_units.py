"""Unit tests of bridge.edge.cors: preflights and real responses against the middleware alone,
then the signal and `route_methods` in a small aiohttp app. Functional tests: test_cors.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.config import CorsSettings
from bridge.edge.cors import Cors, route_methods
from bridge.routing import Route, RouteTable, parse_template

APP = "https://app.example"
EVIL = "https://evil.example"
SERVED = {"/v1/users/1": ("DELETE", "GET"), "/v1/users": ("GET", "POST")}


async def methods_for(request: web.Request) -> tuple[str, ...]:
    return SERVED.get(request.path, ())


def cors(**settings: Any) -> Cors:
    return Cors(CorsSettings(**{"allow_origins": (APP,), **settings}), methods_for)


async def passed(request: web.Request) -> web.StreamResponse:
    return web.Response(text="handler", headers={"X-Request-Id": "r1"})


async def preflight(policy: Cors, path: str, headers: dict[str, str]) -> web.StreamResponse:
    request = make_mocked_request("OPTIONS", path, headers=headers)
    return await policy.middleware(request, passed)


def status_of(response: web.StreamResponse) -> dict[str, Any]:
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert response.content_type == "application/json"
    return json.loads(response.body)


# --- preflights: (settings, path, request headers) -> status and CORS headers ---------------

ASK_GET = {"Origin": APP, "Access-Control-Request-Method": "GET"}
ECHOED = {"Access-Control-Allow-Origin": APP, "Vary": "Origin"}
GET_ANSWER = {
    **ECHOED,
    "Access-Control-Allow-Methods": "DELETE, GET",
    "Access-Control-Max-Age": "600",
}

# fmt: off
PREFLIGHTS = [
    pytest.param({}, "/v1/users/1", ASK_GET, 204, GET_ANSWER, id="allowed"),
    pytest.param(
        {}, "/v1/users", {"Origin": APP, "Access-Control-Request-Method": "POST"}, 204,
        {**ECHOED, "Access-Control-Allow-Methods": "GET, POST"}, id="post-route",
    ),
    pytest.param(
        {}, "/v1/users/1", {**ASK_GET, "Origin": "HTTPS://APP.example"}, 204,
        {"Access-Control-Allow-Origin": APP}, id="origin-case-folded",
    ),
    pytest.param(
        {}, "/v1/users/1",
        {**ASK_GET, "Access-Control-Request-Headers": "Content-Type, x-api-key,,content-type"},
        204, {"Access-Control-Allow-Headers": "content-type, x-api-key"}, id="headers-echoed",
    ),
    pytest.param(
        {"allow_headers": ("authorization", "x-api-key")}, "/v1/users/1",
        {**ASK_GET, "Access-Control-Request-Headers": "x-other"}, 204,
        {"Access-Control-Allow-Headers": "authorization, x-api-key"}, id="headers-configured",
    ),
    pytest.param(
        {"allow_headers": ()}, "/v1/users/1",
        {**ASK_GET, "Access-Control-Request-Headers": "x-other"}, 204,
        {"Access-Control-Allow-Headers": None}, id="no-headers-configured",
    ),
    pytest.param({}, "/v1/users/1", ASK_GET, 204, {"Access-Control-Allow-Headers": None},
                 id="no-headers-asked"),
    pytest.param(
        {"max_age": 7.9, "allow_credentials": True}, "/v1/users/1", ASK_GET, 204,
        {"Access-Control-Max-Age": "7", "Access-Control-Allow-Credentials": "true"},
        id="max-age-and-credentials",
    ),
    pytest.param(
        {"allow_origins": ("*",)}, "/v1/users/1", {**ASK_GET, "Origin": EVIL}, 204,
        {"Access-Control-Allow-Origin": "*", "Vary": None}, id="star",
    ),
    pytest.param({}, "/v1/users/1", {**ASK_GET, "Origin": EVIL}, 403,
                 {"Access-Control-Allow-Origin": None, "Vary": None}, id="origin-not-allowed"),
    pytest.param({}, "/v1/users/1", {**ASK_GET, "Origin": "null"}, 403,
                 {"Access-Control-Allow-Origin": None}, id="null-origin"),
    pytest.param(
        {}, "/v1/users/1", {"Origin": APP, "Access-Control-Request-Method": "PUT"}, 405,
        {**ECHOED, "Allow": "DELETE, GET", "Access-Control-Allow-Methods": None},
        id="method-not-served",
    ),
    pytest.param(
        {}, "/v1/users/1", {"Origin": APP, "Access-Control-Request-Method": "get"}, 405,
        {"Allow": "DELETE, GET"}, id="method-is-case-sensitive",
    ),
    pytest.param({}, "/nowhere", ASK_GET, 404, {**ECHOED, "Access-Control-Allow-Methods": None},
                 id="no-route"),
    pytest.param(
        {}, "/v1/users/1", {"Origin": APP, "Access-Control-Request-Method": "GET POST"}, 400,
        {**ECHOED, "Access-Control-Allow-Methods": None}, id="method-not-a-token",
    ),
    pytest.param(
        {}, "/v1/users/1", {**ASK_GET, "Access-Control-Request-Headers": "x-a, bad header"}, 400,
        {"Access-Control-Allow-Headers": None}, id="header-not-a-token",
    ),
]
# fmt: on


@pytest.mark.parametrize(("settings", "path", "headers", "status", "expected"), PREFLIGHTS)
async def test_preflight(
    settings: dict[str, Any],
    path: str,
    headers: dict[str, str],
    status: int,
    expected: dict[str, str | None],
) -> None:
    response = await preflight(cors(**settings), path, headers)
    assert response.status == status
    for name, value in expected.items():
        assert response.headers.get(name) == value, name
    if status != 204:
        assert status_of(response)["code"] in {3, 5, 7, 12}  # a google.rpc.Status body


REFUSALS = [
    pytest.param(EVIL, "GET", "/v1/users/1", 7, "origin 'https://evil.example' is not allowed"),
    pytest.param(
        APP, "PUT", "/v1/users/1", 12, "PUT not allowed for /v1/users/1 (allowed: DELETE, GET)"
    ),
    pytest.param(APP, "GET", "/nowhere", 5, "no route for /nowhere"),
    pytest.param(APP, "G\tT", "/v1/users/1", 3, "is not a method name"),
]


@pytest.mark.parametrize(("origin", "method", "path", "code", "message"), REFUSALS)
async def test_refusals_say_why(origin: str, method: str, path: str, code: int, message: str):
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    body = status_of(await preflight(cors(), path, headers))
    assert body["code"] == code
    assert message in body["message"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": APP}, id="options-without-request-method"),
        pytest.param({"Access-Control-Request-Method": "GET"}, id="no-origin"),
        pytest.param({}, id="plain-options"),
    ],
)
async def test_not_a_preflight_goes_to_the_handler(headers: dict[str, str]) -> None:
    response = await preflight(cors(), "/v1/users/1", headers)
    assert isinstance(response, web.Response) and response.text == "handler"


async def test_other_methods_go_to_the_handler() -> None:
    request = make_mocked_request("GET", "/v1/users/1", headers=ASK_GET)
    response = await cors().middleware(request, passed)
    assert isinstance(response, web.Response) and response.text == "handler"
    assert "Access-Control-Allow-Origin" not in response.headers  # added by the signal, later


# --- real responses: (settings, request headers, response headers) -> CORS headers ----------

ID_AND_METADATA = {"X-Request-Id": "r1", "Grpc-Metadata-x-a": "1", "Content-Type": "text/plain"}

# fmt: off
RESPONSES = [
    pytest.param(
        {}, {"Origin": APP}, ID_AND_METADATA,
        {**ECHOED, "Access-Control-Expose-Headers": "X-Request-Id, Grpc-Metadata-x-a",
         "Access-Control-Allow-Credentials": None}, id="allowed-default-expose",
    ),
    pytest.param(
        {}, {"Origin": APP},
        {"Grpc-Trailer-x-t": "1", "RateLimit-Limit": "5", "RateLimit-Remaining": "0",
         "Retry-After": "1", "WWW-Authenticate": "Bearer", "Server": "x"},
        {"Access-Control-Expose-Headers":
         "Grpc-Trailer-x-t, RateLimit-Limit, RateLimit-Remaining, Retry-After"},
        id="trailers-and-rate-limits-exposed",
    ),
    pytest.param({}, {"Origin": APP}, {"Content-Type": "text/plain"},
                 {**ECHOED, "Access-Control-Expose-Headers": None}, id="nothing-to-expose"),
    pytest.param(
        {"expose_headers": ("x-request-id", "x-custom")}, {"Origin": APP}, {"Grpc-Metadata-a": "1"},
        {"Access-Control-Expose-Headers": "x-request-id, x-custom"}, id="expose-configured",
    ),
    pytest.param({"expose_headers": ()}, {"Origin": APP}, ID_AND_METADATA,
                 {"Access-Control-Expose-Headers": None}, id="expose-none-configured"),
    pytest.param(
        {"allow_credentials": True}, {"Origin": APP}, {},
        {**ECHOED, "Access-Control-Allow-Credentials": "true"}, id="credentials",
    ),
    pytest.param({"allow_origins": ("*",)}, {"Origin": EVIL}, {},
                 {"Access-Control-Allow-Origin": "*", "Vary": None}, id="star"),
    pytest.param(
        {}, {"Origin": EVIL}, ID_AND_METADATA,
        {"Access-Control-Allow-Origin": None, "Vary": None,
         "Access-Control-Expose-Headers": None}, id="origin-not-allowed",
    ),
    pytest.param({}, {}, ID_AND_METADATA,
                 {"Access-Control-Allow-Origin": None, "Vary": None}, id="no-origin"),
]
# fmt: on


@pytest.mark.parametrize(("settings", "request_headers", "headers", "expected"), RESPONSES)
async def test_real_response(
    settings: dict[str, Any],
    request_headers: dict[str, str],
    headers: dict[str, str],
    expected: dict[str, str | None],
) -> None:
    request = make_mocked_request("GET", "/v1/users/1", headers=request_headers)
    response = web.Response(headers=headers)
    await cors(**settings).on_response_prepare(request, response)
    for name, value in expected.items():
        assert response.headers.get(name) == value, name


async def test_vary_is_added_to_the_handlers_own() -> None:
    request = make_mocked_request("GET", "/v1/users/1", headers={"Origin": APP})
    response = web.Response(headers={"Vary": "Accept"})
    await cors().on_response_prepare(request, response)
    assert response.headers.getall("Vary") == ["Accept", "Origin"]


async def test_a_preflight_answer_is_not_marked_twice() -> None:
    policy = cors()
    request = make_mocked_request("OPTIONS", "/v1/users/1", headers=ASK_GET)
    response = await policy.middleware(request, passed)
    await policy.on_response_prepare(request, response)
    assert response.headers.getall("Vary") == ["Origin"]
    assert "Access-Control-Expose-Headers" not in response.headers


# --- in an application: the signal on streamed responses, and route_methods -----------------


def rest_table() -> RouteTable:
    return RouteTable(
        Route(verb, parse_template(path), target=None, owner=path)
        for verb, path in (("GET", "/v1/users/{id}"), ("DELETE", "/v1/users/{id}"),
                           ("POST", "/v1/users"), ("GET", "/healthz"))
    )  # fmt: skip


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Grpc-Metadata-x-tick": "1"})
    await response.prepare(request)
    await response.write(b"line\n")
    return response


async def rest(request: web.Request) -> web.StreamResponse:
    return web.Response(text=f"rest {request.method}")


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    table = rest_table()
    policy = Cors(CorsSettings(allow_origins=(APP,)), route_methods(lambda: table))
    app = web.Application(middlewares=[policy.middleware])
    app.on_response_prepare.append(policy.on_response_prepare)
    app.router.add_get("/healthz", rest)
    app.router.add_post("/admin/protos", rest)
    app.router.add_get("/stream", streamed)
    app.router.add_route("*", r"/{tail:[\s\S]*}", rest)
    return await aiohttp_client(app)


async def test_streamed_response_is_marked(client: Any) -> None:
    async with client.get("/stream", headers={"Origin": APP}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert resp.headers["Access-Control-Expose-Headers"] == "Grpc-Metadata-x-tick"
        assert await resp.text() == "line\n"


METHODS = [
    pytest.param("/v1/users/7", "DELETE, GET", id="rest-routes"),
    pytest.param("/v1/users", "POST", id="rest-post"),
    pytest.param("/healthz", "GET, HEAD", id="own-route-and-rest-route"),
    pytest.param("/admin/protos", "POST", id="own-post"),
    pytest.param("/stream", "GET, HEAD", id="own-get-adds-head"),
]


@pytest.mark.parametrize(("path", "methods"), METHODS)
async def test_route_methods(client: Any, path: str, methods: str) -> None:
    headers = {"Origin": APP, "Access-Control-Request-Method": methods.split(", ")[0]}
    async with client.options(path, headers=headers) as resp:
        assert resp.status == 204, await resp.text()
        assert resp.headers["Access-Control-Allow-Methods"] == methods


async def test_path_without_any_route(client: Any) -> None:
    headers = {"Origin": APP, "Access-Control-Request-Method": "GET"}
    async with client.options("/v2/nothing", headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == 5


async def test_plain_options_reaches_the_catch_all(client: Any) -> None:
    async with client.options("/v1/users/7", headers={"Origin": APP}) as resp:
        assert await resp.text() == "rest OPTIONS"
        assert resp.headers["Access-Control-Allow-Origin"] == APP
