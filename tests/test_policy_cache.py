"""Unit tests of the cache step (bridge.policy.cache) and its memory store, against a fake next
step and a fake clock: keys and vary parts, HIT/MISS/STALE, TTL, what is never stored, single
flight (and whose deadline or cancel is shared), the LRU bounds, and which methods get a step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import pytest
from google.protobuf import empty_pb2, struct_pb2, wrappers_pb2
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.call import HTTP, Call, Principal, Reply
from bridge.errors import DEADLINE_EXCEEDED, INVALID_ARGUMENT, UNAVAILABLE, BridgeError
from bridge.policy.cache import Cache, CacheStep, StreamingRule
from bridge.policy.cache_store import ENTRY_OVERHEAD, CacheEntry, MemoryStore
from bridge.registry.snapshot import Method
from bridge.upstream.call import UnaryReply

NAME = "demo.catalog.v1.CatalogService/GetItem"


@dataclass(frozen=True)
class Rule:
    """A stand-in for the config's CacheRule."""

    match: str = NAME
    ttl: float = 30.0
    vary: tuple[str, ...] = ()
    stale_if_error: float = 0.0


def method(output: type = wrappers_pb2.StringValue, **kind: bool) -> Method:
    service, name = NAME.split("/")
    streaming = {"client_streaming": False, "server_streaming": False, **kind}
    return Method(service, name, wrappers_pb2.StringValue, output, upstream="catalog",
                  source="test", **streaming)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Next:
    """The rest of the chain: answers a numbered StringValue, or raises ``fail``; like the
    upstream, a call still waiting at the gate when its timeout passes is DEADLINE_EXCEEDED."""

    def __init__(self) -> None:
        self.calls = 0
        self.timeouts: list[float | None] = []  # each call's timeout, as the upstream saw it
        self.fail: BridgeError | None = None
        self.gate: asyncio.Event | None = None  # when set, calls wait for it

    async def __call__(self, call: Call) -> Reply:
        self.calls += 1
        self.timeouts.append(call.timeout)
        if self.gate is not None:
            try:
                async with asyncio.timeout(call.timeout):
                    await self.gate.wait()
            except TimeoutError:
                raise BridgeError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if self.fail is not None:
            raise self.fail
        answer = wrappers_pb2.StringValue(value=f"answer {self.calls}")
        return UnaryReply(answer, [("x-initial", "i")], [("x-trailer", "t")])


def make_call(
    request: Any = None,
    principal: Principal | None = None,
    headers: Any = None,
    timeout: float | None = None,
) -> Call:
    request = request if request is not None else wrappers_pb2.StringValue(value="item-1")
    return Call(
        cast(Any, None), request, [], timeout, "198.51.100.1", HTTP, "rid",
        headers=headers or {}, principal=principal,
    )  # fmt: skip


def build(rule: Rule = Rule(), **store: Any) -> tuple[CacheStep, Clock, MemoryStore]:
    clock = Clock()
    memory = MemoryStore(clock=clock, **store)
    step = Cache([rule], memory, clock=clock).step(method())
    assert step is not None
    return step, clock, memory


async def answer(step: CacheStep, next: Next, call: Call | None = None) -> tuple[str, dict]:
    call = call or make_call()
    reply = await step(call, next)
    message = await reply.next()
    assert isinstance(message, wrappers_pb2.StringValue)
    return message.value, call.response_headers


ALICE = Principal("alice", "jwt")
BOB = Principal("bob", "api_key", key_id="k-bob")


async def test_miss_then_hit_with_the_backends_metadata() -> None:
    step, _, _ = build()
    next = Next()
    assert await answer(step, next) == ("answer 1", {"X-Cache": "MISS"})
    call = make_call()
    reply = await step(call, next)
    assert (await reply.next(), call.response_headers) == (
        wrappers_pb2.StringValue(value="answer 1"),
        {"X-Cache": "HIT"},
    )
    assert (reply.initial, await reply.trailers()) == ([("x-initial", "i")], [("x-trailer", "t")])
    assert next.calls == 1


async def test_each_hit_is_a_message_of_its_own() -> None:
    step, _, _ = build()
    next = Next()
    await answer(step, next)
    first = await (await step(make_call(), next)).next()
    assert isinstance(first, wrappers_pb2.StringValue)
    first.value = "changed by a caller"
    assert (await answer(step, next))[0] == "answer 1"


async def test_entry_is_fresh_for_ttl_then_asked_again() -> None:
    step, clock, _ = build(Rule(ttl=30))
    next = Next()
    await answer(step, next)
    clock.now += 29.9
    assert await answer(step, next) == ("answer 1", {"X-Cache": "HIT"})
    clock.now += 0.1
    assert await answer(step, next) == ("answer 2", {"X-Cache": "MISS"})


@pytest.mark.parametrize(
    "first, second, shared",
    [
        pytest.param(make_call(), make_call(), True, id="same-request"),
        pytest.param(
            make_call(wrappers_pb2.StringValue(value="a")),
            make_call(wrappers_pb2.StringValue(value="b")), False, id="other-request",
        ),
        pytest.param(make_call(principal=ALICE), make_call(principal=BOB), True,
                     id="subjects-share-without-vary"),
    ],
)  # fmt: skip
async def test_requests_share_an_entry_only_when_equal(
    first: Call, second: Call, shared: bool
) -> None:
    step, _, _ = build()
    next = Next()
    await answer(step, next, first)
    assert (await answer(step, next, second))[0] == ("answer 1" if shared else "answer 2")


async def test_canonical_request_bytes_ignore_map_order() -> None:
    step, _, _ = build(Rule())
    one = struct_pb2.Struct()
    one.update({"a": 1, "b": 2})
    other = struct_pb2.Struct()
    other.update({"b": 2, "a": 1})
    assert step.key(make_call(one)) == step.key(make_call(other))


@pytest.mark.parametrize(
    "first, second",
    [
        pytest.param(ALICE, BOB, id="two-subjects"),
        pytest.param(ALICE, None, id="subject-and-anonymous"),
        pytest.param(Principal("", "jwt"), None, id="empty-subject-is-not-anonymous"),
    ],
)
async def test_vary_subject_never_serves_one_subjects_entry_to_another(
    first: Principal | None, second: Principal | None
) -> None:
    step, _, _ = build(Rule(vary=("subject",)))
    next = Next()
    assert (await answer(step, next, make_call(principal=first)))[0] == "answer 1"
    assert (await answer(step, next, make_call(principal=second)))[0] == "answer 2"
    assert (await answer(step, next, make_call(principal=first)))[0] == "answer 1"


def multi(*items: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(items))


@pytest.mark.parametrize(
    "first, second, shared",
    [
        pytest.param({"x-tenant": "a"}, {"x-tenant": "b"}, False, id="other-value"),
        pytest.param({"x-tenant": "a"}, {}, False, id="missing"),
        pytest.param({"x-tenant": ""}, {}, False, id="empty-is-not-missing"),
        pytest.param(multi(("X-Tenant", "a")), {"x-tenant": "a"}, True, id="name-case"),
        pytest.param(multi(("x-tenant", "a"), ("x-tenant", "b")), {"x-tenant": "a"}, False,
                     id="repeated-is-not-its-first"),
        pytest.param({"x-tenant": "a", "x-other": "1"}, {"x-tenant": "a"}, True,
                     id="other-headers-ignored"),
    ],
)  # fmt: skip
async def test_vary_header(first: Any, second: Any, shared: bool) -> None:
    step, _, _ = build(Rule(vary=("header:x-tenant",)))
    assert (step.key(make_call(headers=first)) == step.key(make_call(headers=second))) is shared


async def test_two_vary_headers_values_cannot_be_shifted_into_each_other() -> None:
    step, _, _ = build(Rule(vary=("header:x-a", "header:x-b")))
    assert step.key(make_call(headers={"x-a": "1", "x-b": ""})) != step.key(
        make_call(headers={"x-a": "", "x-b": "1"})
    )


async def test_errors_are_never_stored() -> None:
    step, _, memory = build()
    next = Next()
    next.fail = BridgeError(UNAVAILABLE, "down")
    with pytest.raises(BridgeError):
        await answer(step, next)
    assert len(memory) == 0
    next.fail = None
    assert await answer(step, next) == ("answer 2", {"X-Cache": "MISS"})


async def test_stale_answers_a_server_failure_within_stale_if_error() -> None:
    step, clock, _ = build(Rule(ttl=30, stale_if_error=300))
    next = Next()
    await answer(step, next)
    next.fail = BridgeError(UNAVAILABLE, "down")
    clock.now += 30 + 299
    assert await answer(step, next) == (
        "answer 1",
        {"X-Cache": "STALE", "X-Bridge-Fallback": "true"},
    )
    clock.now += 1
    with pytest.raises(BridgeError) as raised:
        await answer(step, next)
    assert raised.value.code == UNAVAILABLE


async def test_stale_is_not_for_client_errors() -> None:
    step, clock, _ = build(Rule(ttl=30, stale_if_error=300))
    next = Next()
    await answer(step, next)
    clock.now += 31
    next.fail = BridgeError(INVALID_ARGUMENT, "bad")
    with pytest.raises(BridgeError) as raised:
        await answer(step, next)
    assert raised.value.code == INVALID_ARGUMENT


async def test_without_stale_if_error_an_expired_entry_never_answers() -> None:
    step, clock, _ = build(Rule(ttl=30))
    next = Next()
    await answer(step, next)
    clock.now += 30
    next.fail = BridgeError(UNAVAILABLE, "down")
    with pytest.raises(BridgeError):
        await answer(step, next)


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["no-timeout", "with-timeouts"])
async def test_concurrent_misses_make_one_backend_call(timeout: float | None) -> None:
    step, _, _ = build()
    next = Next()
    next.gate = asyncio.Event()
    calls = [make_call(timeout=timeout) for _ in range(20)]
    waiting = [asyncio.create_task(step(call, next)) for call in calls]
    await asyncio.sleep(0.01)
    next.gate.set()
    replies = await asyncio.gather(*waiting)
    assert next.calls == 1
    assert {(await r.next()).value for r in replies} == {"answer 1"}  # type: ignore[union-attr]
    assert {c.response_headers["X-Cache"] for c in calls} == {"MISS"}


async def test_concurrent_misses_share_the_failure_each_with_its_own_copy() -> None:
    step, _, _ = build()
    next = Next()
    next.gate = asyncio.Event()
    next.fail = BridgeError(UNAVAILABLE, "down", headers={"Grpc-Metadata-x": "1"})
    waiting = [asyncio.create_task(step(make_call(), next)) for _ in range(5)]
    await asyncio.sleep(0.01)
    next.gate.set()
    errors = await asyncio.gather(*waiting, return_exceptions=True)
    assert next.calls == 1
    assert all(isinstance(e, BridgeError) and e.code == UNAVAILABLE for e in errors)
    assert len({id(e) for e in errors}) == 5
    assert all(e.headers == {"Grpc-Metadata-x": "1"} for e in errors)  # type: ignore[union-attr]


async def first_and_waiting(
    first_timeout: float | None = None, *timeouts: float | None
) -> tuple[Next, asyncio.Task[Reply], list[asyncio.Task[Reply]]]:
    """A call (with ``first_timeout``) whose backend call waits at the gate, and calls waiting
    on it: one for each of ``timeouts``, or one without a timeout."""
    step, _, _ = build()
    next = Next()
    next.gate = asyncio.Event()
    first = asyncio.create_task(step(make_call(timeout=first_timeout), next))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(step(make_call(timeout=t), next)) for t in timeouts or [None]]
    await asyncio.sleep(0.01)
    return next, first, waiting


async def value(task: asyncio.Task[Reply]) -> str:
    message = await (await task).next()
    assert isinstance(message, wrappers_pb2.StringValue)
    return message.value


async def test_a_cancelled_first_call_hands_the_backend_call_to_a_waiting_one() -> None:
    next, first, waiting = await first_and_waiting(None, None, 30.0)
    first.cancel()
    await asyncio.sleep(0.01)
    assert next.gate is not None
    next.gate.set()
    assert [await value(task) for task in waiting] == ["answer 2", "answer 2"]
    assert next.calls == 2  # the first waiting call asked; the other waited on it
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_waiting_call_leaves_the_backend_call_alone() -> None:
    next, first, (second,) = await first_and_waiting()
    second.cancel()
    assert next.gate is not None
    next.gate.set()
    assert await value(first) == "answer 1"
    assert next.calls == 1


async def test_the_first_calls_own_deadline_is_not_the_waiting_calls() -> None:
    next, first, waiting = await first_and_waiting(0.05, 30.0, 30.0)
    with pytest.raises(BridgeError) as raised:
        await first
    assert raised.value.code == DEADLINE_EXCEEDED
    await asyncio.sleep(0.01)
    assert next.gate is not None
    next.gate.set()
    assert [await value(task) for task in waiting] == ["answer 2", "answer 2"]
    assert next.calls == 2  # one waiting call asked again; the other waited on it
    second_timeout = next.timeouts[1]
    assert second_timeout is not None and 29 < second_timeout < 30  # only the time it had left


@pytest.mark.parametrize(
    "first_timeout", [None, 30.0], ids=["the-upstreams-timeout", "before-the-first-deadline"]
)
async def test_a_deadline_failure_not_the_first_calls_own_is_shared(
    first_timeout: float | None,
) -> None:
    """No timeout: the upstream's ended it, and would end any call; an early one: the backend's."""
    next, first, waiting = await first_and_waiting(first_timeout, 30.0)
    assert next.gate is not None
    next.fail = BridgeError(DEADLINE_EXCEEDED, "the backend's own deadline")
    next.gate.set()
    failures = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert [getattr(e, "code", e) for e in failures] == [DEADLINE_EXCEEDED] * 2
    assert next.calls == 1


async def test_a_waiting_calls_own_deadline_ends_its_wait() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    next, first, (waiting,) = await first_and_waiting(None, 0.05)  # 10 ms after the first
    with pytest.raises(BridgeError) as raised:
        await waiting
    assert raised.value.code == DEADLINE_EXCEEDED
    assert 0.06 <= loop.time() - began < 0.5  # its own deadline: the first call never ends
    assert not first.done()
    assert next.gate is not None
    next.gate.set()
    assert await value(first) == "answer 1"
    assert next.calls == 1


async def test_a_waiting_calls_own_deadline_takes_the_stale_entry() -> None:
    step, clock, _ = build(Rule(ttl=30, stale_if_error=300))
    next = Next()
    await answer(step, next)
    clock.now += 31
    next.gate = asyncio.Event()
    first = asyncio.create_task(step(make_call(), next))
    await asyncio.sleep(0.01)
    call = make_call(timeout=0.05)
    assert await answer(step, next, call) == (
        "answer 1",
        {"X-Cache": "STALE", "X-Bridge-Fallback": "true"},
    )
    next.gate.set()
    assert await value(first) == "answer 2"


async def test_an_entry_that_no_longer_parses_is_a_miss() -> None:
    step, clock, memory = build()
    await memory.put(step.key(make_call()), CacheEntry(b"\xff", (), (), clock.now + 30), 30)
    assert await answer(step, Next()) == ("answer 1", {"X-Cache": "MISS"})


def entry(body: bytes = b"x", fresh: float = 1e12) -> CacheEntry:
    return CacheEntry(body, (("k", "v"),), (), fresh)


async def test_store_drops_the_least_recently_used_at_max_entries() -> None:
    memory = MemoryStore(max_entries=2)
    await memory.put("a", entry(), 60)
    await memory.put("b", entry(), 60)
    assert await memory.get("a") is not None  # a is now the most recently used
    await memory.put("c", entry(), 60)
    assert [await memory.get(k) is not None for k in "abc"] == [True, False, True]


async def test_store_bounds_bytes_and_counts_them() -> None:
    size = ENTRY_OVERHEAD + 100 + 2 + 1  # body, metadata ("k", "v"), key
    memory = MemoryStore(max_bytes=2 * size)
    for key in "abc":
        await memory.put(key, entry(b"x" * 100), 60)
    assert (len(memory), memory.bytes) == (2, 2 * size)
    assert await memory.get("a") is None
    await memory.put("big", entry(b"x" * 2 * size), 60)  # larger than max_bytes: not kept
    assert (len(memory), await memory.get("big")) == (2, None)


async def test_store_forgets_an_entry_after_keep_and_replaces_one_put_again() -> None:
    clock = Clock()
    memory = MemoryStore(clock=clock)
    await memory.put("a", entry(b"old"), 10)
    await memory.put("a", entry(b"new"), 10)
    assert (len(memory), (await memory.get("a")).body) == (1, b"new")  # type: ignore[union-attr]
    clock.now += 10
    assert (await memory.get("a"), len(memory), memory.bytes) == (None, 0, 0)


@pytest.mark.parametrize(
    "rule, kind, has_step",
    [
        pytest.param(Rule(match="demo.catalog.*"), {}, True, id="glob"),
        pytest.param(Rule(match="demo.other.*"), {}, False, id="no-match"),
        pytest.param(Rule(match="demo.catalog.*"), {"server_streaming": True}, False,
                     id="glob-passes-over-streams"),
        pytest.param(Rule(match="demo.catalog.*"), {"client_streaming": True}, False,
                     id="glob-passes-over-client-streams"),
    ],
)  # fmt: skip
def test_which_methods_get_a_step(rule: Rule, kind: dict[str, bool], has_step: bool) -> None:
    assert (Cache([rule], MemoryStore()).step(method(**kind)) is not None) is has_step


def test_a_rule_naming_a_stream_exactly_is_refused() -> None:
    with pytest.raises(StreamingRule, match=r"cache\[0\] \(.*\): .*GetItem is a server_stre"):
        Cache([Rule()], MemoryStore()).step(method(server_streaming=True))


async def test_empty_request_and_answer() -> None:
    clock = Clock()
    step = Cache([Rule()], MemoryStore(clock=clock), clock=clock).step(method(empty_pb2.Empty))
    assert step is not None

    async def empty(call: Call) -> Reply:
        return UnaryReply(empty_pb2.Empty(), [], [])

    await step(make_call(empty_pb2.Empty()), empty)
    call = make_call(empty_pb2.Empty())
    assert await (await step(call, empty)).next() == empty_pb2.Empty()
    assert call.response_headers == {"X-Cache": "HIT"}
