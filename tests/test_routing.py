"""Table-driven tests for bridge.routing: template parsing, route matching and conflicts."""

from __future__ import annotations

import pytest

from bridge.routing import (
    Match,
    MatchKind,
    Route,
    RouteConflict,
    RouteTable,
    TemplateError,
    parse_template,
)
from bridge.routing.template import SegmentKind

# ---------------------------------------------------------------------------------------
# Parsing: valid templates -> (shape, verb, variables as (dotted path, start, end))
# ---------------------------------------------------------------------------------------

VALID = [
    pytest.param("/v1/users", ("v1", "users"), None, [], id="literal"),
    pytest.param("/", (), None, [], id="root"),
    pytest.param("/v1/{x}", ("v1", "*"), None, [("x", 1, 2)], id="bare-variable"),
    pytest.param("/v1/{x=*}", ("v1", "*"), None, [("x", 1, 2)], id="explicit-star"),
    pytest.param("/v1/{a.b.c}", ("v1", "*"), None, [("a.b.c", 1, 2)], id="nested-field-path"),
    pytest.param(
        "/v1/{name=users/*}", ("v1", "users", "*"), None, [("name", 1, 3)], id="resource-name"
    ),
    pytest.param(
        "/v1/{name=shelves/*/books/*}",
        ("v1", "shelves", "*", "books", "*"),
        None,
        [("name", 1, 5)],
        id="nested-resource-name",
    ),
    pytest.param("/v1/**", ("v1", "**"), None, [], id="bare-double-star"),
    pytest.param("/v1/{path=**}", ("v1", "**"), None, [("path", 1, None)], id="double-star-var"),
    pytest.param(
        "/v1/{path=docs/**}", ("v1", "docs", "**"), None, [("path", 1, None)], id="prefixed-rest"
    ),
    pytest.param("/v1/users:search", ("v1", "users", ":search"), "search", [], id="verb"),
    pytest.param(
        "/v1/{name=users/*}:ban",
        ("v1", "users", "*", ":ban"),
        "ban",
        [("name", 1, 3)],
        id="variable-and-verb",
    ),
    pytest.param(
        "/v1/{path=**}:get",
        ("v1", "**", ":get"),
        "get",
        [("path", 1, None)],
        id="double-star-then-verb",
    ),
    pytest.param(
        "/v1/{parent=projects/*}/items/{item_id}",
        ("v1", "projects", "*", "items", "*"),
        None,
        [("parent", 1, 3), ("item_id", 4, 5)],
        id="two-variables",
    ),
    pytest.param(
        "/v1/foo-bar/a.b/~x/x_y",
        ("v1", "foo-bar", "a.b", "~x", "x_y"),
        None,
        [],
        id="permissive-literals",
    ),
    pytest.param("/v1/*/x", ("v1", "*", "x"), None, [], id="anonymous-star"),
]


@pytest.mark.parametrize(("text", "shape", "verb", "variables"), VALID)
def test_parse_valid(
    text: str, shape: tuple[str, ...], verb: str | None, variables: list[tuple]
) -> None:
    template = parse_template(text)
    assert template.source == text
    assert str(template) == text
    assert template.shape == shape
    assert template.verb == verb
    got = [(".".join(v.field_path), v.start, v.end) for v in template.variables]
    assert got == variables


def test_parse_flattens_variables_into_segments() -> None:
    template = parse_template("/v1/{name=shelves/*}/books/{book}")
    kinds = [(s.kind, s.literal) for s in template.segments]
    assert kinds == [
        (SegmentKind.LITERAL, "v1"),
        (SegmentKind.LITERAL, "shelves"),
        (SegmentKind.SINGLE, ""),
        (SegmentKind.LITERAL, "books"),
        (SegmentKind.SINGLE, ""),
    ]
    assert template.variables[0].field_path == ("name",)
    assert template.variables[1].field_path == ("book",)


INVALID = [
    pytest.param("v1/users", 'must start with "/"', id="no-leading-slash"),
    pytest.param("", 'must start with "/"', id="empty"),
    pytest.param("/v1//users", "empty segment", id="double-slash"),
    pytest.param("/v1/", "empty segment", id="trailing-slash"),
    pytest.param("//", "empty segment", id="only-slashes"),
    pytest.param("/v1/{name=}", "empty segment", id="empty-variable-segments"),
    pytest.param("/v1/{name=users/}", "empty segment", id="variable-trailing-slash"),
    pytest.param("/v1/**/x", '"**" must be the last segment', id="double-star-not-last"),
    pytest.param("/v1/{name=**}/x", '"**" must be the last segment', id="var-double-star-not-last"),
    pytest.param("/v1/{a=**}/{b}", '"**" must be the last segment', id="variable-after-rest"),
    pytest.param("/v1/{a={b}}", "nested variables", id="nested-variable"),
    pytest.param("/v1/{a}/{a}", 'duplicate variable "a"', id="duplicate-variable"),
    pytest.param("/v1/{a.b}/{a.b}", 'duplicate variable "a.b"', id="duplicate-dotted"),
    pytest.param("/v1/{a}/{a.b}", "overlap", id="overlapping-field-paths"),
    pytest.param("/v1/users:", "empty verb", id="empty-verb"),
    pytest.param("/v1/x:a:b", "the verb must end the template", id="two-verbs"),
    pytest.param("/v1/x:a/b", "the verb must end the template", id="segment-after-verb"),
    pytest.param("/v1/:verb", "empty segment", id="verb-without-segment"),
    pytest.param("/v1/{name=a:b}", 'expected "}"', id="colon-inside-variable"),
    pytest.param("/v1/{}", "expected a field name", id="empty-field-path"),
    pytest.param("/v1/{1a}", "expected a field name", id="ident-starts-with-digit"),
    pytest.param("/v1/{a.}", "expected a field name", id="trailing-dot"),
    pytest.param("/v1/{a..b}", "expected a field name", id="double-dot"),
    pytest.param("/v1/{a-b}", 'expected "=" or "}"', id="bad-ident-char"),
    pytest.param("/v1/{a", 'unclosed "{"', id="unclosed-brace"),
    pytest.param("/v1/{a=b/c", 'unclosed "{"', id="unclosed-brace-with-segments"),
    pytest.param("/v1/a}", 'unmatched "}"', id="unmatched-close-brace"),
    pytest.param("/v1/a{b}", '"{" may only start a segment', id="brace-inside-literal"),
    pytest.param("/v1/{a}{b}", '"{" may only start a segment', id="adjacent-variables"),
    pytest.param("/v1/a*", '"*" must be a whole segment', id="star-inside-literal"),
    pytest.param("/v1/*a", '"*" must be a whole segment', id="star-prefix"),
    pytest.param("/v1/***", '"**" must be a whole segment', id="triple-star"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    assert message in str(info.value)
    # Every error quotes the template so the proto author can find it.
    assert str(info.value).startswith(f'"{text}": ')


def test_error_says_where() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template("/v1/{name=**}/x")
    assert info.value.offset == len("/v1/{name=**}/")
    assert info.value.template == "/v1/{name=**}/x"
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------


def route(verb: str, template: str, owner: str | None = None) -> Route:
    return Route(verb, parse_template(template), target=template, owner=owner or template)


TABLE = RouteTable(
    [
        route("GET", "/"),
        route("GET", "/v1/users"),
        route("POST", "/v1/users"),
        route("GET", "/v1/users/{id}"),
        route("DELETE", "/v1/users/{id}"),
        route("GET", "/v1/users/me"),
        route("POST", "/v1/{name=users/*}:ban"),
        route("GET", "/v1/{name=shelves/*/books/*}"),
        route("GET", "/v1/shelves/{shelf}/books/special"),
        route("GET", "/v1/{path=docs/**}"),
        route("GET", "/v1/docs/{a}/index"),
        route("GET", "/v1/{profile.user.name}/profile"),
        route("GET", "/v1/files/{file=**}:download"),
        route("GET", "/v1/files/{file=**}"),
        route("GET", "/v1/any/**"),
        route("PUT", "/v1/any/*"),
        route("HEAD", "/v1/ping"),
    ]
)

FULL = [
    pytest.param("GET", "/", "/", {}, id="root"),
    pytest.param("GET", "/v1/users", "/v1/users", {}, id="literal"),
    pytest.param("POST", "/v1/users", "/v1/users", {}, id="literal-other-method"),
    pytest.param("GET", "/v1/users/42", "/v1/users/{id}", {"id": "42"}, id="single-variable"),
    pytest.param("GET", "/v1/users/me", "/v1/users/me", {}, id="literal-beats-variable"),
    pytest.param(
        "DELETE",
        "/v1/users/me",
        "/v1/users/{id}",
        {"id": "me"},
        id="variable-when-literal-has-other-method",
    ),
    pytest.param("GET", "/v1/users/a%20b", "/v1/users/{id}", {"id": "a b"}, id="percent-decoded"),
    pytest.param(
        "GET", "/v1/users/a%2Fb", "/v1/users/{id}", {"id": "a/b"}, id="single-decodes-slash"
    ),
    pytest.param(
        "GET", "/v1/users/%E2%82%AC", "/v1/users/{id}", {"id": "\u20ac"}, id="utf8-decoded"
    ),
    pytest.param("GET", "/v1/users/%zz", "/v1/users/{id}", {"id": "%zz"}, id="bad-escape-literal"),
    pytest.param("GET", "/v1/users/%ff", "/v1/users/{id}", {"id": "%ff"}, id="bad-utf8-kept-raw"),
    pytest.param("GET", "/v1/%75sers", "/v1/users", {}, id="literal-compares-decoded"),
    pytest.param(
        "GET",
        "/v1/users/a:ban",
        "/v1/users/{id}",
        {"id": "a:ban"},
        id="colon-in-variable-without-verb-route",
    ),
    pytest.param(
        "POST", "/v1/users/a:ban", "/v1/{name=users/*}:ban", {"name": "users/a"}, id="custom-verb"
    ),
    pytest.param(
        "POST",
        "/v1/users/a%3Ab:ban",
        "/v1/{name=users/*}:ban",
        {"name": "users/a:b"},
        id="custom-verb-encoded-colon-in-name",
    ),
    pytest.param(
        "GET",
        "/v1/shelves/1/books/2",
        "/v1/{name=shelves/*/books/*}",
        {"name": "shelves/1/books/2"},
        id="multi-segment-variable",
    ),
    pytest.param(
        "GET",
        "/v1/shelves/1/books/x%2Fy%20z",
        "/v1/{name=shelves/*/books/*}",
        {"name": "shelves/1/books/x%2Fy z"},
        id="multi-segment-keeps-2F",
    ),
    pytest.param(
        "GET",
        "/v1/shelves/1/books/special",
        "/v1/shelves/{shelf}/books/special",
        {"shelf": "1"},
        id="later-literal-beats-star",
    ),
    pytest.param(
        "GET", "/v1/docs/a", "/v1/{path=docs/**}", {"path": "docs/a"}, id="double-star-one-segment"
    ),
    pytest.param(
        "GET",
        "/v1/docs/a/b/c",
        "/v1/{path=docs/**}",
        {"path": "docs/a/b/c"},
        id="double-star-many-segments",
    ),
    pytest.param(
        "GET",
        "/v1/docs/a%2Fb/c%2fd%20e",
        "/v1/{path=docs/**}",
        {"path": "docs/a%2Fb/c%2fd e"},
        id="double-star-keeps-2F",
    ),
    pytest.param(
        "GET", "/v1/docs/x/index", "/v1/docs/{a}/index", {"a": "x"}, id="star-beats-double-star"
    ),
    pytest.param(
        "GET",
        "/v1/docs/x/index/more",
        "/v1/{path=docs/**}",
        {"path": "docs/x/index/more"},
        id="backtrack-to-double-star",
    ),
    pytest.param(
        "GET",
        "/v1/bob/profile",
        "/v1/{profile.user.name}/profile",
        {"profile.user.name": "bob"},
        id="dotted-field-path",
    ),
    pytest.param(
        "GET",
        "/v1/files/a/b:download",
        "/v1/files/{file=**}:download",
        {"file": "a/b"},
        id="verb-route-beats-plain",
    ),
    pytest.param(
        "GET",
        "/v1/files/a/b:other",
        "/v1/files/{file=**}",
        {"file": "a/b:other"},
        id="unknown-verb-falls-to-plain",
    ),
    pytest.param(
        "GET", "/v1/files/a/b", "/v1/files/{file=**}", {"file": "a/b"}, id="no-verb-in-path"
    ),
    pytest.param(
        "GET",
        "/v1/files/:download",
        "/v1/files/{file=**}",
        {"file": ":download"},
        id="verb-needs-nonempty-rest",
    ),
    pytest.param("GET", "/v1/any/x/y", "/v1/any/**", {}, id="anonymous-double-star"),
    pytest.param("HEAD", "/v1/ping", "/v1/ping", {}, id="head-route"),
]


@pytest.mark.parametrize(("verb", "path", "template", "params"), FULL)
def test_match_full(verb: str, path: str, template: str, params: dict[str, str]) -> None:
    match = TABLE.match(verb, path)
    assert match.kind is MatchKind.FULL, match
    assert match.route is not None
    assert match.route.template.source == template
    assert match.route.target == template
    assert match.params == {tuple(k.split(".")): v for k, v in params.items()}
    assert match.allowed == ()


PARTIAL = [
    pytest.param("PUT", "/v1/users/42", ("DELETE", "GET"), id="put-on-resource"),
    pytest.param("PATCH", "/v1/users", ("GET", "POST"), id="patch-on-collection"),
    pytest.param("GET", "/v1/users/a:ban", None, id="get-with-verb-is-not-partial"),
    pytest.param("PUT", "/v1/users/a:ban", ("DELETE", "GET", "POST"), id="verb-and-plain-routes"),
    pytest.param("POST", "/v1/users/:ban", ("DELETE", "GET"), id="verb-with-empty-rest"),
    pytest.param("PATCH", "/v1/any/x", ("GET", "PUT"), id="star-and-double-star-methods"),
    pytest.param("POST", "/v1/any/x/y", ("GET",), id="only-double-star"),
    pytest.param("GET", "/v1/ping", ("HEAD",), id="get-does-not-become-head"),
    pytest.param("get", "/v1/users", ("GET", "POST"), id="method-is-case-sensitive"),
]


@pytest.mark.parametrize(("verb", "path", "allowed"), PARTIAL)
def test_match_partial(verb: str, path: str, allowed: tuple[str, ...] | None) -> None:
    match = TABLE.match(verb, path)
    if allowed is None:
        assert match.kind is MatchKind.FULL
        return
    assert match == Match(MatchKind.PARTIAL, allowed=allowed)
    assert match.route is None
    assert match.params == {}


METHODS = [
    pytest.param("/v1/users/42", ("DELETE", "GET"), id="resource"),
    pytest.param("/v1/users", ("GET", "POST"), id="collection"),
    pytest.param("/v1/users/a:ban", ("DELETE", "GET", "POST"), id="verb-and-plain-routes"),
    pytest.param("/v1/any/x", ("GET", "PUT"), id="star-and-double-star"),
    pytest.param("/v1/ping", ("HEAD",), id="head-only"),
    pytest.param("/v2/users", (), id="no-route"),
    pytest.param("v1/users", (), id="no-leading-slash"),
]


@pytest.mark.parametrize(("path", "methods"), METHODS)
def test_methods_at_a_path(path: str, methods: tuple[str, ...]) -> None:
    assert TABLE.methods(path) == methods


def test_head_is_not_special() -> None:
    table = RouteTable([route("GET", "/v1/users")])
    assert table.match("HEAD", "/v1/users") == Match(MatchKind.PARTIAL, allowed=("GET",))


NONE = [
    pytest.param("GET", "/v1/users/", id="trailing-slash"),
    pytest.param("GET", "/v1//users", id="empty-middle-segment"),
    pytest.param("GET", "/v1/docs", id="double-star-needs-one-segment"),
    pytest.param("GET", "/v1/docs/", id="double-star-not-empty-segment"),
    pytest.param("GET", "/v1/docs/a//b", id="double-star-skips-no-empty-segment"),
    pytest.param("GET", "/v1/shelves/1/books", id="too-short"),
    pytest.param("GET", "/v1/users/1/extra", id="too-long"),
    pytest.param("GET", "/v2/users", id="unknown-literal"),
    pytest.param("GET", "v1/users", id="no-leading-slash"),
    pytest.param("GET", "", id="empty-path"),
    pytest.param("GET", "//", id="root-with-empty-segment"),
    pytest.param("GET", "/v1/users%2F42", id="encoded-slash-is-not-a-separator"),
]


@pytest.mark.parametrize(("verb", "path"), NONE)
def test_match_none(verb: str, path: str) -> None:
    assert TABLE.match(verb, path) == Match(MatchKind.NONE)


def test_verb_route_needs_nonempty_rest() -> None:
    table = RouteTable([route("POST", "/v1/{name=users/*}:ban")])
    assert table.match("POST", "/v1/users/:ban").kind is MatchKind.NONE
    assert table.match("POST", "/v1/users/x:ban").kind is MatchKind.FULL
    assert table.match("POST", "/v1/users/x").kind is MatchKind.NONE


def test_empty_table() -> None:
    table = RouteTable([])
    assert len(table) == 0
    assert table.routes == ()
    assert table.match("GET", "/").kind is MatchKind.NONE


def test_routes_kept_in_order() -> None:
    routes = [route("GET", "/b"), route("GET", "/a")]
    table = RouteTable(iter(routes))
    assert table.routes == tuple(routes)
    assert len(table) == 2


def test_specificity_is_by_segment_not_registration_order() -> None:
    a = [route("GET", "/v1/*/x"), route("GET", "/v1/a/*"), route("GET", "/v1/**")]
    for routes in (a, a[::-1]):
        table = RouteTable(routes)
        assert table.match("GET", "/v1/a/x").route == a[1]
        assert table.match("GET", "/v1/b/x").route == a[0]
        assert table.match("GET", "/v1/b/y").route == a[2]


# ---------------------------------------------------------------------------------------
# Conflicts
# ---------------------------------------------------------------------------------------

CONFLICTS = [
    pytest.param("GET", "/v1/users/{id}", "GET", "/v1/{name=users/*}", id="variable-spelling"),
    pytest.param("GET", "/v1/{a}", "GET", "/v1/{b=*}", id="variable-name"),
    pytest.param("GET", "/v1/{a=**}", "GET", "/v1/**", id="double-star"),
    pytest.param("POST", "/v1/{a}:ban", "POST", "/v1/{b}:ban", id="same-verb"),
    pytest.param("GET", "/", "GET", "/", id="root"),
]


@pytest.mark.parametrize(("verb1", "template1", "verb2", "template2"), CONFLICTS)
def test_conflict(verb1: str, template1: str, verb2: str, template2: str) -> None:
    first = route(verb1, template1, owner="demo.users.v1.UserService/GetUser")
    second = route(verb2, template2, owner="demo.x.Y/Z")
    with pytest.raises(RouteConflict) as info:
        RouteTable([first, second])
    message = str(info.value)
    assert message == (
        f"route conflict: {verb1} {template1} (demo.users.v1.UserService/GetUser) and "
        f"{verb2} {template2} (demo.x.Y/Z) match the same paths"
    )
    assert (info.value.first, info.value.second) == (first, second)


def test_same_owner_twice_is_a_conflict() -> None:
    # e.g. an additional_binding that repeats the primary binding
    routes = [route("GET", "/v1/{id}", owner="a.B/C"), route("GET", "/v1/{id}", owner="a.B/C")]
    with pytest.raises(RouteConflict, match=r"GET /v1/\{id\} \(a\.B/C\) and GET /v1/\{id\}"):
        RouteTable(routes)


NO_CONFLICTS = [
    pytest.param("GET", "/v1/users/{id}", "DELETE", "/v1/users/{id}", id="different-method"),
    pytest.param("GET", "/v1/users/{id}", "GET", "/v1/users/me", id="literal-vs-star"),
    pytest.param("POST", "/v1/{a}:ban", "POST", "/v1/{a}", id="verb-vs-none"),
    pytest.param("POST", "/v1/{a}:ban", "POST", "/v1/{a}:unban", id="different-verbs"),
    pytest.param("GET", "/v1/*", "GET", "/v1/**", id="star-vs-double-star"),
]


@pytest.mark.parametrize(("verb1", "template1", "verb2", "template2"), NO_CONFLICTS)
def test_no_conflict(verb1: str, template1: str, verb2: str, template2: str) -> None:
    table = RouteTable([route(verb1, template1), route(verb2, template2)])
    assert len(table.routes) == 2


def test_route_equality_ignores_target() -> None:
    template = parse_template("/v1/x")
    assert Route("GET", template, object(), "o") == Route("GET", template, object(), "o")


def test_route_rejects_bad_method() -> None:
    with pytest.raises(ValueError, match="bad HTTP method"):
        Route("", parse_template("/v1/x"), None, "o")
