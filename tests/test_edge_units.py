"""Unit tests of the connection edge's pieces: the connection table, parse errors, raw answers,
the descriptor budget. The functional tests over raw sockets are in test_edge.py."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    LineTooLong,
    TransferEncodingError,
)

from bridge import edge
from bridge.edge.connections import ConnectionTable
from bridge.edge.protocol import NO_ROOM, TIMED_OUT, parse_error, raw_answer
from bridge.errors import BridgeError


class FakeLoop:
    """The two things the table asks of a loop: the time, and one timer at a time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock and fire the timers that are due, as the event loop would."""
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= self.now]:
            for timer in due:
                self.timers.remove(timer)
                timer.callback()

    @property
    def armed(self) -> list[float]:
        return [t.when for t in self.timers if not t.cancelled]


class FakeTimer:
    def __init__(self, when: float, callback: Any) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Conn:
    """A connection as the table sees it, recording how its wait ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: OrderedDict[Any, float] | None = None
        self.counted = False
        self.ended: str | None = None

    def expire(self) -> None:
        self.ended = "expired"

    def evict(self) -> None:
        self.ended = "evicted"

    def __repr__(self) -> str:
        return self.name


def table(capacity: int = 3) -> tuple[ConnectionTable, FakeLoop]:
    loop = FakeLoop()
    t = ConnectionTable(loop, capacity=capacity, header_timeout=10, idle_timeout=75)  # type: ignore[arg-type]
    return t, loop


def test_new_connections_wait_for_their_head_and_expire_at_header_timeout() -> None:
    t, loop = table()
    a, b = Conn("a"), Conn("b")
    assert t.admit(a)
    loop.advance(4)
    assert t.admit(b)
    assert (t.open, t.busy, list(t.waiting)) == (2, 0, [a, b])
    assert loop.armed == [10]  # one timer, for the first deadline only
    loop.advance(6)
    assert (a.ended, b.ended, list(t.waiting), t.open) == ("expired", None, [b], 1)
    assert loop.armed == [14]
    loop.advance(4)
    assert (b.ended, t.open) == ("expired", 0)
    assert loop.armed == []


def test_a_request_stops_the_clock_and_a_response_starts_the_idle_one() -> None:
    t, loop = table()
    a = Conn("a")
    t.admit(a)
    t.start_request(a)
    assert (a.queue, t.busy) == (None, 1)
    loop.advance(500)  # a long request: no table timeout applies
    assert a.ended is None
    t.rest(a)
    assert list(t.idle) == [a] and t.busy == 0
    loop.advance(74)
    assert a.ended is None
    loop.advance(1)
    assert a.ended == "expired" and t.open == 0


def test_an_idle_connection_that_begins_a_head_gets_header_timeout_from_its_first_byte() -> None:
    t, loop = table()
    a = Conn("a")
    t.admit(a)
    t.start_request(a)
    t.rest(a)  # idle from 0, would expire at 75
    loop.advance(70)
    t.head_started(a)  # waiting from 70: expires at 80, not at 75
    assert list(t.waiting) == [a] and not t.idle
    loop.advance(7)
    assert a.ended is None
    loop.advance(3)
    assert a.ended == "expired"


def test_a_head_started_on_a_new_connection_keeps_its_accept_time() -> None:
    t, loop = table()
    a = Conn("a")
    t.admit(a)
    loop.advance(9)
    t.head_started(a)
    loop.advance(1)
    assert a.ended == "expired"  # header_timeout counts from the accept


@pytest.mark.parametrize(
    "steps, victim",
    [
        pytest.param(["wait a", "wait b", "wait c"], "a", id="oldest-waiting"),
        pytest.param(["wait a", "idle b", "idle c"], "a", id="waiting-older-than-idle"),
        pytest.param(["idle a", "wait b", "wait c"], "a", id="idle-older-than-waiting"),
        pytest.param(["busy a", "wait b", "idle c"], "b", id="busy-is-skipped"),
        pytest.param(["busy a", "busy b", "idle c"], "c", id="only-idle-left"),
    ],
)
def test_at_capacity_the_longest_waiting_connection_makes_room(
    steps: list[str], victim: str
) -> None:
    t, loop = table(capacity=3)
    conns = {}
    for step in steps:
        state, name = step.split()
        conns[name] = conn = Conn(name)
        assert t.admit(conn)
        if state != "wait":
            t.start_request(conn)
        if state == "idle":
            t.rest(conn)
        loop.advance(1)
    newcomer = Conn("new")
    assert t.admit(newcomer)
    assert [c.name for c in conns.values() if c.ended] == [victim]
    assert conns[victim].ended == "evicted" and not conns[victim].counted
    assert t.open == 3 and newcomer.queue is t.waiting


def test_when_every_connection_is_busy_a_new_one_is_not_admitted() -> None:
    t, _ = table(capacity=2)
    for name in "ab":
        conn = Conn(name)
        t.admit(conn)
        t.start_request(conn)
    newcomer = Conn("new")
    assert not t.admit(newcomer)
    assert (newcomer.counted, t.open, t.busy) == (False, 2, 2)


def test_a_closed_connection_frees_its_place_once() -> None:
    t, _ = table(capacity=1)
    a = Conn("a")
    t.admit(a)
    t.leave(a)
    t.leave(a)  # connection_lost after an eviction or expiry: already uncounted
    assert t.open == 0 and not t.waiting
    assert t.admit(Conn("b"))


def test_an_evicted_connection_is_not_rested_afterwards() -> None:
    t, _ = table(capacity=1)
    a = Conn("a")
    t.admit(a)
    t.admit(Conn("b"))  # a is evicted
    t.rest(a)  # a response that was already on its way
    assert list(t.idle) == [] and t.open == 1


def test_one_timer_follows_the_earliest_deadline() -> None:
    t, loop = table()
    a, b = Conn("a"), Conn("b")
    t.admit(a)
    t.start_request(a)
    t.rest(a)  # idle: due at 75; the timer stays at 10 rather than be moved per event
    assert loop.armed == [10]
    loop.advance(10)  # nothing was due: the timer moves on to the idle deadline
    assert (a.ended, loop.armed) == (None, [75])
    t.admit(b)  # waiting: due at 20, sooner, so the timer moves
    assert loop.armed == [20]
    t.close()
    assert loop.armed == []


# --- parse errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, status, words",
    [
        pytest.param(LineTooLong(b"aaaa...", 16384), 400, ["over 16384 bytes"], id="line-too-long"),
        pytest.param(
            BadHttpMethod(error="Invalid method encountered:\n\n  b'G<T / HTTP/1.1'\n     ^"),
            400, ["Invalid method encountered", "b'G<T / HTTP/1.1'"], id="c-parser-message",
        ),
        pytest.param(
            BadStatusLine(error="Bad status line:\n  Invalid HTTP version:\n\n  b'GET / HTTP/1.2'"
                          "\n  ^"),
            505, ["Invalid HTTP version", "HTTP/1.0 and HTTP/1.1"], id="bad-version-is-505",
        ),
        pytest.param(BadHttpMessage("Too many headers received"), 400, ["Too many headers"],
                     id="plain-message"),
        pytest.param(TransferEncodingError("Not enough data to satisfy transfer length header."),
                     400, ["Not enough data"], id="payload-error"),
        pytest.param(None, 400, ["unreadable request"], id="no-exception"),
    ],
)  # fmt: skip
def test_parse_errors_name_the_problem(exc: Any, status: int, words: list[str]) -> None:
    error = parse_error(exc)
    assert error.status == status
    for word in words:
        assert word in error.message, error.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Invalid header value char:\n\n  b'X: a\\x01b'\n      ^", id="escaped-repr"),
        pytest.param("Bad header:\n\n  b'" + "\u00e9\u0001" * 3 + "'\n ^", id="non-ascii"),
        pytest.param("Invalid header:\n\n  b'" + "x" * 5000 + "'\n ^", id="long-excerpt"),
    ],
)
def test_parse_errors_quote_little_and_only_printable_ascii(text: str) -> None:
    message = parse_error(BadHttpMessage(text)).message
    assert message.isascii() and message.isprintable(), message
    assert len(message) < 150, message


def test_a_parse_error_inside_a_body_says_so() -> None:
    error = parse_error(LineTooLong(b"t...", 16384), "malformed request body")
    assert error.message.startswith("malformed request body: ") and error.code == 3


# --- raw answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [TIMED_OUT, NO_ROOM], ids=["408", "503"])
def test_a_raw_answer_is_a_complete_http_response_with_a_status_body(error: BridgeError) -> None:
    head, _, body = raw_answer(error).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0].startswith(f"HTTP/1.1 {error.status} ")
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close" and headers["Content-Type"] == "application/json"
    assert "Date" in headers
    assert json.loads(body) == error.to_status()
    for name, value in error.headers.items():
        assert headers[name] == value


# --- the descriptor budget ---------------------------------------------------------------


@pytest.mark.parametrize(
    "soft, wanted, expected, warned",
    [
        pytest.param(20_000, 10_000, 10_000, False, id="fits"),
        pytest.param(1024, 10_000, 1024 - edge.RESERVED_FDS, True, id="lowered"),
        pytest.param(1024, 100, 100, False, id="small-limit-fits"),
        pytest.param(100, 10_000, 1, True, id="almost-nothing-left"),
    ],
)
def test_max_connections_is_lowered_to_fit_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    soft: int,
    wanted: int,
    expected: int,
    warned: bool,
) -> None:
    monkeypatch.setattr(edge.resource, "getrlimit", lambda _: (soft, soft))
    with caplog.at_level(logging.WARNING, "bridge"):
        assert edge.connection_capacity(wanted) == expected
    assert bool(caplog.records) == warned
    if warned:
        assert f"open-file limit of {soft}" in caplog.records[0].getMessage()
