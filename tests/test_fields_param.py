"""The ``fields`` system parameter over real HTTP (SPEC section 7, "Responses shaped for the
client"): unary replies, each element of a list, each message of NDJSON and SSE streams, a
response_body route, ``$fields``, a request with its own field called ``fields``
(tests/protos/fidelity/v1/selections.proto), the 400s, and the OpenAPI parameter.
"""

from __future__ import annotations

import json
from typing import Any, Final

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from tests.conftest import Bridge, StartBridge
from tests.proto_service import bridge_for, fidelity_pool, message_class
from tests.test_http_streaming import parse_ndjson, parse_sse

__all__ = ["fidelity_pool"]  # a session fixture, imported so that pytest finds it

BAD: Final = 400


async def get(bridge: Bridge, path: str, **kwargs: Any) -> tuple[int, Any]:
    status, body, _ = await bridge.json("GET", path, **kwargs)
    return status, body


def assert_refused(status: int, body: Any, *fragments: str) -> None:
    """A 400 google.rpc.Status whose message holds every fragment."""
    assert status == BAD, body
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for fragment in fragments:
        assert fragment in body["message"], body


# --- the example services ------------------------------------------------------------------


async def test_get_user_returns_only_the_selected_fields(demo: Bridge) -> None:
    status, user = await get(demo, "/v1/users/1?fields=displayName,address(city)")
    assert status == 200, user
    assert user == {"displayName": "Ada Lovelace", "address": {"city": "London"}}


async def test_dollar_fields_and_proto_names_select_too(demo: Bridge) -> None:
    status, user = await get(
        demo, "/v1/users/1", params={"$fields": "display_name,address/country"}
    )
    assert status == 200, user
    assert user == {"displayName": "Ada Lovelace", "address": {"country": "UK"}}


async def test_list_users_trims_each_element(demo: Bridge) -> None:
    status, page = await get(demo, "/v1/users?fields=users(id,displayName)")
    assert status == 200, page
    assert page == {
        "users": [
            {"id": "1", "displayName": "Ada Lovelace"},
            {"id": "2", "displayName": "Alan Turing"},
        ]
    }


async def test_a_selection_beside_request_fields(demo: Bridge) -> None:
    """Other query parameters still bind to the request; the selection shapes the reply."""
    status, page = await get(demo, "/v1/users?pageSize=1&fields=users/id,nextPageToken")
    assert status == 200, page
    assert [u["id"] for u in page["users"]] == ["1"] and set(page) == {"users", "nextPageToken"}
    assert page["users"] == [{"id": "1"}]


async def test_empty_selection_is_the_whole_reply(demo: Bridge) -> None:
    _, whole = await get(demo, "/v1/users/1")
    status, same = await get(demo, "/v1/users/1?fields=")
    assert status == 200 and same == whole
    status, star = await get(demo, "/v1/users/1?fields=*")
    assert status == 200 and star == whole


async def test_post_with_body_star_takes_the_selection(demo: Bridge) -> None:
    async with demo.request("POST", "/v1/echo?fields=message", json={"message": "hi"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"message": "hi"}


async def test_each_ndjson_line_is_trimmed(demo: Bridge) -> None:
    async with demo.request("GET", "/v1/ticks?count=3&fields=seq") as resp:
        assert resp.status == 200
        lines = parse_ndjson(await resp.text())
    assert lines == [{"result": {"seq": str(i)}} for i in (1, 2, 3)]


async def test_each_sse_event_is_trimmed(demo: Bridge) -> None:
    headers = {"Accept": "text/event-stream"}
    async with demo.request("GET", "/v1/ticks?count=2&fields=seq", headers=headers) as resp:
        assert resp.status == 200
        events = parse_sse(await resp.text())
    assert events == [("message", {"seq": "1"}), ("message", {"seq": "2"})]


async def test_a_stream_error_line_is_not_trimmed(demo: Bridge) -> None:
    async with demo.request("GET", "/v1/ticks?count=3&failAfter=1&fields=seq") as resp:
        lines = parse_ndjson(await resp.text())
    assert lines[0] == {"result": {"seq": "1"}}
    assert set(lines[-1]["error"]) >= {"code", "message"}


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        pytest.param(
            "/v1/users/1?fields=displayName,zip",
            ("'zip' names no field of demo.users.v1.User",),
            id="unknown-field",
        ),
        pytest.param(
            "/v1/users/1?fields=address(zip)",
            ("'address/zip' names no field of demo.users.v1.Address",),
            id="unknown-nested-field",
        ),
        pytest.param(
            "/v1/users?fields=users(nope)",
            ("'users/nope' names no field of demo.users.v1.User",),
            id="unknown-field-in-a-list",
        ),
        pytest.param(
            "/v1/users/1?fields=createTime/seconds",
            ("'createTime'", "google.protobuf.Timestamp"),
            id="inside-a-well-known-type",
        ),
        pytest.param(
            "/v1/users/1?fields=address(city",
            ("invalid field selection", "missing ')'"),
            id="syntax",
        ),
        pytest.param(
            "/v1/ticks?count=1&fields=seq,nope",
            ("'nope' names no field of demo.echo.v1.TickEvent",),
            id="stream",
        ),
        pytest.param(
            "/v1/users/1?fields=id&$fields=name", ("given more than once",), id="both-spellings"
        ),
        pytest.param(
            "/v1/users/1/profile?fields=languages",
            ("this route's response ('profile')", "google.protobuf.Struct"),
            id="response-body-struct",
        ),
        pytest.param("/v1/files/a.txt?fields=data", ("raw bytes",), id="raw-http-body"),
    ],
)
async def test_a_bad_selection_is_a_400_before_the_call(
    demo: Bridge, path: str, fragments: tuple[str, ...]
) -> None:
    status, body = await get(demo, path.replace("$", "%24"))
    assert_refused(status, body, *fragments)


async def test_the_openapi_document_lists_the_parameter(demo: Bridge) -> None:
    status, doc = await get(demo, "/openapi.json")
    assert status == 200
    for path, item in doc["paths"].items():
        for verb, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"}
            raw = operation["x-grpc"]["method"].endswith("/Download")  # raw HttpBody chunks
            assert ("fields" in names) != raw, (verb, path)


# --- a request with its own field called `fields` ------------------------------------------


@pytest.fixture
async def search(start_bridge: StartBridge, fidelity_pool: descriptor_pool.DescriptorPool):
    """A SelectService backend whose reply reports the request's own `fields` field."""
    reply = message_class(fidelity_pool, "SearchResponse")

    async def answer(request: Message, context: grpc.aio.ServicerContext) -> Message:
        hit = {"id": "h1", "title": "One", "author": {"name": "Ada", "email": "a@x"}}
        return reply(
            query=request.q,  # type: ignore[attr-defined]
            fields=list(request.fields),  # type: ignore[attr-defined]
            hits=[hit, {"id": "h2", "title": "Two"}],
            by_id={"h1": hit},
            total_size=2,
        )

    bridges = bridge_for(start_bridge, fidelity_pool, {"SelectService/Search": answer})
    yield await anext(bridges)
    await bridges.aclose()


async def test_fields_binds_to_the_request_field(search: Bridge) -> None:
    status, reply = await get(search, "/v1/search?q=x&fields=a&fields=b")
    assert status == 200, reply
    assert reply["fields"] == ["a", "b"]  # the backend got them; nothing was trimmed
    assert reply["query"] == "x" and len(reply["hits"]) == 2


async def test_dollar_fields_is_the_selection(search: Bridge) -> None:
    query = {"q": "x", "fields": "a", "$fields": "fields,hits(id),byId(author/name)"}
    status, reply = await get(search, "/v1/search", params=query)
    assert status == 200, reply
    assert reply == {
        "fields": ["a"],
        "hits": [{"id": "h1"}, {"id": "h2"}],
        "byId": {"h1": {"author": {"name": "Ada"}}},
    }


async def test_dollar_fields_on_a_response_body_route(search: Bridge) -> None:
    status, hits = await get(search, "/v1/search:hits", params={"$fields": "id,author(name)"})
    assert status == 200, hits
    assert hits == [{"id": "h1", "author": {"name": "Ada"}}, {"id": "h2", "author": None}]
    status, body = await get(search, "/v1/search:hits", params={"$fields": "hits"})
    assert_refused(status, body, "'hits' names no field of fidelity.v1.Hit")


async def test_the_openapi_document_says_dollar_fields(search: Bridge) -> None:
    status, doc = await get(search, "/openapi.json")
    assert status == 200
    query = {p["name"]: p for p in doc["paths"]["/v1/search"]["get"]["parameters"]}
    assert "$fields" in query and "`$fields`" in query["$fields"]["description"]
    assert query["fields"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert json.dumps(doc)  # still one JSON document


async def test_selection_is_not_a_request_field_elsewhere(demo: Bridge) -> None:
    """On a route whose request has no `fields`, both spellings select and neither reaches
    the request (an unknown query parameter would be a 400)."""
    for key in ("fields", "%24fields"):
        status, user = await get(demo, f"/v1/users/2?{key}=id")
        assert (status, user) == (200, {"id": "2"})
