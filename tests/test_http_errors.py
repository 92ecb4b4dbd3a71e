"""Errors over HTTP (SPEC section 3): the gRPC -> HTTP status table, google.rpc.Status bodies
with decoded details, and bad input that must be a 400 (never a 500) naming the field -- each
followed by a call that proves the bridge still serves.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson
import pytest
from yarl import URL

import services  # noqa: F401  (puts the generated code on sys.path)
from bridge.errors import BridgeError
from bridge.transcode.request import mask_paths
from tests.conftest import Bridge, StartBridge, demo_config

from demo.echo.v1 import echo_pb2

BAD_REQUEST_DETAIL: Final = {
    "@type": "type.googleapis.com/google.rpc.BadRequest",
    "fieldViolations": [{"field": "code", "description": "requested"}],
}


async def call(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Make a request with the path and query sent exactly as written; (status, JSON, headers)."""
    url = URL(bridge.url + path, encoded=True)
    async with bridge.http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            pytest.fail(f"{method} {path}: HTTP {resp.status} body is not JSON: {text[:200]!r}")
        return resp.status, body, resp.headers


def assert_status_body(body: Any, code: int) -> None:
    """A google.rpc.Status JSON object with the given code."""
    assert isinstance(body, dict) and body.keys() == {"code", "message", "details"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["details"], list)


async def assert_still_serving(bridge: Bridge) -> None:
    """The bridge answers ordinary calls on both upstreams after a bad request."""
    status, body, _ = await call(bridge, "POST", "/v1/echo", json={"message": "still here"})
    assert (status, body.get("message")) == (200, "still here")
    status, body, _ = await call(bridge, "GET", "/v1/users/1")
    assert (status, body.get("displayName")) == (200, "Ada Lovelace")


# ---------------------------------------------------------------------------------------
# The status table
# ---------------------------------------------------------------------------------------

STATUS_TABLE: Final = [
    pytest.param(1, 499, id="CANCELLED"),
    pytest.param(2, 500, id="UNKNOWN"),
    pytest.param(3, 400, id="INVALID_ARGUMENT"),
    pytest.param(4, 504, id="DEADLINE_EXCEEDED"),
    pytest.param(5, 404, id="NOT_FOUND"),
    pytest.param(6, 409, id="ALREADY_EXISTS"),
    pytest.param(7, 403, id="PERMISSION_DENIED"),
    pytest.param(8, 429, id="RESOURCE_EXHAUSTED"),
    pytest.param(9, 400, id="FAILED_PRECONDITION"),
    pytest.param(10, 409, id="ABORTED"),
    pytest.param(11, 400, id="OUT_OF_RANGE"),
    pytest.param(12, 501, id="UNIMPLEMENTED"),
    pytest.param(13, 500, id="INTERNAL"),
    pytest.param(14, 503, id="UNAVAILABLE"),
    pytest.param(15, 500, id="DATA_LOSS"),
    pytest.param(16, 401, id="UNAUTHENTICATED"),
]


@pytest.mark.parametrize("code, http", STATUS_TABLE)
async def test_status_table(demo: Bridge, code: int, http: int) -> None:
    status, body, headers = await call(demo, "GET", f"/v1/fail/{code}")
    assert status == http
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Request-Id"]
    assert body == {"code": code, "message": f"failure {code} requested", "details": []}


@pytest.mark.parametrize("code, http", STATUS_TABLE)
async def test_status_details_as_any_json(demo: Bridge, code: int, http: int) -> None:
    path = f"/v1/fail/{code}?with_details=true&message=why%20not"
    status, body, _ = await call(demo, "GET", path)
    assert status == http
    assert body == {"code": code, "message": "why not", "details": [BAD_REQUEST_DETAIL]}


async def test_code_zero_is_ok(demo: Bridge) -> None:
    status, body, _ = await call(demo, "GET", "/v1/fail/0")
    assert (status, body) == (200, {})


async def test_backend_invalid_argument_passes_through(demo: Bridge) -> None:
    status, body, _ = await call(demo, "GET", "/v1/fail/17")
    assert status == 400
    assert body == {"code": 3, "message": "code 17 is not a gRPC status code", "details": []}


# ---------------------------------------------------------------------------------------
# Bad input: 400, code 3, the message names the field (or what is wrong with the JSON)
# ---------------------------------------------------------------------------------------


def nested(depth: int, key: str, leaf: str) -> bytes:
    """``{"key": {"key": ... leaf ...}}`` nested ``depth`` objects deep, as raw JSON."""
    return f'{{"{key}": '.encode() * depth + leaf.encode() + b"}" * depth


def body(value: Any) -> dict[str, Any]:
    return {"data": json.dumps(value).encode(), "headers": {"Content-Type": "application/json"}}


def raw(data: bytes) -> dict[str, Any]:
    return {"data": data, "headers": {"Content-Type": "application/json"}}


ECHO: Final = "/v1/echo"

BAD_INPUT: Final = [
    # Malformed JSON and bodies that are not what the rule needs.
    pytest.param("POST", ECHO, raw(b'{"message": '), ["JSON"], id="malformed-json-truncated"),
    pytest.param("POST", ECHO, raw(b'{"message": "a",}'), ["JSON"], id="malformed-json-comma"),
    pytest.param("POST", ECHO, raw(b'{"message": "a"} x'), ["JSON"], id="malformed-json-trailing"),
    pytest.param("POST", ECHO, raw(b"{'message': 'a'}"), ["JSON"], id="malformed-json-quotes"),
    pytest.param("POST", ECHO, raw(b'{"message": "\xff\xfe"}'), ["UTF-8"], id="invalid-utf-8"),
    # RFC 8259 JSON only: proto3 JSON spells these values "NaN" and "Infinity", as strings.
    pytest.param("POST", ECHO, raw(b'{"small": NaN}'), ["JSON"], id="nan-literal"),
    pytest.param("POST", ECHO, raw(b'{"small": -Infinity}'), ["JSON"], id="infinity-literal"),
    pytest.param("POST", ECHO, raw(b"\xff\xfe{\x00}\x00"), ["JSON"], id="utf-16-body"),
    pytest.param("POST", ECHO, raw(b"[1, 2]"), ["JSON object"], id="body-star-array"),
    pytest.param("POST", ECHO, raw(b'"text"'), ["JSON object"], id="body-star-string"),
    pytest.param("POST", ECHO, raw(b"42"), ["JSON object"], id="body-star-number"),
    pytest.param("POST", ECHO, raw(b"null"), ["JSON object"], id="body-star-null"),
    pytest.param("POST", "/v1/users", raw(b"[1]"), ["user"], id="body-field-array"),
    pytest.param("POST", "/v1/users", raw(b'"x"'), ["user"], id="body-field-string"),
    # Wrong types.
    pytest.param("POST", ECHO, body({"number": "abc"}), ["number"], id="wrong-type-int64"),
    pytest.param("POST", ECHO, body({"number": 1.5}), ["number"], id="wrong-type-fraction"),
    pytest.param("POST", ECHO, body({"message": 5}), ["message"], id="wrong-type-string"),
    pytest.param("POST", ECHO, body({"message": {"a": 1}}), ["message"], id="wrong-type-object"),
    pytest.param("POST", ECHO, body({"flag": "yes"}), ["flag"], id="wrong-type-bool"),
    pytest.param("POST", ECHO, body({"numbers": 1}), ["numbers"], id="wrong-type-not-a-list"),
    pytest.param("POST", ECHO, body({"inner": "x"}), ["inner"], id="wrong-type-message"),
    pytest.param("POST", ECHO, body({"named": []}), ["named"], id="wrong-type-map"),
    pytest.param("POST", ECHO, body({"kind": "KIND_Z"}), ["kind"], id="wrong-type-enum-name"),
    pytest.param("POST", ECHO, body({"at": "yesterday"}), ["at"], id="wrong-type-timestamp"),
    pytest.param("POST", ECHO, body({"wait": "soon"}), ["wait"], id="wrong-type-duration"),
    pytest.param("POST", ECHO, body({"ratio": "half"}), ["ratio"], id="wrong-type-wrapper"),
    pytest.param("POST", ECHO, body({"extra": [1]}), ["extra"], id="wrong-type-struct"),
    pytest.param("POST", ECHO, body({"payload": "!!!"}), ["payload"], id="wrong-type-bytes"),
    pytest.param(
        "POST", "/v1/users", body({"displayName": 5}), ["displayName"], id="wrong-type-body-field"
    ),
    pytest.param(
        "POST", ECHO, body({"textChoice": "a", "numberChoice": 1}), ["choice"], id="oneof-twice"
    ),
    # Unknown fields.
    pytest.param("POST", ECHO, body({"bogus": 1}), ["bogus"], id="unknown-field"),
    pytest.param("POST", ECHO, body({"inner": {"bogus": 1}}), ["bogus"], id="unknown-nested-field"),
    pytest.param("POST", "/v1/users", body({"bogus": 1}), ["bogus"], id="unknown-body-field"),
    # Out of range.
    pytest.param("POST", ECHO, body({"sleepMs": 2**31}), ["sleepMs"], id="int32-too-big"),
    pytest.param("POST", ECHO, body({"sleepMs": -(2**31) - 1}), ["sleepMs"], id="int32-too-small"),
    pytest.param("POST", ECHO, body({"number": 2**63}), ["number"], id="int64-too-big"),
    pytest.param("POST", ECHO, body({"number": 10**30}), ["number"], id="int-beyond-64-bits"),
    pytest.param("POST", ECHO, body({"big": -1}), ["big"], id="uint64-negative"),
    pytest.param("POST", ECHO, body({"small": 1e39}), ["small"], id="float-too-big"),
    # Nested 5,000 deep: in a Struct field and as plain message nesting.
    pytest.param(
        "POST",
        ECHO,
        raw(b'{"extra": ' + nested(5000, "a", "1") + b"}"),
        ["deep"],
        id="struct-5000-deep",
    ),
    pytest.param(
        "POST",
        ECHO,
        raw(b'{"inner": ' + nested(5000, "child", "{}") + b"}"),
        ["deep"],
        id="message-5000-deep",
    ),
    pytest.param(
        "POST",
        ECHO,
        raw(b'{"extra": {"l": ' + b"[" * 5000 + b"]" * 5000 + b"}}"),
        ["deep"],
        id="list-5000-deep",
    ),
    # Query parameters.
    pytest.param("GET", "/v1/users?bogus=1", {}, ["bogus"], id="query-unknown"),
    pytest.param(
        "GET", "/v1/users?filter.bogus=1", {}, ["filter.bogus"], id="query-unknown-nested"
    ),
    pytest.param(
        "GET",
        "/v1/users?page_size=1&page_size=2",
        {},
        ["page_size"],
        id="query-repeated-for-singular",
    ),
    pytest.param("GET", "/v1/users?filter=London", {}, ["filter"], id="query-names-message"),
    pytest.param("GET", "/v1/echo/x?inner=1", {}, ["inner"], id="query-names-message-echo"),
    pytest.param("GET", "/v1/echo/x?named=1", {}, ["named"], id="query-names-map"),
    pytest.param(
        "GET", "/v1/users?page_size=abc", {}, ["page_size", "pageSize"], id="query-bad-int32"
    ),
    pytest.param(
        "GET",
        "/v1/users?page_size=2147483648",
        {},
        ["page_size", "pageSize"],
        id="query-int32-out-of-range",
    ),
    pytest.param(
        "GET", "/v1/users?min_karma=12x", {}, ["min_karma", "minKarma"], id="query-bad-int64"
    ),
    pytest.param("GET", "/v1/users?role=ROLE_NOPE", {}, ["role"], id="query-bad-enum"),
    pytest.param("GET", "/v1/echo/x?flag=maybe", {}, ["flag"], id="query-bad-bool"),
    pytest.param("GET", "/v1/echo/x?at=yesterday", {}, ["at"], id="query-bad-timestamp"),
    pytest.param("GET", "/v1/echo/x?wait=soon", {}, ["wait"], id="query-bad-duration"),
    pytest.param("GET", "/v1/echo/x?payload=%21%21%21", {}, ["payload"], id="query-bad-bytes"),
    # Path values.
    pytest.param("GET", "/v1/fail/abc", {}, ["code"], id="path-not-a-number"),
    pytest.param("GET", "/v1/fail/1.5", {}, ["code"], id="path-fraction"),
    pytest.param("GET", "/v1/fail/2147483648", {}, ["code"], id="path-int32-out-of-range"),
]


@pytest.mark.parametrize("method, path, kwargs, names", BAD_INPUT)
async def test_bad_input_is_400_naming_the_field(
    demo: Bridge, method: str, path: str, kwargs: dict[str, Any], names: list[str]
) -> None:
    status, body, headers = await call(demo, method, path, **kwargs)
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    assert_status_body(body, 3)
    message = body["message"].lower()
    assert any(name.lower() in message for name in names), body["message"]
    assert "traceback" not in message
    await assert_still_serving(demo)


# ---------------------------------------------------------------------------------------
# Never a 500 for a client error
# ---------------------------------------------------------------------------------------

# Just below and above the nesting protobuf runtimes decode (100 wire levels in upb, C++ and
# Java; a Struct level is 3 wire levels, a list level 2, a map entry 1): the bridge must
# forward the request or refuse it as a 400, never pass on what the backend cannot decode.
# The echo reply nests the request one level deeper, so requests of exactly 100 levels are
# left out for Echo (the reply could not be decoded); CreateUser's reply is shallower.
DEPTHS: Final = [
    *(
        pytest.param(ECHO, "extra", nested(n, "a", "1"), id=f"struct-{n}")
        for n in (32, 33, 34, 40, 49, 50)
    ),
    *(
        pytest.param(ECHO, "extra", b'{"l": ' + b"[" * n + b"]" * n + b"}", id=f"list-{n}")
        for n in (47, 48, 50, 60, 98, 99)
    ),
    *(
        pytest.param(ECHO, "inner", nested(n, "child", "{}"), id=f"message-{n}")
        for n in (97, 98, 99, 100)
    ),
    *(
        pytest.param(ECHO, "named", b'{"k": ' + nested(n, "child", "{}") + b"}", id=f"map-{n}")
        for n in (96, 97, 99, 100)
    ),
    *(
        pytest.param("/v1/users", "profile", nested(n, "a", "1"), id=f"body-field-struct-{n}")
        for n in (33, 34, 49, 50)
    ),
]


@pytest.mark.parametrize("path, field, value", DEPTHS)
async def test_deep_nesting_is_forwarded_or_400(
    demo: Bridge, path: str, field: str, value: bytes
) -> None:
    required = b'"displayName": "d"' if path == "/v1/users" else b'"message": "d"'
    data = b'{%s, "%s": ' % (required, field.encode()) + value + b"}"
    status, body, _ = await call(demo, "POST", path, **raw(data))
    assert status in (200, 400), body
    if status == 400:
        assert_status_body(body, 3)
        assert "deep" in body["message"].lower(), body["message"]
    await assert_still_serving(demo)


def test_inferring_a_patch_mask_stops_at_protobufs_depth() -> None:
    """A recursive body 1,000 levels deep (the JSON parser allows 1,024) is a 400, not a
    RecursionError while the update_mask is inferred from it."""
    inner = echo_pb2.EchoRequest.Inner.DESCRIPTOR
    assert mask_paths(inner, orjson.loads(nested(99, "child", "{}"))) == ["child." * 98 + "child"]
    with pytest.raises(BridgeError) as raised:
        mask_paths(inner, orjson.loads(nested(1000, "child", "{}")))
    assert raised.value.code == 3 and "deep" in raised.value.message


@pytest.fixture
async def small_bridge(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    return await start_bridge(demo_config(users_server, echo_server, limits={"max_body": "1KiB"}))


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), 256):
        yield data[i : i + 256]


@pytest.mark.parametrize(
    "path, chunked",
    [
        pytest.param(ECHO, False, id="body-star"),
        pytest.param(ECHO, True, id="body-star-chunked"),
        pytest.param("/v1/users", False, id="body-field"),
        pytest.param("/demo.echo.v1.EchoService/Echo", False, id="default-route"),
    ],
)
async def test_body_over_max_body_is_413(small_bridge: Bridge, path: str, chunked: bool) -> None:
    data = json.dumps({"message": "x" * 2048}).encode()
    payload: Any = _chunks(data) if chunked else data
    status, body, _ = await call(
        small_bridge, "POST", path, data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 413, body
    assert_status_body(body, 8)  # RESOURCE_EXHAUSTED
    await assert_still_serving(small_bridge)


async def test_body_just_under_max_body_is_served(small_bridge: Bridge) -> None:
    data = json.dumps({"message": ""}).encode()
    data = json.dumps({"message": "x" * (1024 - len(data))}).encode()
    assert len(data) == 1024
    status, body, _ = await call(small_bridge, "POST", ECHO, data=data)
    assert status == 200, body
    assert len(body["message"]) == 1024 - len(b'{"message": ""}')


async def test_a_utf8_byte_order_mark_is_ignored(demo):
    data = b"\xef\xbb\xbf" + json.dumps({"message": "bom"}).encode()
    status, reply, _ = await call(demo, "POST", ECHO, **raw(data))
    assert status == 200 and reply["message"] == "bom", reply


async def test_unpaired_surrogate_in_a_string_is_a_400(demo):
    body = b'{"message": "ok \\ud800 then"}'
    status, error, _ = await demo.json(
        "POST", "/v1/echo", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and error["code"] == 3
    assert "surrogate" in error["message"].lower()
    status, reply, _ = await demo.json("POST", "/v1/echo", json={"message": "naïve ✓ 😀"})
    assert status == 200 and reply["request"]["message"] == "naïve ✓ 😀"
