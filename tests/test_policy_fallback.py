"""Unit tests of the fallback step (bridge.policy.fallback) against a fake next step: which
failures it answers, the mark it adds, a fresh message per call, and the rules refused when a
method's chain is built (a response that does not fit, a stream named exactly)."""

from __future__ import annotations  # noqa: I001  (services before demo.*)

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from google.protobuf import struct_pb2

from bridge.call import HTTP, Call, Reply
from bridge.errors import DEADLINE_EXCEEDED, INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, BridgeError
from bridge.policy.cache import StreamingRule
from bridge.policy.fallback import FallbackError, Fallbacks, FallbackStep
from bridge.registry.snapshot import Method
from bridge.upstream.call import UnaryReply

import services  # noqa: F401  (puts the generated code on sys.path, so before demo.*)
from demo.echo.v1 import echo_pb2


@dataclass(frozen=True)
class Rule:
    """A stand-in for the config's FallbackRule."""

    match: str = "demo.catalog.v1.CatalogService/*"
    on: tuple[str, ...] = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    response: dict[str, Any] = field(default_factory=lambda: {"message": "default"})


def method(output: type = echo_pb2.EchoResponse, server_streaming: bool = False) -> Method:
    return Method("demo.catalog.v1.CatalogService", "Recommend", echo_pb2.EchoRequest, output,
                  False, server_streaming, "catalog", "test")  # fmt: skip


class Next:
    def __init__(self, fail: BridgeError | None = None) -> None:
        self.fail = fail
        self.calls = 0

    async def __call__(self, call: Call) -> Reply:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return UnaryReply(echo_pb2.EchoResponse(message="real"), [("x-a", "1")], [])


def make_call() -> Call:
    return Call(cast(Any, None), echo_pb2.EchoRequest(), [], None, None, HTTP, "rid")


def step_for(rule: Rule = Rule(), answers: type = echo_pb2.EchoResponse) -> FallbackStep:
    step = Fallbacks([rule]).step(method(answers))
    assert step is not None
    return step


@pytest.mark.parametrize("code", [UNAVAILABLE, DEADLINE_EXCEEDED], ids=["unavailable", "deadline"])
async def test_a_listed_failure_is_answered_with_the_response_marked(code: int) -> None:
    call = make_call()
    reply = await step_for()(call, Next(BridgeError(code, "down")))
    assert await reply.next() == echo_pb2.EchoResponse(message="default")
    assert await reply.next() is None
    assert (reply.initial, await reply.trailers()) == ([], [])
    assert call.response_headers == {"X-Bridge-Fallback": "true"}


@pytest.mark.parametrize("code", [NOT_FOUND, INVALID_ARGUMENT], ids=["not-found", "invalid"])
async def test_an_unlisted_failure_passes_through(code: int) -> None:
    call = make_call()
    failure = BridgeError(code, "no")
    with pytest.raises(BridgeError) as raised:
        await step_for()(call, Next(failure))
    assert raised.value is failure
    assert call.response_headers == {}


async def test_a_success_passes_through_unmarked() -> None:
    call = make_call()
    reply = await step_for()(call, Next())
    assert await reply.next() == echo_pb2.EchoResponse(message="real")
    assert call.response_headers == {}


async def test_each_call_gets_a_fresh_message() -> None:
    step = step_for()
    next = Next(BridgeError(UNAVAILABLE, "down"))
    first = await (await step(make_call(), next)).next()
    assert isinstance(first, echo_pb2.EchoResponse)
    first.message = "changed by a caller"
    assert await (await step(make_call(), next)).next() == echo_pb2.EchoResponse(message="default")


def test_the_response_is_parsed_as_the_methods_message() -> None:
    rule = Rule(response={"items": [], "count": 0})
    step = step_for(rule, struct_pb2.Struct)
    assert step is not None


@pytest.mark.parametrize(
    "response, says",
    [
        pytest.param({"items": []}, 'no field named "items"', id="unknown-field"),
        pytest.param({"message": 3}, "message", id="wrong-type"),
        pytest.param({"payload": "not base64!"}, "payload", id="bad-bytes"),
    ],
)
def test_a_response_that_does_not_fit_names_the_rule_and_method(
    response: dict[str, Any], says: str
) -> None:
    with pytest.raises(FallbackError) as raised:
        step_for(Rule(response=response))
    message = str(raised.value)
    assert message.startswith("fallbacks[0] (demo.catalog.v1.CatalogService/*): response ")
    assert "demo.echo.v1.EchoResponse" in message
    assert "demo.catalog.v1.CatalogService/Recommend" in message
    assert says in message


@pytest.mark.parametrize(
    "rules, streaming, has_step",
    [
        pytest.param([Rule(match="demo.other.*")], False, False, id="no-match"),
        pytest.param([Rule(match="demo.other.*"), Rule()], False, True, id="second-rule"),
        pytest.param([Rule()], True, False, id="glob-passes-streams"),
    ],
)
def test_which_methods_get_a_step(rules: list[Rule], streaming: bool, has_step: bool) -> None:
    step = Fallbacks(rules).step(method(server_streaming=streaming))
    assert (step is not None) is has_step


def test_a_rule_naming_a_stream_exactly_is_refused() -> None:
    rule = Rule(match="demo.catalog.v1.CatalogService/Recommend")
    with pytest.raises(StreamingRule, match=r"fallbacks\[0\] .*server_streaming method"):
        Fallbacks([rule]).step(method(server_streaming=True))
