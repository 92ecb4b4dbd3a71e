"""Property-based tests of the request mapping (hypothesis): hostile bodies, query strings and
paths for the example routes (protos/demo) never make the bridge fail.

Two layers. Straight into ``RequestPlan.to_message`` (and ``from_json``, the WebSocket path) of
every example route, many examples a second: the result is a message that serializes, or a
BridgeError with a 4xx status; any other exception is a bug. Then the same kind of input over
real HTTP to one bridge in front of the example services: every answer is a 2xx, or a 4xx with
a google.rpc.Status body. The HTTP layer leaves out what would only make the backends wait or
fail on purpose (EchoService.Fail, sleeps, endless Tick streams); the first layer has no such
gaps.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import pytest
from google.protobuf.descriptor import Descriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from yarl import URL

from bridge.errors import BridgeError
from bridge.registry import JsonShape, ProtoSet, build_snapshot
from bridge.registry.snapshot import Binding
from bridge.routing import Route
from bridge.routing.template import SegmentKind
from bridge.transcode import json_text
from tests.conftest import Bridge

IN_PROCESS: Final = settings(max_examples=400, deadline=None, database=None)
OVER_HTTP: Final = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# Fields that only make the example backends wait or stream without end.
TIMING: Final = frozenset(
    {"sleep_ms", "sleepMs", "count", "interval_ms", "intervalMs", "lines", "fail_after",
     "failAfter", "payload_size", "payloadSize"}
)  # fmt: skip
HTTP_VERBS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


# --- hostile input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: a list of members, so the same name may appear twice."""

    members: tuple[tuple[str, Any], ...]


def encode(value: Any) -> str:
    """JSON text for generated values (bare NaN and Infinity included, as some clients send)."""
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


ODD_TEXT: Final = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=12
) | st.sampled_from(["\ud800", "\x00", "é", "\u202e", "NaN", "-Infinity", "1e400", "AAAA",
                     "Zm9v!", "2024-01-02T03:04:05Z", "1.5s", "ROLE_ADMIN", "KIND_B", "*",
                     "display_name,Num", "9223372036854775808", ""])  # fmt: skip
SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**30, -(10**400), 2**63, 2**64, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | ODD_TEXT
)


def json_values(names: list[str]) -> st.SearchStrategy[Any]:
    """JSON values whose object members are mostly real field names, sometimes repeated."""
    keys = st.sampled_from(names) | ODD_TEXT if names else ODD_TEXT
    return st.recursive(
        SCALARS,
        lambda children: (
            st.lists(children, max_size=4)
            | st.lists(st.tuples(keys, children), max_size=5).map(lambda m: Obj(tuple(m)))
        ),
        max_leaves=24,
    )


def deep(depth: int, key: str) -> bytes:
    return (f'{{"{key}": ' * depth + "1" + "}" * depth).encode()


def bodies(names: list[str]) -> st.SearchStrategy[bytes]:
    """Request bodies: JSON (mostly objects), nested deeply, or not JSON at all."""
    objects = st.lists(st.tuples(st.sampled_from(names or ["x"]), json_values(names)), max_size=6)
    return st.one_of(
        objects.map(lambda m: encode(Obj(tuple(m))).encode()),
        json_values(names).map(lambda v: encode(v).encode()),
        st.builds(deep, st.integers(90, 1100), st.sampled_from([*names[:3], "child", "a"])),
        st.binary(max_size=48),
        st.just(b""),
    )


def field_names(message: Descriptor, depth: int = 3, prefix: str = "") -> Iterator[str]:
    """Proto and JSON names of the fields reachable from a message, dotted for nested ones."""
    for field in message.fields:
        for name in {field.name, field.json_name}:
            yield prefix + name
            nested = field.message_type
            if depth > 1 and nested is not None and not field.is_repeated:
                yield from field_names(nested, depth - 1, f"{prefix}{name}.")


def names_of(binding: Binding) -> list[str]:
    return sorted(set(field_names(binding.request.descriptor)))


def query_pairs(names: list[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    name = st.sampled_from(names) | ODD_TEXT if names else ODD_TEXT
    return st.lists(st.tuples(name, ODD_TEXT), max_size=6)


def demo_routes(demo_protos: ProtoSet) -> list[Route]:
    """Every route of the example protos (annotated rules and the default POST routes)."""
    snapshot = build_snapshot([demo_protos], lambda service: service.split(".")[1], JsonShape())
    return list(snapshot.routes.routes)


# --- layer 1: RequestPlan alone ----------------------------------------------------------------


@pytest.fixture(scope="module")
def routes(demo_protos: ProtoSet) -> list[Route]:
    return demo_routes(demo_protos)


def assert_mapped_or_4xx(binding: Binding, run: Any) -> None:
    """``run()`` builds a request message that serializes, or raises a 4xx BridgeError."""
    try:
        message = run()
    except BridgeError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert error.message
        return
    message.SerializeToString()  # what the bridge will send must be sendable


@IN_PROCESS
@given(data=st.data())
def test_to_message_maps_or_refuses(routes: list[Route], data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(routes), label="route")
    binding: Binding = route.target
    names = names_of(binding)
    params = {v.field_path: data.draw(ODD_TEXT) for v in route.template.variables}
    body = data.draw(bodies(names), label="body")
    query = MultiDict(data.draw(query_pairs(names), label="query"))
    content_type = data.draw(ODD_TEXT, label="content type")
    plan = binding.request
    assert_mapped_or_4xx(binding, lambda: plan.to_message(params, body, query, content_type))


@IN_PROCESS
@given(data=st.data())
def test_from_json_maps_or_refuses(routes: list[Route], data: st.DataObject) -> None:
    """The WebSocket path: a start frame's ``message`` value straight into the plan."""
    binding: Binding = data.draw(st.sampled_from(routes), label="route").target
    text = encode(data.draw(json_values(names_of(binding)), label="message"))
    try:
        value = json_text.loads(text)
    except json_text.JsonError:
        return  # the frame parser refuses it before any plan sees it
    assert_mapped_or_4xx(binding, lambda: binding.request.from_json(value))


# --- layer 2: over HTTP ------------------------------------------------------------------------

QUIET: Final = {"Fail"}  # fails on purpose with 5xx codes


def segment() -> st.SearchStrategy[str]:
    """One path segment as sent: percent-encoded text, garbage escapes, odd characters."""
    return st.one_of(
        ODD_TEXT.map(_quoted),
        st.text(string.ascii_letters + string.digits + "%:.-_~!$&'()*+,;=@", max_size=10),
    ).filter(bool)


@st.composite
def http_path(draw: st.DrawFn, route: Route) -> str:
    """A path for a route's template, variables filled with hostile segments."""
    parts = []
    for seg in route.template.segments:
        if seg.kind is SegmentKind.LITERAL:
            parts.append(seg.literal)
        elif seg.kind is SegmentKind.SINGLE:
            parts.append(draw(segment()))
        else:
            parts.extend(draw(st.lists(segment(), min_size=1, max_size=3)))
    verb = f":{route.template.verb}" if route.template.verb else ""
    return "/" + "/".join(parts) + verb


def raw_query(pairs: list[tuple[str, str]], garbage: str) -> str:
    safe = [f"{_quoted(k)}={_quoted(v)}" for k, v in pairs if k not in TIMING]
    return "&".join([*safe, garbage]).strip("&")


def _quoted(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


async def test_hostile_requests_are_answered_2xx_or_4xx_with_a_status(
    demo: Bridge, demo_protos: ProtoSet
) -> None:
    """One bridge for all examples: hypothesis runs in a thread, each request on the loop."""
    routes = [r for r in demo_routes(demo_protos) if r.target.method.name not in QUIET]
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    answered: Counter[int] = Counter()  # by hundreds

    async def send(method: str, target: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "grpc-timeout": "3S"}
        url = URL(demo.url + target, encoded=True)
        async with demo.http.request(method, url, data=body, headers=headers) as resp:
            payload = await resp.read()
            answered[resp.status // 100] += 1
            where = f"{method} {target} {body[:80]!r}"
            if resp.status >= 500:
                failures.append(f"{resp.status} for {where}: {payload[:200]!r}")
            elif resp.status >= 400:
                status = json.loads(payload)
                if status.keys() != {"code", "message", "details"} or not status["code"]:
                    failures.append(f"{resp.status} without a Status for {where}: {status}")

    @OVER_HTTP
    @given(data=st.data())
    def explore(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(routes), label="route")
        names = [n for n in names_of(route.target) if n not in TIMING]
        if data.draw(st.booleans(), label="known route"):
            method, path = route.verb, data.draw(http_path(route), label="path")
        else:
            method = data.draw(st.sampled_from(HTTP_VERBS), label="method")
            path = "/" + "/".join(data.draw(st.lists(segment(), max_size=4), label="path"))
        query = raw_query(
            data.draw(query_pairs(names), label="query"),
            data.draw(st.sampled_from(["", "%", "%zz", "a=%ff%fe", "&&=", "=x", "x=1=2"])),
        )
        if route.target.method.name == "Tick":
            query = "count=1&" + query
        body = data.draw(bodies(names), label="body")
        if any(name.encode() in body for name in TIMING):
            body = b"{}"
        target = path + ("?" + query if query else "")
        if data.draw(st.integers(0, 19), label="well-formed instead") == 19:
            # Now and then a call that must succeed, between the hostile ones.
            method, target, body = "POST", "/demo.echo.v1.EchoService/Echo", b"{}"
        asyncio.run_coroutine_threadsafe(send(method, target, body), loop).result(timeout=20)

    await asyncio.to_thread(explore)
    assert not failures, "\n".join(failures[:10])
    # Random requests alone are 2xx only about one time in 25, so a run may hold none; the
    # well-formed calls mixed in and the call below show the bridge serving throughout.
    assert answered[4], answered
    got, body, _ = await demo.json("POST", "/v1/echo", json={"message": "still here"})
    assert (got, body["message"]) == (200, "still here")
