"""The ``fields`` selection alone (bridge/transcode/partial.py): the parser's grammar, binding a
selection to a message type (every name checked), and trimming rendered JSON: nested, repeated,
map values, ``*``, a response_body field, an aggregate's object; the per-plan cache.
"""

from __future__ import annotations

from typing import Any, Final

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor
from multidict import MultiDict

from bridge.errors import INVALID_ARGUMENT, BridgeError
from bridge.transcode.partial import (
    Selection,
    Trims,
    for_object,
    for_response,
    parse,
    response_trim,
    selection_text,
)
from bridge.transcode.response import ResponsePlan
from tests.proto_service import fidelity_pool, message_class

__all__ = ["fidelity_pool"]  # a session fixture, imported so that pytest finds it

ALL: Final = "*"  # how `plain` writes a level's "every field"


def plain(selection: Selection | None) -> Any:
    """A selection as nested dicts (None: all of it; key "*": every field of that level)."""
    if selection is None:
        return None
    out: dict[str, Any] = {name: plain(below) for name, below in selection.names.items()}
    if selection.everything:
        out[ALL] = None
    return out


# --- the parser ----------------------------------------------------------------------------

VALID: Final = [
    pytest.param("a", {"a": None}, id="one-name"),
    pytest.param("a,b", {"a": None, "b": None}, id="list"),
    pytest.param("a/b", {"a": {"b": None}}, id="slash-path"),
    pytest.param("a.b", {"a": {"b": None}}, id="dotted-path-as-in-a-field-mask"),
    pytest.param("a/b/c", {"a": {"b": {"c": None}}}, id="deep-path"),
    pytest.param("a(b,c)", {"a": {"b": None, "c": None}}, id="sub-selection"),
    pytest.param("a(b(c),d/e)", {"a": {"b": {"c": None}, "d": {"e": None}}}, id="nested-parens"),
    pytest.param("a/b(c)", {"a": {"b": {"c": None}}}, id="path-then-parens"),
    pytest.param("items(id),items(title)", {"items": {"id": None, "title": None}}, id="merged"),
    pytest.param("a(b),a", {"a": None}, id="whole-absorbs-part"),
    pytest.param("a/b,a/c", {"a": {"b": None, "c": None}}, id="paths-merged"),
    pytest.param("*", {ALL: None}, id="wildcard"),
    pytest.param("", {ALL: None}, id="empty-is-everything"),
    pytest.param("a/*", {"a": None}, id="wildcard-ends-a-path"),
    pytest.param("a(*)", {"a": None}, id="wildcard-in-parens"),
    pytest.param("*,a(b)", {"a": {"b": None}, ALL: None}, id="wildcard-beside-a-refinement"),
    pytest.param("a(*,b(c))", {"a": {"b": {"c": None}, ALL: None}}, id="nested-wildcard"),
    pytest.param("display_name,_x9", {"display_name": None, "_x9": None}, id="identifiers"),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse(text: str, expected: Any) -> None:
    assert plain(parse(text)) == expected


INVALID: Final = [
    pytest.param("a,,b", "unexpected ',' at position 3", id="empty-item"),
    pytest.param("a,", "a field name is missing at position 3", id="trailing-comma"),
    pytest.param(",a", "unexpected ',' at position 1", id="leading-comma"),
    pytest.param("a/", "a field name is missing at position 3", id="trailing-slash"),
    pytest.param("a//b", "unexpected '/' at position 3", id="double-slash"),
    pytest.param("a(", "a field name is missing at position 3", id="open-paren"),
    pytest.param("a(b", "missing ')' at position 4", id="unclosed-paren"),
    pytest.param("a)b", "unexpected ')' at position 2", id="stray-paren"),
    pytest.param("a()", "empty '()' at position 3", id="empty-parens"),
    pytest.param("(a)", "unexpected '(' at position 1", id="parens-without-a-name"),
    pytest.param("a(b)c", "unexpected 'c' at position 5", id="name-after-parens"),
    pytest.param("a b", "unexpected ' ' at position 2", id="space"),
    pytest.param("a-b", "unexpected '-' at position 2", id="dash"),
    pytest.param("1a", "unexpected '1' at position 1", id="leading-digit"),
    pytest.param("a[0]", "unexpected '[' at position 2", id="index"),
    pytest.param("*/a", "'*' must end its path", id="wildcard-inside-a-path"),
    pytest.param("*(a)", "'*' selects every field: it takes no '(...)'", id="wildcard-parens"),
    pytest.param("a*", "unexpected '*' at position 2", id="wildcard-in-a-name"),
    pytest.param("a" + "/a" * 32, "nested more than 32 levels", id="too-deep-path"),
    pytest.param("a(" * 33 + "a" + ")" * 33, "nested more than 32 levels", id="too-deep-parens"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(BridgeError) as caught:
        parse(text)
    assert caught.value.code == INVALID_ARGUMENT
    assert caught.value.message.startswith(f"invalid field selection '{text[:200]}")
    assert message in caught.value.message


# --- binding to the response type ----------------------------------------------------------


@pytest.fixture
def search(fidelity_pool: descriptor_pool.DescriptorPool) -> Descriptor:
    return message_class(fidelity_pool, "SearchResponse").DESCRIPTOR


UNKNOWN: Final = [
    pytest.param("nope", "'nope' names no field of fidelity.v1.SearchResponse", id="top"),
    pytest.param("hits/nope", "'hits/nope' names no field of fidelity.v1.Hit", id="in-a-list"),
    pytest.param(
        "byId(author/zip)", "'byId/author/zip' names no field of fidelity.v1.Author", id="in-a-map"
    ),
    pytest.param("owner(name,x)", "'owner/x' names no field of fidelity.v1.Author", id="parens"),
    pytest.param("*,nope", "'nope' names no field", id="beside-a-wildcard"),
    pytest.param("query/x", "'query' has no fields to select: it is not a message", id="scalar"),
    pytest.param("fields(x)", "'fields' has no fields to select", id="repeated-scalar"),
    pytest.param(
        "servedAt/seconds",
        "'servedAt' has no fields to select: it is a google.protobuf.Timestamp, one JSON value",
        id="well-known-type",
    ),
    pytest.param("hits/tags/x", "'hits/tags' has no fields to select", id="scalar-in-a-list"),
]


@pytest.mark.parametrize(("text", "message"), UNKNOWN)
def test_bind_names_the_path(search: Descriptor, text: str, message: str) -> None:
    with pytest.raises(BridgeError) as caught:
        for_response(parse(text), search, None, False)
    assert caught.value.code == INVALID_ARGUMENT
    assert message in caught.value.message


def test_bind_checks_the_type_not_the_data(search: Descriptor) -> None:
    """An empty list still validates what is selected inside it."""
    trim = for_response(parse("hits(id)"), search, None, False)
    assert trim.apply({"hits": [], "query": "q"}) == {"hits": []}
    with pytest.raises(BridgeError):
        for_response(parse("hits(zip)"), search, None, False)


# --- trimming ------------------------------------------------------------------------------

HIT: Final = {
    "id": "h1",
    "title": "One",
    "author": {"name": "Ada", "email": "ada@example.com"},
    "tags": ["a", "b"],
}
HIT2: Final[dict[str, Any]] = {"id": "h2", "title": "Two", "author": None, "tags": []}
REPLY: Final = {
    "query": "q",
    "fields": [],
    "hits": [HIT, HIT2],
    "byId": {"h1": HIT, "h2": HIT2},
    "servedAt": "2026-12-02T01:00:00Z",
    "totalSize": "2",
    "owner": {"name": "Bo", "email": "bo@example.com"},
}

TRIMS: Final = [
    pytest.param("query", {"query": "q"}, id="one-scalar"),
    pytest.param("query,totalSize", {"query": "q", "totalSize": "2"}, id="two"),
    pytest.param("total_size", {"totalSize": "2"}, id="proto-name-selects-json-key"),
    pytest.param("owner", {"owner": REPLY["owner"]}, id="message-whole"),
    pytest.param("owner/name", {"owner": {"name": "Bo"}}, id="nested-path"),
    pytest.param("owner(name)", {"owner": {"name": "Bo"}}, id="nested-parens"),
    pytest.param(
        "hits(id,author/name)",
        {"hits": [{"id": "h1", "author": {"name": "Ada"}}, {"id": "h2", "author": None}]},
        id="each-element-and-null",
    ),
    pytest.param("hits/id", {"hits": [{"id": "h1"}, {"id": "h2"}]}, id="path-into-a-list"),
    pytest.param("hits/tags", {"hits": [{"tags": ["a", "b"]}, {"tags": []}]}, id="repeated-kept"),
    pytest.param(
        "byId(title)", {"byId": {"h1": {"title": "One"}, "h2": {"title": "Two"}}}, id="map-values"
    ),
    pytest.param("by_id/*", {"byId": REPLY["byId"]}, id="map-whole"),
    pytest.param("servedAt", {"servedAt": REPLY["servedAt"]}, id="well-known-type-whole"),
    pytest.param("*", REPLY, id="wildcard"),
    pytest.param(
        "*,hits(id),owner/email",
        {**REPLY, "hits": [{"id": "h1"}, {"id": "h2"}], "owner": {"email": "bo@example.com"}},
        id="wildcard-with-refinements",
    ),
    pytest.param("hits(*)", {"hits": REPLY["hits"]}, id="wildcard-below"),
    pytest.param("owner(name),owner/email", {"owner": REPLY["owner"]}, id="merged-parts"),
]


@pytest.mark.parametrize(("text", "expected"), TRIMS)
def test_trim(search: Descriptor, text: str, expected: Any) -> None:
    before = repr(REPLY)
    assert for_response(parse(text), search, None, False).apply(REPLY) == expected
    assert repr(REPLY) == before  # the rendered value is read, never changed


def test_trim_leaves_out_what_the_reply_lacks(search: Descriptor) -> None:
    """Without emit_unpopulated a field may be absent: it stays absent."""
    trim = for_response(parse("query,owner(name),hits(id)"), search, None, False)
    assert trim.apply({"hits": [{"title": "t"}]}) == {"hits": [{}]}


def test_trim_in_proto_names(search: Descriptor) -> None:
    """With json.use_proto_names the reply's keys are proto names; both spellings select."""
    reply = {"total_size": "2", "by_id": {"k": {"id": "1", "title": "t"}}, "query": "q"}
    trim = for_response(parse("totalSize,byId(id)"), search, None, True)
    assert trim.apply(reply) == {"total_size": "2", "by_id": {"k": {"id": "1"}}}


def test_trim_a_response_body_field(search: Descriptor) -> None:
    """A response_body rule renders the field alone: paths start inside it."""
    hits = search.fields_by_name["hits"]
    trim = for_response(parse("id"), search, hits, False)
    assert trim.apply([HIT, HIT2]) == [{"id": "h1"}, {"id": "h2"}]
    with pytest.raises(BridgeError, match="'hits' names no field"):
        for_response(parse("hits"), search, hits, False)
    query = search.fields_by_name["query"]
    with pytest.raises(BridgeError, match=r"this route's response \('query'\)"):
        for_response(parse("x"), search, query, False)


def test_trim_an_aggregates_object(search: Descriptor) -> None:
    """An aggregate's object: call names at the top, each checked against its message type."""
    members = {"search": search, "errors": None}
    answer = {"search": REPLY, "errors": [{"call": "x", "status": {"code": 14}}]}
    trim = for_object(parse("search(query,hits/id),errors"), members, False)
    assert trim.apply(answer) == {
        "search": {"query": "q", "hits": [{"id": "h1"}, {"id": "h2"}]},
        "errors": answer["errors"],
    }
    assert for_object(parse("search/query"), members, False).apply({"errors": []}) == {}
    with pytest.raises(BridgeError, match="'user' names no part of this response"):
        for_object(parse("user"), members, False)
    with pytest.raises(BridgeError, match="'search/nope' names no field"):
        for_object(parse("search/nope"), members, False)
    with pytest.raises(BridgeError, match="'errors' has no fields to select"):
        for_object(parse("errors(call)"), members, False)


# --- the query parameter and the cache ---------------------------------------------------------

TEXTS: Final = [
    pytest.param([], ("fields", "$fields"), None, id="absent"),
    pytest.param([("fields", "a")], ("fields", "$fields"), "a", id="fields"),
    pytest.param([("$fields", "a")], ("fields", "$fields"), "a", id="dollar-fields"),
    pytest.param([("fields", "a")], ("$fields",), None, id="fields-is-a-request-field"),
    pytest.param([("fields", "x"), ("$fields", "a")], ("$fields",), "a", id="both-meanings"),
    pytest.param([("fields", "")], ("fields", "$fields"), "", id="empty"),
]


@pytest.mark.parametrize(("query", "keys", "expected"), TEXTS)
def test_selection_text(query: list[tuple[str, str]], keys: Any, expected: str | None) -> None:
    assert selection_text(MultiDict(query), keys) == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param([("fields", "a"), ("fields", "b")], id="fields-twice"),
        pytest.param([("fields", "a"), ("$fields", "b")], id="both-spellings"),
    ],
)
def test_selection_text_given_twice(query: list[tuple[str, str]]) -> None:
    with pytest.raises(BridgeError, match="given more than once"):
        selection_text(MultiDict(query))


def test_response_trim_is_built_once_per_plan_and_text(
    fidelity_pool: descriptor_pool.DescriptorPool, search: Descriptor
) -> None:
    plan = ResponsePlan.build(search, fidelity_pool, True, False, None)
    first = response_trim(plan, search, "hits(id)")
    assert response_trim(plan, search, "hits(id)") is first
    other = ResponsePlan.build(search, fidelity_pool, True, False, None)
    assert response_trim(other, search, "hits(id)") is not first
    for i in range(40):  # more texts than a plan keeps: the oldest go, the answers stay right
        response_trim(plan, search, f"query,hits(id),owner/name,totalSize{',fields' * i}")
    assert response_trim(plan, search, "hits(id)") is not first


def test_response_trim_refuses_raw_replies(fidelity_pool: descriptor_pool.DescriptorPool) -> None:
    body = message_class(fidelity_pool, "google.api.HttpBody").DESCRIPTOR
    plan = ResponsePlan.build(body, fidelity_pool, True, False, None)
    assert plan.raw
    with pytest.raises(BridgeError, match="raw bytes"):
        response_trim(plan, body, "data")


def test_trims_cache_an_aggregates_binding(search: Descriptor) -> None:
    """How an aggregate keeps its trims: one Trims per compiled snapshot, bound by for_object."""
    trims, members = Trims(), {"search": search, "errors": None}
    first = trims.get("search/query", lambda s: for_object(s, members, False))
    assert trims.get("search/query", lambda s: for_object(s, members, False)) is first
    with pytest.raises(BridgeError, match="invalid field selection"):
        trims.get("search(", lambda s: for_object(s, members, False))
