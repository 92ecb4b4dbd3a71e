"""HTTP/JSON -> gRPC end to end (SPEC section 3): every binding form, query parameters and the
proto3 JSON mapping in both directions, through the real example services.

Request-side JSON is checked through EchoService.Echo, which returns the request exactly as it
arrived in ``request``; response-side JSON through the seeded users, whose values are fixed.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import pytest
from yarl import URL

from tests.conftest import Bridge, StartBridge, demo_config

ABSENT: Final = object()  # marks a key that must not be in the JSON object

ADA: Final = {
    "name": "users/1",
    "id": "1",
    "displayName": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "ROLE_ADMIN",
    "karma": "9007199254740993",
    "createTime": "2024-01-01T00:00:00Z",
    "updateTime": "2024-01-01T00:00:00Z",
    "labels": {"org": "analytical"},
    "avatar": base64.b64encode(b"\x89PNG\r\n").decode(),
    "profile": {"languages": ["en", "fr"], "verified": True},
    "nickname": "ada",
    "tags": ["math", "poetry"],
    "address": {"city": "London", "country": "UK"},
    "phone": "+44 1",
    "sessionTtl": "3600s",
    "favoriteCategory": "books",
    "age": 36,
    "banned": False,
    "banReason": "",
}


async def call(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Like ``Bridge.json``, but the path and query are sent exactly as written (no requoting)."""
    url = URL(bridge.url + path, encoded=True)
    async with bridge.http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def ok(bridge: Bridge, method: str, path: str, **kwargs: Any) -> Any:
    """Make a call that must succeed; return its JSON body."""
    status, body, _ = await call(bridge, method, path, **kwargs)
    assert status == 200, (method, path, body)
    return body


def pick(data: Any, dotted: str) -> Any:
    """The value at a dotted path of nested JSON objects, or ABSENT."""
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return ABSENT
        data = data[key]
    return data


def ids(body: dict[str, Any]) -> list[str]:
    return [user["id"] for user in body["users"]]


# ---------------------------------------------------------------------------------------
# Binding forms
# ---------------------------------------------------------------------------------------


async def test_path_variable(demo: Bridge) -> None:
    assert await ok(demo, "GET", "/v1/users/1") == ADA


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param("update_mask=display_name", id="proto-names"),
        pytest.param("updateMask=displayName", id="json-names"),
    ],
)
async def test_patch_nested_path_variable_with_mask(demo: Bridge, mask: str) -> None:
    sent = {"displayName": "Alan M. Turing", "email": "changed@example.com"}
    body = await ok(demo, "PATCH", f"/v1/users/2?{mask}", json=sent)
    assert body["name"] == "users/2"  # bound from {user.name=users/*}
    assert body["displayName"] == "Alan M. Turing"
    assert body["email"] == "alan@example.com"  # not in the mask: unchanged
    stored = await ok(demo, "GET", "/v1/users/2")
    assert (stored["displayName"], stored["email"]) == ("Alan M. Turing", "alan@example.com")


async def test_patch_without_mask_changes_only_sent_fields(demo: Bridge) -> None:
    # grpc-gateway infers update_mask from the body's keys (nested ones too), so fields the
    # client did not send keep their values instead of being cleared.
    sent = {"displayName": "Prof. Turing", "address": {"city": "Cambridge"}}
    body = await ok(demo, "PATCH", "/v1/users/2", json=sent)
    assert body["name"] == "users/2"
    assert body["displayName"] == "Prof. Turing"
    assert body["address"] == {"city": "Cambridge", "country": "UK"}
    assert body["email"] == "alan@example.com"
    assert body["tags"] == ["math", "computing"]
    assert body["pager"] == "1234"
    assert body["karma"] == "42"
    assert await ok(demo, "GET", "/v1/users/2") == body


@pytest.mark.parametrize(
    "query, expected_id",
    [
        pytest.param("", "3", id="generated-id"),
        pytest.param("?user_id=grace", "grace", id="id-from-query"),
        pytest.param("?userId=grace", "grace", id="id-from-query-json-name"),
    ],
)
async def test_create_user_body_field(demo: Bridge, query: str, expected_id: str) -> None:
    # body: "user" -- the JSON body is the User, other request fields come from the query.
    sent = {"displayName": "Grace Hopper", "tags": ["navy"], "karma": "7"}
    body = await ok(demo, "POST", f"/v1/users{query}", json=sent)
    assert body["id"] == expected_id
    assert body["name"] == f"users/{expected_id}"
    assert (body["displayName"], body["tags"], body["karma"]) == ("Grace Hopper", ["navy"], "7")
    assert await ok(demo, "GET", f"/v1/users/{expected_id}") == body


async def test_create_user_validate_only_from_query(demo: Bridge) -> None:
    body = await ok(demo, "POST", "/v1/users?validate_only=true", json={"displayName": "Dry"})
    assert body["id"] == "3"
    status, _, _ = await call(demo, "GET", "/v1/users/3")
    assert status == 404


async def test_custom_verb_with_body_star(demo: Bridge) -> None:
    body = await ok(demo, "POST", "/v1/users/2:ban", json={"reason": "spam", "duration": "3600s"})
    assert (body["id"], body["banned"], body["banReason"]) == ("2", True, "spam")
    assert (await ok(demo, "GET", "/v1/users/2"))["banned"] is True


async def test_custom_verb_path_wins_over_body(demo: Bridge) -> None:
    # body "*" takes the remaining fields; the id bound by the path is not one of them.
    body = await ok(demo, "POST", "/v1/users/2:ban", json={"id": "1", "reason": "spam"})
    assert body["id"] == "2"
    assert (await ok(demo, "GET", "/v1/users/1"))["banned"] is False


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param("a/b/c.txt", "a/b/c.txt", id="three-segments"),
        pytest.param("c.txt", "c.txt", id="one-segment"),
        pytest.param("dir%20one/f%C3%BC.txt", "dir one/fü.txt", id="percent-decoded"),
        # Multi-segment variables keep "%2F" encoded, so "a%2Fb" stays one segment
        # (grpc-gateway's reserved expansion).
        pytest.param("a%2Fb/c", "a%2Fb/c", id="encoded-slash-kept"),
    ],
)
async def test_double_star_variable(demo: Bridge, raw: str, expected: str) -> None:
    body = await ok(demo, "GET", f"/v1/users/1/attachments/{raw}")
    content = f"attachment {expected} of user 1".encode()
    assert body == {
        "path": expected,
        "content": base64.b64encode(content).decode(),
        "size": str(len(content)),
    }


async def test_response_body_returns_only_that_field(demo: Bridge) -> None:
    body = await ok(demo, "GET", "/v1/users/1/profile")
    assert body == {"languages": ["en", "fr"], "verified": True}


@pytest.mark.parametrize(
    "org, expected",
    [
        pytest.param("analytical", ["1"], id="ada"),
        pytest.param("bletchley", ["2"], id="alan"),
        pytest.param("nobody", [], id="empty"),
    ],
)
async def test_additional_binding(demo: Bridge, org: str, expected: list[str]) -> None:
    body = await ok(demo, "GET", f"/v1/orgs/{org}/users")
    assert ids(body) == expected
    assert body["totalSize"] == str(len(expected))


@pytest.mark.parametrize(
    "path, sent, expected",
    [
        pytest.param(
            "/demo.echo.v1.EchoService/Echo",
            {"message": "hi", "number": "7", "kind": "KIND_A", "inner": {"note": "n"}},
            {"message": "hi", "number": "7", "kind": "KIND_A", "inner.note": "n"},
            id="echo",
        ),
        pytest.param(
            "/demo.users.v1.UserService/GetUser",
            {"id": "1"},
            {"displayName": "Ada Lovelace"},
            id="annotated-method",
        ),
        pytest.param(
            "/demo.users.v1.UserService/UpdateUser",
            {"user": {"name": "users/2", "email": "a@t.uk"}, "updateMask": "email"},
            {"email": "a@t.uk", "displayName": "Alan Turing"},
            id="whole-message-incl-mask",
        ),
        pytest.param("/demo.echo.v1.EchoService/ResetStats", {}, {}, id="no-http-rule"),
    ],
)
async def test_default_route(
    demo: Bridge, path: str, sent: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = await ok(demo, "POST", path, json=sent)
    reply = body.get("request", body)
    for key, value in expected.items():
        assert pick(reply, key) == value, key
    if not expected:
        assert body == {}


# ---------------------------------------------------------------------------------------
# Query parameters
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        pytest.param("", ["1", "2"], id="none"),
        pytest.param("filter.city=London", ["1"], id="nested"),
        pytest.param("filter.city=Manchester", ["2"], id="nested-other"),
        pytest.param("tags=math&tags=poetry", ["1"], id="repeated"),
        pytest.param("tags=math", ["1", "2"], id="repeated-once"),
        pytest.param("role=ROLE_ADMIN", ["1"], id="enum-by-name"),
        pytest.param("role=2", ["1"], id="enum-by-number"),
        pytest.param("role=1", ["2"], id="enum-by-number-other"),
        pytest.param("min_karma=43", ["1"], id="int64"),
        pytest.param("min_karma=9007199254740993", ["1"], id="int64-above-2^53"),
        pytest.param("min_karma=9007199254740994", [], id="int64-above-2^53-exclusive"),
        pytest.param("minKarma=43", ["1"], id="int64-json-name"),
        pytest.param("filter.created_after=2024-03-01T00:00:00Z", ["2"], id="timestamp"),
        pytest.param("filter.createdAfter=2024-03-01T00:00:00Z", ["2"], id="timestamp-json-name"),
        pytest.param(
            "filter.created_after=2024-03-01T01:00:00%2B01:00", ["2"], id="timestamp-offset"
        ),
        pytest.param("page_size=1", ["1"], id="proto-name"),
        pytest.param("pageSize=1", ["1"], id="json-name"),
        pytest.param("org=analytical", ["1"], id="string"),
        pytest.param(
            "filter.city=London&tags=math&role=ROLE_ADMIN&page_size=5", ["1"], id="combined"
        ),
        pytest.param("filter.city=Paris", [], id="no-match"),
    ],
)
async def test_list_query_parameters(demo: Bridge, query: str, expected: list[str]) -> None:
    assert ids(await ok(demo, "GET", f"/v1/users?{query}")) == expected


async def test_page_token_round_trip(demo: Bridge) -> None:
    first = await ok(demo, "GET", "/v1/users?page_size=1")
    assert ids(first) == ["1"] and first["totalSize"] == "2"
    token = first["nextPageToken"]
    assert token
    second = await ok(demo, "GET", f"/v1/users?pageSize=1&page_token={token}")
    assert ids(second) == ["2"]
    assert second["nextPageToken"] == ""


@pytest.mark.parametrize(
    "query, key, expected",
    [
        pytest.param("payload=AP9oZWxsbw%3D%3D", "payload", "AP9oZWxsbw==", id="bytes-base64"),
        pytest.param("payload=%2B%2F%2B%2F", "payload", "+/+/", id="bytes-std-alphabet"),
        pytest.param("payload=-_-_", "payload", "+/+/", id="bytes-url-safe"),
        pytest.param("payload=-_8", "payload", "+/8=", id="bytes-url-safe-unpadded"),
        pytest.param("number=9007199254740993", "number", "9007199254740993", id="int64"),
        pytest.param("number=-42", "number", "-42", id="int64-negative"),
        pytest.param("big=18446744073709551615", "big", "18446744073709551615", id="uint64-max"),
        pytest.param(
            "numbers=1&numbers=-2&numbers=9007199254740993",
            "numbers",
            ["1", "-2", "9007199254740993"],
            id="repeated-int64",
        ),
        pytest.param("kind=KIND_B", "kind", "KIND_B", id="enum-name"),
        pytest.param("kind=1", "kind", "KIND_A", id="enum-number"),
        pytest.param("kinds=KIND_A&kinds=2", "kinds", ["KIND_A", "KIND_B"], id="repeated-enum"),
        pytest.param("at=2024-01-02T03:04:05Z", "at", "2024-01-02T03:04:05Z", id="timestamp"),
        pytest.param(
            "at=2024-01-02T04:04:05.5%2B01:00",
            "at",
            "2024-01-02T03:04:05.500Z",
            id="timestamp-offset-fraction",
        ),
        pytest.param("wait=1.5s", "wait", "1.500s", id="duration"),
        pytest.param("wait=3s", "wait", "3s", id="duration-whole"),
        pytest.param("ratio=0.25", "ratio", 0.25, id="wrapper"),
        pytest.param("ratio=0", "ratio", 0, id="wrapper-zero-is-present"),
        pytest.param(
            "mask=display_name,inner.note",
            "mask",
            "displayName,inner.note",
            id="field-mask-proto-names",
        ),
        pytest.param("mask=displayName", "mask", "displayName", id="field-mask-json-names"),
        pytest.param("flag=true", "flag", True, id="bool-true"),
        pytest.param("flag=1", "flag", True, id="bool-1"),
        pytest.param("flag=True", "flag", True, id="bool-capitalised"),
        pytest.param("score=1.5", "score", 1.5, id="double"),
        pytest.param("score=NaN", "score", "NaN", id="double-nan"),
        pytest.param("small=-Infinity", "small", "-Infinity", id="float-minus-infinity"),
        pytest.param("inner.note=x", "inner.note", "x", id="nested"),
        pytest.param("inner.child.level=3", "inner.child.level", 3, id="nested-deeper"),
        pytest.param("text_choice=t", "textChoice", "t", id="oneof-proto-name"),
        pytest.param("numberChoice=0", "numberChoice", 0, id="oneof-json-name-zero"),
        pytest.param("sleep_ms=1", "sleepMs", 1, id="int32-proto-name"),
        pytest.param("message=from-query", "message", "path", id="path-wins-over-query"),
    ],
)
async def test_echo_query_parameters(demo: Bridge, query: str, key: str, expected: Any) -> None:
    body = await ok(demo, "GET", f"/v1/echo/path?{query}")
    assert pick(body["request"], key) == expected


async def test_query_does_not_override_path_field(demo: Bridge) -> None:
    body = await ok(demo, "GET", "/v1/users/1?id=2")
    assert body["id"] == "1"


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param("hello%20world", "hello world", id="space"),
        pytest.param("a%2Fb", "a/b", id="encoded-slash"),
        pytest.param("caf%C3%A9", "café", id="utf-8"),
        pytest.param("%E2%9C%93", "✓", id="utf-8-3-bytes"),
        pytest.param("100%25", "100%", id="percent"),
        pytest.param("a%3Fb%23c", "a?b#c", id="query-and-fragment-chars"),
        pytest.param("a+b", "a+b", id="plus-is-literal"),
        pytest.param("a:b", "a:b", id="colon"),
        pytest.param("a%3Ab", "a:b", id="encoded-colon"),
    ],
)
async def test_percent_encoded_path_value(demo: Bridge, raw: str, expected: str) -> None:
    body = await ok(demo, "GET", f"/v1/echo/{raw}")
    assert body["message"] == expected
    assert body["request"]["message"] == expected


async def test_percent_encoded_path_value_binds_id(demo: Bridge) -> None:
    assert (await ok(demo, "GET", "/v1/users/%31"))["displayName"] == "Ada Lovelace"


# ---------------------------------------------------------------------------------------
# JSON, both ways, through Echo
# ---------------------------------------------------------------------------------------

STRUCT: Final = {
    "s": "x",
    "n": 1.5,
    "b": True,
    "null": None,
    "list": [1.0, "two", [3.0], {"four": 4.0}],
    "obj": {"nested": {"deeper": [{"k": "v"}]}},
}


@pytest.mark.parametrize(
    "sent, expected",
    [
        pytest.param(
            {"number": 9007199254740993},
            {"number": "9007199254740993"},
            id="int64-number-in-string-out",
        ),
        pytest.param(
            {"number": "-9007199254740993"}, {"number": "-9007199254740993"}, id="int64-string-in"
        ),
        pytest.param(
            {"big": 18446744073709551615}, {"big": "18446744073709551615"}, id="uint64-number-in"
        ),
        pytest.param(
            {"big": "18446744073709551615"}, {"big": "18446744073709551615"}, id="uint64-string-in"
        ),
        pytest.param(
            {"numbers": [1, "2", -3]}, {"numbers": ["1", "2", "-3"]}, id="repeated-int64-mixed"
        ),
        pytest.param({"sleepMs": "1"}, {"sleepMs": 1}, id="int32-string-in-number-out"),
        pytest.param({"kind": "KIND_B"}, {"kind": "KIND_B"}, id="enum-name"),
        pytest.param({"kind": 2}, {"kind": "KIND_B"}, id="enum-number"),
        pytest.param(
            {"kinds": ["KIND_A", 2]}, {"kinds": ["KIND_A", "KIND_B"]}, id="repeated-enum-mixed"
        ),
        pytest.param({"payload": "AP9oZWxsbw=="}, {"payload": "AP9oZWxsbw=="}, id="bytes"),
        pytest.param({"payload": "-_-_"}, {"payload": "+/+/"}, id="bytes-url-safe-in"),
        pytest.param(
            {"at": "2024-01-02T03:04:05.123Z"}, {"at": "2024-01-02T03:04:05.123Z"}, id="timestamp"
        ),
        pytest.param(
            {"at": "2024-01-02T04:04:05+01:00"},
            {"at": "2024-01-02T03:04:05Z"},
            id="timestamp-offset-normalised",
        ),
        pytest.param({"wait": "1.5s"}, {"wait": "1.500s"}, id="duration"),
        pytest.param({"wait": "-0.25s"}, {"wait": "-0.250s"}, id="duration-negative"),
        pytest.param({"ratio": 0.5}, {"ratio": 0.5}, id="wrapper"),
        pytest.param({"ratio": 0}, {"ratio": 0}, id="wrapper-zero-is-present"),
        pytest.param({"extra": STRUCT}, {"extra": STRUCT}, id="struct"),
        pytest.param(
            {"mask": "displayName,inner.note"}, {"mask": "displayName,inner.note"}, id="field-mask"
        ),
        pytest.param(
            {"responseHeaders": {"x-a": "1"}},
            {"responseHeaders": {"x-a": "1"}},
            id="map-of-strings",
        ),
        pytest.param(
            {"named": {"k": {"note": "n", "child": {"level": 2}}, "e": {}}},
            {"named.k.note": "n", "named.k.child.level": 2, "named.e.note": ""},
            id="map-of-messages",
        ),
        pytest.param(
            {"textChoice": "t"}, {"textChoice": "t", "numberChoice": ABSENT}, id="oneof-string"
        ),
        pytest.param(
            {"numberChoice": 0},
            {"numberChoice": 0, "textChoice": ABSENT},
            id="oneof-zero-is-present",
        ),
        pytest.param(
            {"inner": {"note": "a", "child": {"note": "b", "child": {"level": 3}}}},
            {"inner.note": "a", "inner.child.note": "b", "inner.child.child.level": 3},
            id="nested-messages",
        ),
        pytest.param({"score": "NaN"}, {"score": "NaN"}, id="double-nan"),
        pytest.param({"score": "Infinity"}, {"score": "Infinity"}, id="double-infinity"),
        pytest.param({"small": "-Infinity"}, {"small": "-Infinity"}, id="float-minus-infinity"),
        pytest.param({"score": "2.5"}, {"score": 2.5}, id="double-as-string"),
        pytest.param({"score": 1e308}, {"score": 1e308}, id="double-large"),
        pytest.param({"small": 1.5}, {"small": 1.5}, id="float"),
        pytest.param({"flag": True}, {"flag": True}, id="bool"),
        pytest.param(
            {"text_choice": "t", "sleep_ms": 1, "response_headers": {"x-b": "2"}},
            {"textChoice": "t", "sleepMs": 1, "responseHeaders": {"x-b": "2"}},
            id="proto-names-in",
        ),
    ],
)
async def test_echo_json(demo: Bridge, sent: dict[str, Any], expected: dict[str, Any]) -> None:
    body = await ok(demo, "POST", "/v1/echo", json=sent)
    for key, value in expected.items():
        assert pick(body["request"], key) == value, key


async def test_echo_bytes_fields_in_response(demo: Bridge) -> None:
    body = await ok(demo, "POST", "/v1/echo", json={"payload": "-_-_", "message": "m"})
    assert (body["message"], body["payload"]) == ("m", "+/+/")


async def test_unpopulated_fields_emitted_by_default(demo: Bridge) -> None:
    body = await ok(demo, "POST", "/v1/echo", json={"message": "hi"})
    request = body["request"]
    expected = {
        "message": "hi",
        "payload": "",
        "sleepMs": 0,
        "number": "0",
        "big": "0",
        "kind": "KIND_UNSPECIFIED",
        "flag": False,
        "score": 0,
        "small": 0,
        "numbers": [],
        "kinds": [],
        "named": {},
        "responseHeaders": {},
    }
    assert {key: request.get(key, ABSENT) for key in expected} == expected


async def test_proto_names_accepted_in_body_field(demo: Bridge) -> None:
    sent = {"display_name": "Grace", "favorite_category": "ships", "session_ttl": "60s"}
    body = await ok(demo, "POST", "/v1/users", json=sent)
    assert (body["displayName"], body["favoriteCategory"], body["sessionTtl"]) == (
        "Grace",
        "ships",
        "60s",
    )


async def test_nested_repeated_messages_out(demo: Bridge) -> None:
    body = await ok(demo, "GET", "/v1/users")
    assert body["totalSize"] == "2"
    assert body["users"][0] == ADA
    alan = body["users"][1]
    assert alan["address"] == {"city": "Manchester", "country": "UK"}
    assert (alan["pager"], alan["karma"]) == ("1234", "42")
    assert "phone" not in alan  # the other member of the oneof


async def test_json_option_use_proto_names(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(
        demo_config(users_server, echo_server, json={"use_proto_names": True})
    )
    user = await ok(bridge, "GET", "/v1/users/1")
    assert user["display_name"] == "Ada Lovelace"
    assert user["create_time"] == "2024-01-01T00:00:00Z"
    assert user["session_ttl"] == "3600s"
    assert not {"displayName", "createTime", "sessionTtl"} & user.keys()
    # Both spellings are still accepted in.
    sent = {"textChoice": "t", "sleep_ms": 1, "responseHeaders": {"x-c": "3"}}
    body = await ok(bridge, "POST", "/v1/echo", json=sent)
    request = body["request"]
    assert (request["text_choice"], request["sleep_ms"]) == ("t", 1)
    assert request["response_headers"] == {"x-c": "3"}
    assert "deadline_remaining" in body and "deadlineRemaining" not in body


async def test_json_option_emit_unpopulated_false(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(
        demo_config(users_server, echo_server, json={"emit_unpopulated": False})
    )
    body = await ok(bridge, "POST", "/v1/echo", json={"message": "hi", "flag": False})
    assert body["request"] == {"message": "hi"}
    assert "payload" not in body
    alan = await ok(bridge, "GET", "/v1/users/2")
    assert not {"avatar", "banned", "banReason", "phone"} & alan.keys()
    assert alan["displayName"] == "Alan Turing"


async def test_unset_message_fields_are_null_like_grpc_gateway(demo: Bridge) -> None:
    """emit_unpopulated (the default) writes what grpc-gateway's marshaler (protojson with
    EmitUnpopulated) writes: null for each unset singular message field at any depth, while
    unset oneof members stay out."""
    sent = {"message": "hi", "inner": {"child": {"note": "deep"}}, "named": {"a": {"level": 2}}}
    request = (await ok(demo, "POST", "/v1/echo", json=sent))["request"]
    for key in ("at", "wait", "ratio", "extra", "mask"):  # well-known types are null too
        assert key in request and request[key] is None, key
    assert request["inner"]["child"]["note"] == "deep"
    assert request["inner"]["child"]["child"] is None  # a recursive type, two levels down
    assert request["named"]["a"] == {"note": "", "level": 2, "child": None}  # map values
    assert not {"textChoice", "numberChoice"} & request.keys()  # an unset oneof is left out
    grace = await ok(demo, "POST", "/v1/users", json={"displayName": "Grace Hopper"})
    assert grace["address"] is None and grace["sessionTtl"] is None
    listed = (await ok(demo, "GET", "/v1/users?pageSize=100"))["users"]  # repeated messages
    assert [u["address"] for u in listed if u["id"] == grace["id"]] == [None]
    assert all("address" in u for u in listed)


async def test_json_option_discard_unknown(
    start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    bridge = await start_bridge(
        demo_config(users_server, echo_server, json={"discard_unknown": True})
    )
    sent = {"message": "hi", "bogus": 1, "inner": {"note": "n", "nope": [1]}}
    body = await ok(bridge, "POST", "/v1/echo", json=sent)
    assert body["request"]["message"] == "hi"
    assert body["request"]["inner"] == {"note": "n", "level": 0, "child": None}
    assert "bogus" not in body["request"]


# ---------------------------------------------------------------------------------------
# No route, wrong method
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        pytest.param("GET", "/v1/nothing", id="unknown-path"),
        pytest.param("POST", "/", id="root"),  # GET / leads to /docs
        pytest.param("GET", "/v1/users/1/", id="trailing-slash"),
        pytest.param("GET", "/v1/users/", id="trailing-slash-collection"),
        pytest.param("GET", "/v1//users", id="empty-segment"),
        pytest.param("GET", "/v1/users/1/attachments", id="double-star-needs-a-segment"),
        pytest.param("POST", "/demo.echo.v1.EchoService/Nope", id="unknown-method"),
        pytest.param("POST", "/demo.nope.v1.Nope/Echo", id="unknown-service"),
    ],
)
async def test_no_route_is_404_with_status_body(demo: Bridge, method: str, path: str) -> None:
    status, body, headers = await call(demo, method, path)
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert body.keys() == {"code", "message", "details"}
    assert body["code"] == 5  # NOT_FOUND
    assert path in body["message"]
    assert body["details"] == []


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        pytest.param("DELETE", "/v1/echo", {"POST"}, id="delete-on-post-route"),
        pytest.param("PUT", "/v1/users/1", {"DELETE", "GET", "PATCH"}, id="put-on-user"),
        pytest.param("POST", "/v1/users/1", {"DELETE", "GET", "PATCH"}, id="post-on-user"),
        pytest.param("DELETE", "/v1/users", {"GET", "POST"}, id="delete-on-collection"),
        pytest.param("GET", "/demo.echo.v1.EchoService/Echo", {"POST"}, id="get-on-default-route"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    demo: Bridge, method: str, path: str, allowed: set[str]
) -> None:
    status, body, headers = await call(demo, method, path)
    assert status == 405
    assert set(headers["Allow"].split(", ")) == allowed
    assert body.keys() == {"code", "message", "details"}
    assert body["code"] == 12  # UNIMPLEMENTED, as grpc-gateway answers a 405
    assert method in body["message"]
