"""Unit tests of the composition pieces alone: template strings, reference classification,
dependency order and cycles, request templates compiled against the example messages, and a
snapshot that lost a method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from bridge import errors
from bridge.compose import AggregateRoute
from bridge.config import settings_from_dict
from bridge.config.composition import (
    CALL,
    PATH,
    QUERY,
    CycleError,
    Ref,
    Text,
    classify,
    dependency_order,
    parse_text,
)
from bridge.config.values import Problem
from bridge.registry import JsonShape, ProtoSet, build_snapshot
from bridge.registry.snapshot import Snapshot
from bridge.transcode.templates import Values

GET_USER = "demo.users.v1.UserService/GetUser"
ECHO = "demo.echo.v1.EchoService/Echo"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("plain", "plain"),
        ("{id}", Ref(CALL, "id")),
        ("{user.address.city}", Ref(CALL, "user", ("address", "city"))),
        ("hi {user.name}!", Text(("hi ", Ref(CALL, "user", ("name",)), "!"))),
        ("{{literal}}", "{literal}"),
        ("{a}{b}", Text((Ref(CALL, "a"), Ref(CALL, "b")))),
        ("", ""),
    ],
    ids=["plain", "one-ref", "dotted", "text", "escaped-braces", "two-refs", "empty"],
)
def test_parse_text(text: str, parsed: Any) -> None:
    assert parse_text(text) == parsed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{id", "expected a reference"),
        ("{}", "expected a reference"),
        ("{a b}", "expected a reference"),
        ("{1x}", "expected a reference"),
        ("x}", "unmatched '}'"),
    ],
    ids=["unclosed", "empty", "space", "digit-first", "unmatched-close"],
)
def test_parse_text_errors(text: str, problem: str) -> None:
    with pytest.raises(Problem, match=problem):
        parse_text(text)


VARIABLES = frozenset({"id", "user.name"})
CALLS = frozenset({"user", "orders"})


@pytest.mark.parametrize(
    ("ref", "classified"),
    [
        (Ref(CALL, "id"), Ref(PATH, "id")),
        (Ref(CALL, "user", ("name",)), Ref(PATH, "user.name")),  # the path variable wins
        (Ref(CALL, "user", ("email",)), Ref(CALL, "user", ("email",))),
        (Ref(CALL, "orders"), Ref(CALL, "orders")),
        (Ref(CALL, "q"), Ref(QUERY, "q")),
    ],
    ids=["path", "dotted-path-variable", "call-field", "whole-answer", "query"],
)
def test_classify(ref: Ref, classified: Ref) -> None:
    assert classify(ref, VARIABLES, CALLS) == classified


def test_a_dotted_reference_naming_nothing_is_an_error() -> None:
    with pytest.raises(Problem, match=r"\{usr.email\} names no call \(orders, user\)"):
        classify(Ref(CALL, "usr", ("email",)), VARIABLES, CALLS)


@pytest.mark.parametrize(
    ("needs", "order"),
    [
        ({"a": set(), "b": set(), "c": set()}, ("a", "b", "c")),
        ({"recs": {"user"}, "user": set()}, ("user", "recs")),
        ({"c": {"b"}, "b": {"a"}, "a": set()}, ("a", "b", "c")),
        ({"d": {"b", "c"}, "b": {"a"}, "c": {"a"}, "a": set()}, ("a", "b", "c", "d")),
    ],
    ids=["independent", "one-dependency", "chain", "diamond"],
)
def test_dependency_order(needs: dict[str, set[str]], order: tuple[str, ...]) -> None:
    assert dependency_order({k: frozenset(v) for k, v in needs.items()}) == order


@pytest.mark.parametrize(
    ("needs", "cycle"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
    ids=["two", "behind-a-call"],
)
def test_cycles_are_found(needs: dict[str, set[str]], cycle: list[str]) -> None:
    with pytest.raises(CycleError) as caught:
        dependency_order({k: frozenset(v) for k, v in needs.items()})
    assert caught.value.cycle == cycle


@pytest.fixture(scope="module")
def snapshot(demo_protos: ProtoSet) -> Snapshot:
    return build_snapshot([demo_protos], lambda service: "up", JsonShape())


def route_of(calls: dict[str, Any], route: str = "GET /bff/{id}") -> AggregateRoute:
    settings = settings_from_dict(
        {"aggregates": [{"route": route, "calls": calls}]}, Path("/tmp/bridge.yaml")
    )
    return AggregateRoute(settings.aggregates[0], "bridge.yaml")


def test_a_template_fills_path_query_and_answers(snapshot: Snapshot) -> None:
    route = route_of({
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "echo": {"method": ECHO, "request": {
            "message": "{user.displayName} in {user.address.city}",
            "numbers": "{n}", "flag": "{f}", "kind": "KIND_A",
            "inner": {"note": "{id}", "level": 3}, "extra": {"user": "{user}"},
            "ratio": "{r}",
        }},
    })  # fmt: skip
    user, echo = route.children(snapshot)
    assert user.problem is None and echo.problem is None
    values = Values({("id",): "7"}, MultiDict([("n", "1"), ("n", "2"), ("f", "true")]))
    assert user.fill is not None and echo.fill is not None
    assert user.fill(values) == {"id": "7"}
    values.replies["user"] = {"displayName": "Ada", "address": {"city": "London"}}
    assert echo.fill(values) == {
        "message": "Ada in London",
        "numbers": ["1", "2"],
        "flag": True,
        "kind": "KIND_A",
        "inner": {"note": "7", "level": 3},
        "extra": {"user": {"displayName": "Ada", "address": {"city": "London"}}},
    }  # ratio's query parameter is absent: the field is left out


def test_a_missing_answer_field_leaves_the_request_field_out(snapshot: Snapshot) -> None:
    route = route_of({
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "echo": {"method": ECHO, "request": {"message": "{user.address.city}"}},
    })  # fmt: skip
    echo = route.children(snapshot)[1]
    values = Values({}, MultiDict())
    values.replies["user"] = {"address": None}
    assert echo.fill is not None and echo.fill(values) == {}


def test_bad_url_text_is_a_400_naming_the_call(snapshot: Snapshot) -> None:
    echo = route_of({"echo": {"method": ECHO, "request": {"flag": "{f}"}}}).children(snapshot)[0]
    assert echo.fill is not None
    with pytest.raises(errors.BridgeError) as caught:
        echo.fill(Values({}, MultiDict([("f", "maybe")])))
    assert caught.value.code == errors.INVALID_ARGUMENT
    assert "call 'echo'" in caught.value.message and "not a boolean" in caught.value.message


def test_a_snapshot_without_the_method_fails_that_call_at_request_time(
    demo_protos: ProtoSet,
) -> None:
    users_only = ProtoSet(
        "users", demo_protos.files, frozenset(f for f in demo_protos.exposed if "users" in f)
    )
    smaller = build_snapshot([users_only], lambda service: "up", JsonShape())
    route = route_of({
        "user": {"method": GET_USER, "request": {"id": "{id}"}},
        "echo": {"method": ECHO, "request": {"message": "{user.id}"}, "optional": True},
    })  # fmt: skip
    user, echo = route.children(smaller)
    assert user.problem is None
    assert echo.problem is not None and echo.problem.code == errors.UNIMPLEMENTED
    assert f"call 'echo': method {ECHO} is not served" in echo.problem.message


@pytest.mark.parametrize(
    ("request_template", "problem"),
    [
        ({"inner": {"nope": 1}}, "no field 'nope' in demo.echo.v1.EchoRequest.Inner"),
        ({"message": {"a": 1}}, "is not a message or map"),
        ({"message": ["a"]}, "is not repeated"),
        ({"inner": "{id}"}, "is URL text"),
        ({"numbers": "x {id}"}, "makes a string"),
    ],
    ids=["nested-unknown", "object-into-scalar", "list-into-scalar", "url-into-message",
         "text-into-list"],
)  # fmt: skip
def test_templates_that_do_not_fit_the_message(
    snapshot: Snapshot, request_template: dict[str, Any], problem: str
) -> None:
    route = route_of({"echo": {"method": ECHO, "request": request_template}})
    with pytest.raises(Exception) as caught:
        route.check(snapshot)
    assert problem in str(caught.value)
    assert "aggregate 'GET /bff/{id}' call 'echo'" in str(caught.value)
