"""Property-based tests (hypothesis) of the WebSocket frames: frames.parse alone, and random
scripts of frames against the example services through a real bridge.

The functional property: whatever a client sends, no exception escapes the bridge (nothing
logged at ERROR by bridge or aiohttp, nothing reaching the loop's exception handler), every
started call ends with exactly one status frame, every frame that cannot be tied to a call is
answered with an error frame, and the socket stays open (unless a frame breaks the WebSocket
protocol itself: over the size limit, 1009; text that is not UTF-8, 1007).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.ws import frames
from bridge.ws.frames import FrameError
from tests.conftest import Bridge, demo_config
from tests.ws_client import ECHO, WsClient, connect, status

USERS: Final = "demo.users.v1.UserService/"
MAX_FRAME: Final = 16384  # the functional bridge's limits.ws_max_frame
OK: Final = {"code": 0, "message": "", "details": []}
ALIVE: Final = "the socket is still open"  # an id longer than any the strategies draw

# --- strategies ------------------------------------------------------------------------------


def weighted(*choices: tuple[st.SearchStrategy[Any], int]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (st.one_of drops repeats)."""
    return st.sampled_from([s for s, weight in choices for _ in range(weight)]).flatmap(
        lambda chosen: chosen
    )


SCALARS: Final = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.integers(2**64, 2**80)  # orjson reads these as floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES: Final = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
GOOD_IDS: Final = st.text(max_size=8) | st.integers(-(2**63), 2**64 - 1)
BAD_IDS: Final = (
    st.integers(2**64, 2**80) | st.floats(allow_nan=False) | st.booleans() | st.none() | JSON_VALUES
)
IDS: Final = weighted((GOOD_IDS, 3), (BAD_IDS, 1))
KNOWN_METHODS: Final = st.sampled_from(
    [ECHO + name for name in ("Echo", "Fail", "Sum", "Chat", "Tick")]
    + [USERS + name for name in ("GetUser", "ListUsers", "CreateUser", "UpdateUser")]
)
ODD_METHODS: Final = (
    st.sampled_from([ECHO + "Nope", "/" + ECHO + "Echo", "demo.echo.v1.EchoService", ""])
    | st.text(max_size=16)
    | JSON_VALUES
)
METHODS: Final = weighted((KNOWN_METHODS, 3), (ODD_METHODS, 1))
TEXTS: Final = st.text(max_size=10)
INT64S: Final = st.integers(-(2**63), 2**63 - 1)
# Messages shaped like each method's request (messages_for mixes in values of any JSON type).
SHAPES: Final = {
    "Echo": {
        "message": TEXTS,
        "sleepMs": st.integers(0, 20),
        "number": INT64S | INT64S.map(str),
        "payload": st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode()),
        "inner": st.fixed_dictionaries({}, optional={"note": TEXTS, "level": st.integers(0, 9)}),
        "responseHeaders": st.dictionaries(st.from_regex(r"x-[a-z]{1,5}", fullmatch=True), TEXTS),
        "extra": st.dictionaries(TEXTS, JSON_VALUES, max_size=2),
        "ratio": st.floats(allow_nan=False, allow_infinity=False) | st.none(),
        "kind": st.sampled_from(["KIND_A", "KIND_B", 2]),
    },
    "Fail": {"code": st.integers(0, 16), "message": TEXTS, "withDetails": st.booleans()},
    "Sum": {"value": INT64S | INT64S.map(str)},
    "Chat": {"user": TEXTS, "text": TEXTS},
    "Tick": {},  # TICKS below
    "GetUser": {"id": TEXTS | st.sampled_from(["1", "2", "42"])},
    "ListUsers": {"pageSize": st.integers(0, 5), "pageToken": TEXTS, "tags": st.lists(TEXTS)},
    "CreateUser": {"user": st.fixed_dictionaries({}, optional={"displayName": TEXTS})},
    "UpdateUser": {
        "user": st.fixed_dictionaries({}, optional={"id": TEXTS, "displayName": TEXTS}),
        "updateMask": st.sampled_from(["displayName", "display_name", "nope", ""]),
    },
}


def messages_for(method: Any) -> st.SearchStrategy[Any]:
    """Request messages for a method: mostly shaped like its request, sometimes any JSON."""
    name = method.rsplit("/", 1)[-1] if isinstance(method, str) else ""
    fields = SHAPES.get(name, SHAPES["Echo"])
    shaped = st.fixed_dictionaries(
        {}, optional={k: weighted((v, 5), (JSON_VALUES, 1)) for k, v in fields.items()}
    )
    return weighted((shaped, 4), (JSON_VALUES, 1))


# Tick streams until cancelled when its count is 0, so it only gets messages that end soon.
TICKS: Final = st.fixed_dictionaries(
    {"count": st.integers(1, 3)}, optional={"intervalMs": st.integers(0, 5), "prefix": TEXTS}
)
SAFE_KEYS: Final = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)
SAFE_METADATA: Final = st.dictionaries(
    SAFE_KEYS, st.from_regex(r"[ -~]{0,10}", fullmatch=True), max_size=3
)
METADATA: Final = weighted(
    (SAFE_METADATA, 2),
    (st.dictionaries(TEXTS, TEXTS | JSON_VALUES, max_size=3), 1),
    (JSON_VALUES, 1),
)
TIMEOUTS: Final = weighted((st.floats(1e-6, 5.0), 2), (JSON_VALUES, 1))
FLAGS: Final = st.booleans() | JSON_VALUES


@st.composite
def starts(draw: st.DrawFn) -> dict[str, Any]:
    """A start frame as a dict: an id and method, maybe a message, metadata, timeout, end."""
    method = draw(METHODS)
    frame: dict[str, Any] = {"id": draw(IDS), "method": method}
    if method == ECHO + "Tick":
        frame["message"] = draw(TICKS)
    elif draw(st.sampled_from([True, True, True, False])):
        frame["message"] = draw(messages_for(method))
    for key, values in (("metadata", METADATA), ("timeout", TIMEOUTS), ("end", FLAGS)):
        if draw(st.sampled_from([False, False, False, True])):
            frame[key] = draw(values)
    return frame


@dataclass(frozen=True)
class FollowUp:
    """A message, end or cancel frame, for an earlier start (``ref``) or for a random id."""

    ref: int | None
    id: Any
    members: dict[str, Any]


FOLLOW_UPS: Final = st.builds(
    FollowUp,
    ref=weighted((st.integers(0, 20), 3), (st.none(), 1)),
    id=IDS,
    members=st.fixed_dictionaries(
        {},
        optional={
            "message": messages_for(ECHO + "Chat"),
            "end": FLAGS,
            "cancel": FLAGS,
            "metadata": METADATA,
        },
    ),
)


def repeated_inside(call_id: Any) -> str:
    """A start frame whose message repeats a name: that call's INVALID_ARGUMENT."""
    return f'{{"id": {json.dumps(call_id)}, "method": "{ECHO}Echo", "message": {{"a": 1, "a": 2}}}}'


START_ACTIONS: Final = starts().map(lambda frame: ("start", frame))
FOLLOW_ACTIONS: Final = FOLLOW_UPS.map(lambda follow: ("follow", follow))
ACTIONS: Final = weighted(
    (START_ACTIONS, 6),
    (FOLLOW_ACTIONS, 4),
    (st.text(max_size=30).map(lambda text: ("text", text)), 1),
    (JSON_VALUES.map(lambda value: ("text", json.dumps(value))), 1),
    (IDS.map(lambda call_id: ("text", repeated_inside(call_id))), 1),
    (IDS.map(lambda call_id: ("text", f'{{"id": {json.dumps(call_id)}, "id": 1}}')), 1),
    (st.binary(max_size=20).map(lambda data: ("binary", data)), 1),
)
ENDINGS: Final = st.sampled_from([None] * 8 + ["too big", "not UTF-8"])


# --- frames.parse alone ------------------------------------------------------------------------


def usable_id(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64
    )


def check_frame(frame: frames.Frame) -> None:
    assert usable_id(frame.id)
    assert frame.method is None or isinstance(frame.method, str)
    assert isinstance(frame.end, bool) and isinstance(frame.cancel, bool)


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary().map(lambda data: data.decode("utf-8", "replace")))
def test_parse_any_text_is_a_frame_or_a_frame_error(text: str) -> None:
    try:
        frame = frames.parse(text)
    except FrameError as exc:
        assert exc.code == 3 and exc.message
    else:
        check_frame(frame)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES | starts() | st.builds(lambda f: {"id": f.id, **f.members}, FOLLOW_UPS))
def test_parse_reads_what_the_frame_says(value: Any) -> None:
    """A JSON object with a usable id and a string method (or none) is read member by member."""
    text = json.dumps(value)
    readable = (
        isinstance(value, dict)
        and usable_id(value.get("id"))
        and (value.get("method") is None or isinstance(value["method"], str))
    )
    if not readable:
        with pytest.raises(FrameError):
            frames.parse(text)
        return
    frame = frames.parse(text)
    check_frame(frame)
    assert frame.id == value["id"] and frame.method == value.get("method")
    assert frame.has_message == ("message" in value)
    assert (frame.end, frame.cancel) == (value.get("end") is True, value.get("cancel") is True)
    assert frame.problem is None
    if not _has_huge_int(value):  # orjson reads integers past 64 bits as floats
        assert (frame.message, frame.metadata) == (value.get("message"), value.get("metadata"))


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    return isinstance(value, int) and not -(2**63) <= value < 2**64


@settings(max_examples=200, deadline=None)
@given(starts(), st.text(min_size=1, max_size=8), st.booleans())
def test_a_repeated_name_is_the_frames_error_or_its_calls_problem(
    start: dict[str, Any], name: str, inside: bool
) -> None:
    """Repeated in the frame's own members: an error frame. Inside a value: the call's problem."""
    start.update(id="call", method=ECHO + "Echo")
    key = json.dumps(name)
    if inside:
        text = json.dumps(start)[:-1] + f', "extra": {{{key}: 1, {key}: 2}}}}'
        frame = frames.parse(text)
        assert frame.problem is not None and "duplicate key" in frame.problem
        assert (frame.id, frame.method) == ("call", start["method"])
    else:
        text = json.dumps(start)[:-1] + f", {key}: 1, {key}: 2}}"
        with pytest.raises(FrameError) as refused:
            frames.parse(text)
        assert "duplicate key" in refused.value.message


# --- random scripts against the example services ------------------------------------------------


@pytest.fixture
async def bridge(start_bridge, users_server: int, echo_server: int) -> Bridge:
    """One bridge for all of a test's examples, its frame limit small so 'too big' is cheap."""
    limits = {"ws_max_frame": f"{MAX_FRAME}B"}
    return await start_bridge(demo_config(users_server, echo_server, limits=limits))


class Script:
    """What a script of frames must get back, worked out as it is sent."""

    def __init__(self) -> None:
        self.started: list[Any] = []  # ids of start frames, each used once
        self.errors = 0  # frames that must get an error frame
        self.maybe = 0  # frames for a started call that may have ended (then an error frame)

    def text(self, text: str) -> bool:
        """Account for a text frame; False when it would start an id a second time."""
        try:
            frame = frames.parse(text)
        except FrameError:
            self.errors += 1
            return True
        if frame.method is not None:
            if frame.id in self.started:
                return False  # "already open" or a second status: not what this test counts
            self.started.append(frame.id)
        elif frame.id in self.started:
            self.maybe += 1
        elif frame.has_message or not (frame.cancel or frame.end):
            self.errors += 1  # no open call; a bare cancel or end for no call is ignored
        return True

    def fresh(self, start: dict[str, Any]) -> dict[str, Any]:
        """The start frame, its id made unique when it is one already started (hypothesis
        draws "" and 0 often); starting an open id again is test_ws.py's case."""
        if start["id"] in self.started and not isinstance(start["id"], bool):
            return {**start, "id": f"{start['id']}#{len(self.started)}"}
        return start

    def follow_up_text(self, follow: FollowUp) -> str:
        call_id = follow.id
        if follow.ref is not None and self.started:
            call_id = self.started[follow.ref % len(self.started)]
        return json.dumps({"id": call_id, **follow.members})


def escaped(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """What reaches the loop's exception handler from now on."""
    seen: list[Any] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    return seen


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("bridge", "aiohttp")
    ]


async def send_script(ws: WsClient, script: Script, actions: list[tuple[str, Any]]) -> None:
    for kind, value in actions:
        if kind == "binary":
            script.errors += 1
            await ws.ws.send_bytes(value)
            continue
        text = value
        if kind == "start":
            text = json.dumps(script.fresh(value))
        elif kind == "follow":
            text = script.follow_up_text(value)
        started = len(script.started)
        if script.text(text):
            if len(script.started) > started:
                ws.starts[script.started[-1]] += 1
            await ws.send(text)


async def end_script(ws: WsClient, script: Script) -> None:
    """Cancel every call, collect each one's single status, then count the error frames."""
    await asyncio.sleep(0.02)  # time for the quick calls to end on their own first
    for call_id in script.started:
        await ws.send({"id": call_id, "cancel": True})
    for call_id in script.started:
        ended = status(await ws.until_status(call_id))
        assert isinstance(ended["code"], int) and 0 <= ended["code"] <= 16, ended
        assert isinstance(ended["message"], str) and isinstance(ended["details"], list)
    assert status(await ws.call(ALIVE, "Echo", {"message": "alive"})) == OK
    await asyncio.sleep(0.02)  # a stray frame would arrive by now
    errors = [ws.errors.get_nowait() for _ in range(ws.errors.qsize())]
    assert all(e["error"]["code"] == 3 and e["error"]["message"] for e in errors), errors
    assert script.errors <= len(errors) <= script.errors + script.maybe, errors
    assert not ws.ended.is_set()  # the socket stayed open
    assert max(Counter(ws.statuses).values(), default=0) <= 1


async def break_protocol(ws: WsClient, ending: str) -> None:
    """A frame the WebSocket protocol itself refuses: the socket closes with its code."""
    if ending == "too big":
        await ws.send("x" * (MAX_FRAME + 1))
        assert await ws.closed() == 1009
    else:
        await ws.ws.send_frame(b'{"id": "\xff"}', WSMsgType.TEXT)
        assert await ws.closed() == 1007


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(ACTIONS, min_size=1, max_size=12), ending=ENDINGS)
async def test_random_frames_never_escape_and_every_call_ends_once(
    bridge: Bridge, caplog: pytest.LogCaptureFixture, actions: list[tuple[str, Any]], ending: str
) -> None:
    caplog.clear()
    caplog.set_level(logging.ERROR)
    loop = asyncio.get_running_loop()
    seen = escaped(loop)
    try:
        async with connect(bridge.url) as ws:
            script = Script()
            await send_script(ws, script, actions)
            if ending is None:
                await end_script(ws, script)
            else:
                await break_protocol(ws, ending)
        if ending is not None:
            async with connect(bridge.url) as again:
                assert status(await again.call(1, "Echo", {"message": "after"})) == OK
    finally:
        loop.set_exception_handler(None)
    assert seen == [] and logged_errors(caplog) == []
