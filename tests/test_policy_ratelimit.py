"""Unit tests of the rate-limit step (bridge.policy.ratelimit) against a fake next step: which
rule a method gets, which bucket a call counts against, the headers on an allowed call, and the
429 with Retry-After on a refused one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from bridge.call import HTTP, Call, Principal, Reply
from bridge.errors import RESOURCE_EXHAUSTED, BridgeError
from bridge.policy.buckets import Decision, MemoryBuckets
from bridge.policy.ratelimit import RateLimits, RateLimitStep


@dataclass(frozen=True)
class Rule:
    """A stand-in for the config's RateLimitRule."""

    match: str
    key: str = "ip"
    rate: float = 2.0
    burst: int = 5


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeStore:
    """Answers what it is told and records the keys it was asked about."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.taken: list[tuple[str, float, int]] = []

    async def take(self, key: str, rate: float, burst: int) -> Decision:
        self.taken.append((key, rate, burst))
        return self.decision


REPLY = cast(Reply, object())


class Next:
    """The rest of the chain: counts its calls and answers REPLY."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, call: Call) -> Reply:
        self.calls.append(call)
        return REPLY


def make_call(peer: str | None = "198.51.100.1", principal: Principal | None = None) -> Call:
    return Call(cast(Any, None), cast(Any, None), [], None, peer, HTTP, "rid", principal=principal)


API_KEY = Principal("build-bot", "api_key", key_id="k-1234")
KEYLESS_API = Principal("legacy", "api_key")
JWT = Principal("alice", "jwt", frozenset({"read"}))


@pytest.mark.parametrize(
    "method, index",
    [
        pytest.param("demo.users.v1.UserService/GetUser", 0, id="exact-method"),
        pytest.param("demo.users.v1.UserService/ListUsers", 1, id="service-glob"),
        pytest.param("demo.echo.v1.EchoService/Echo", 2, id="catch-all"),
        pytest.param("demo.users.v1.UserServiceX/GetUser", 2, id="glob-is-not-prefix"),
    ],
)
def test_first_matching_rule_wins(method: str, index: int) -> None:
    rules = [
        Rule("demo.users.v1.UserService/GetUser", burst=1),
        Rule("demo.users.v1.UserService/*", burst=2),
        Rule("*", burst=3),
    ]
    step = RateLimits(rules, MemoryBuckets()).step(method)
    assert step is not None
    assert step.index == index
    assert step.rule is rules[index]


def test_no_matching_rule_means_no_step() -> None:
    limits = RateLimits([Rule("demo.users.*")], MemoryBuckets())
    assert limits.step("demo.echo.v1.EchoService/Echo") is None
    assert RateLimits([], MemoryBuckets()).step("demo.echo.v1.EchoService/Echo") is None


def test_matching_is_case_sensitive() -> None:
    assert RateLimits([Rule("demo.Users.*")], MemoryBuckets()).step("demo.users.v1.S/M") is None


def test_methods_of_one_rule_share_its_step() -> None:
    limits = RateLimits([Rule("*")], MemoryBuckets())
    assert limits.step("a.S/One") is limits.step("b.T/Two")


@pytest.mark.parametrize(
    "kind, call, key",
    [
        pytest.param("ip", make_call(), "3:ip:198.51.100.1", id="ip"),
        pytest.param("ip", make_call(principal=API_KEY), "3:ip:198.51.100.1", id="ip-ignores-key"),
        pytest.param("ip", make_call(peer=None), "3:ip:", id="ip-unknown-peer"),
        pytest.param("api_key", make_call(principal=API_KEY), "3:api_key:k-1234", id="api-key"),
        pytest.param("api_key", make_call(), "3:ip:198.51.100.1", id="api-key-anonymous"),
        pytest.param("api_key", make_call(principal=JWT), "3:ip:198.51.100.1", id="api-key-jwt"),
        pytest.param(
            "api_key", make_call(principal=KEYLESS_API), "3:ip:198.51.100.1", id="api-key-no-id"
        ),
        pytest.param("subject", make_call(principal=JWT), "3:subject:alice", id="subject-jwt"),
        pytest.param(
            "subject", make_call(principal=API_KEY), "3:subject:build-bot", id="subject-api-key"
        ),
        pytest.param("subject", make_call(), "3:ip:198.51.100.1", id="subject-anonymous"),
    ],
)
def test_bucket_key(kind: str, call: Call, key: str) -> None:
    assert RateLimitStep(Rule("*", key=kind), 3, MemoryBuckets()).key(call) == key


def test_unknown_key_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="'cookie'"):
        RateLimitStep(Rule("*", key="cookie"), 0, MemoryBuckets())


async def test_allowed_call_goes_on_with_headers() -> None:
    store = FakeStore((True, 3, 1.2, 0.0))
    step = RateLimitStep(Rule("*", rate=2.0, burst=5), 0, store)
    call, rest = make_call(), Next()
    assert await step(call, rest) is REPLY
    assert rest.calls == [call]
    assert store.taken == [("0:ip:198.51.100.1", 2.0, 5)]
    assert call.response_headers == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "3",
        "RateLimit-Reset": "2",  # 1.2 s rounded up
    }


async def test_refused_call_is_a_429_and_never_goes_on() -> None:
    store = FakeStore((False, 0, 2.5, 0.25))
    step = RateLimitStep(Rule("*", rate=2.0, burst=5), 0, store)
    call, rest = make_call(), Next()
    with pytest.raises(BridgeError) as caught:
        await step(call, rest)
    error = caught.value
    assert rest.calls == []
    assert (error.code, error.status) == (RESOURCE_EXHAUSTED, 429)
    assert error.message.startswith("rate limit exceeded")
    assert error.headers == {
        "Retry-After": "1",  # 0.25 s: whole seconds, at least 1
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "3",
    }
    assert error.details == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}
    ]


@pytest.mark.parametrize("retry_after, header", [(0.001, "1"), (1.0, "1"), (1.01, "2"), (30, "30")])
async def test_retry_after_rounds_up(retry_after: float, header: str) -> None:
    step = RateLimitStep(Rule("*"), 0, FakeStore((False, 0, 40, retry_after)))
    with pytest.raises(BridgeError) as caught:
        await step(make_call(), Next())
    assert caught.value.headers["Retry-After"] == header


async def test_a_burst_through_the_memory_store() -> None:
    """rate 2/s, burst 5 on a still clock: five calls pass counting down, the sixth is refused."""
    clock = Clock()
    step = RateLimitStep(Rule("*", rate=2.0, burst=5), 0, MemoryBuckets(clock=clock))
    rest = Next()
    seen = []
    for _ in range(5):
        call = make_call()
        await step(call, rest)
        headers = call.response_headers
        seen.append((headers["RateLimit-Remaining"], headers["RateLimit-Reset"]))
    assert seen == [("4", "1"), ("3", "1"), ("2", "2"), ("1", "2"), ("0", "3")]
    with pytest.raises(BridgeError) as caught:
        await step(make_call(), rest)
    assert caught.value.headers["Retry-After"] == "1"
    assert len(rest.calls) == 5
    await step(make_call(peer="198.51.100.2"), rest)  # another client has its own bucket
    clock.now += 500_000_000  # one token back after 1/rate
    await step(make_call(), rest)
    assert len(rest.calls) == 7


async def test_one_catch_all_rule_counts_every_method_in_one_bucket() -> None:
    limits = RateLimits([Rule("*", burst=2)], MemoryBuckets(clock=Clock()))
    one, two = limits.step("a.S/One"), limits.step("b.T/Two")
    assert one is not None and two is not None
    await one(make_call(), Next())
    await two(make_call(), Next())
    with pytest.raises(BridgeError):
        await one(make_call(), Next())


async def test_rules_count_separately() -> None:
    limits = RateLimits([Rule("a.*", burst=1), Rule("*", burst=1)], MemoryBuckets(clock=Clock()))
    first, second = limits.step("a.S/M"), limits.step("b.S/M")
    assert first is not None and second is not None
    await first(make_call(), Next())
    await second(make_call(), Next())  # same client, another rule: its own bucket
    with pytest.raises(BridgeError):
        await first(make_call(), Next())
