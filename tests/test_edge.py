"""The HTTP connection edge over raw sockets (issue 9, SPEC section 6 `limits`).

Timeouts cut off clients that send their head or body too slowly, or nothing; at
``limits.max_connections`` waiting connections make room; declared bodies over the limit, unmet
expectations, HTTP versions other than 1.0/1.1 and everything aiohttp's parser refuses get a
Status JSON answer before any handler runs. Each test ends by showing that the bridge still
serves an ordinary call.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from aiohttp import http_parser

from tests.conftest import ROOT, Bridge, StartBridge, demo_config
from tests.raw_http import RawConnection, exchange, request

# Tiny timeouts so the tests run fast; distinct, so each test sees which one applied.
FAST: Final = {
    "header_timeout": "300ms",
    "idle_timeout": "600ms",
    "body_timeout": "400ms",
    "max_body": "1KiB",
    "admin_max_body": "4KiB",
}
TOKEN: Final = "edge-token"
HEALTHZ: Final = request("GET", "/healthz")
# aiohttp's C parser (llhttp) unless AIOHTTP_NO_EXTENSIONS is set; a few answers differ.
C_PARSER: Final = http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy


@pytest.fixture(autouse=True)
async def _raw_connections_closed() -> AsyncIterator[None]:
    yield
    await RawConnection.close_all()


@pytest.fixture
async def edge(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    config = demo_config(users_server, echo_server, limits=FAST, admin={"token": TOKEN})
    return await start_bridge(config)


async def still_serving(bridge: Bridge) -> None:
    """An ordinary REST call and a raw request on a fresh connection are both answered."""
    got, body, _ = await bridge.json("POST", "/v1/echo", json={"message": "still here"})
    assert (got, body.get("message")) == (200, "still here")
    assert (await exchange(bridge.url, HEALTHZ)).status == 200


# --- timeouts ----------------------------------------------------------------------------


async def test_a_silent_connection_is_closed_after_header_timeout(edge: Bridge) -> None:
    connection = await RawConnection.open(edge.url)
    took = await connection.closed_within(3)
    assert 0.25 <= took < 1.5, took  # header_timeout is 300ms (idle_timeout would be 600ms)
    await still_serving(edge)


async def test_a_head_sent_a_byte_at_a_time_is_answered_408(edge: Bridge) -> None:
    connection = await RawConnection.open(edge.url)
    trickle = asyncio.create_task(connection.trickle(HEALTHZ, every=0.05))  # 2 s for the head
    began = time.monotonic()
    await still_serving(edge)  # the trickle holds nobody else up
    assert time.monotonic() - began < 0.3
    answer = await connection.answer(3)
    answer.assert_status(408, 4, "limits.header_timeout")
    assert answer.headers["connection"] == "close"
    await connection.closed_within(1)
    await trickle
    await still_serving(edge)


async def test_a_trickled_body_is_answered_408_after_body_timeout(edge: Bridge) -> None:
    """A total, not a gap between reads: a byte every 50 ms still ends at 400 ms."""
    connection = await RawConnection.open(edge.url)
    await connection.send(request("POST", "/v1/echo", "Content-Length: 900"))
    began = time.monotonic()
    trickle = asyncio.create_task(connection.trickle(b"x" * 900, every=0.05))
    await still_serving(edge)
    answer = await connection.answer(3)
    assert 0.35 <= time.monotonic() - began < 1.5
    answer.assert_status(408, 4, "limits.body_timeout")
    assert answer.headers["connection"] == "close"
    await connection.closed_within(4)
    trickle.cancel()
    await still_serving(edge)


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(edge: Bridge) -> None:
    connection = await RawConnection.open(edge.url)
    for _ in range(3):  # kept alive while it keeps asking in time
        await connection.send(HEALTHZ)
        assert (await connection.answer()).status == 200
        await asyncio.sleep(0.3)
    took = await connection.closed_within(3)
    assert 0.2 <= took < 1.2, took  # 600 ms after the last answer, 300 ms of which were slept
    await still_serving(edge)


async def test_a_late_head_on_a_kept_alive_connection_gets_header_timeout(edge: Bridge) -> None:
    """The head begun at 400 ms of idling is not cut at 600 ms: it has 300 ms from its first
    byte, and, being begun, is answered 408 rather than dropped."""
    connection = await RawConnection.open(edge.url)
    await connection.send(HEALTHZ)
    assert (await connection.answer()).status == 200
    await asyncio.sleep(0.4)
    began = time.monotonic()
    await connection.send(b"GET /heal")
    answer = await connection.answer(3)
    assert time.monotonic() - began >= 0.25
    answer.assert_status(408, 4, "limits.header_timeout")
    await still_serving(edge)


# --- bodies declared too large, expectations -------------------------------------------


@pytest.mark.parametrize(
    "path, headers, key",
    [
        pytest.param("/v1/echo", (), "limits.max_body", id="rest"),
        pytest.param("/v1/echo", ("Expect: 100-continue",), "limits.max_body", id="rest-expect"),
        pytest.param("/healthz", (), "limits.max_body", id="healthz"),
        pytest.param("/admin/protos", (f"Authorization: Bearer {TOKEN}",),
                     "limits.admin_max_body", id="admin"),
        pytest.param("/admin/protos", ("Expect: 100-continue",), "limits.admin_max_body",
                     id="admin-expect"),
    ],
)  # fmt: skip
async def test_a_declared_body_over_the_limit_is_413_at_once(
    edge: Bridge, path: str, headers: tuple[str, ...], key: str
) -> None:
    connection = await RawConnection.open(edge.url)
    await connection.send(request("POST", path, "Content-Length: 100000000", *headers))
    answer = await connection.answer(1)  # at once: nothing of the body was sent
    answer.assert_status(413, 8, key, "100000000")
    assert answer.interim == []  # no "100 Continue" for a body that will be refused
    assert answer.headers["connection"] == "close"
    await connection.closed_within(4)  # the unread body cannot be skipped
    await still_serving(edge)


async def test_the_admin_limit_applies_to_admin_routes(edge: Bridge) -> None:
    """2000 bytes are over max_body (1KiB) but within admin_max_body (4KiB)."""
    body = b"{" + b" " * 1998 + b"!"
    connection = await RawConnection.open(edge.url)
    await connection.send(request(
        "POST", "/admin/protos", f"Authorization: Bearer {TOKEN}", "Expect: 100-continue",
        f"Content-Length: {len(body)}",
    ))  # fmt: skip
    assert await connection.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await connection.send(body)
    (await connection.answer()).assert_status(400, 3, "not valid JSON")
    await still_serving(edge)


async def test_an_expectation_other_than_100_continue_is_417(edge: Bridge) -> None:
    answer = await exchange(edge.url, request("POST", "/v1/echo", "Expect: 200-ok", body=b"{}"))
    answer.assert_status(417, 9, "200-ok", "100-continue")
    await still_serving(edge)


async def test_100_continue_is_sent_for_a_body_within_the_limit(edge: Bridge) -> None:
    connection = await RawConnection.open(edge.url)
    body = b'{"message": "after the 100"}'
    head = request("POST", "/v1/echo", "Expect: 100-continue", f"Content-Length: {len(body)}")
    await connection.send(head)
    assert await connection.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await connection.send(body)
    answer = await connection.answer()
    assert (answer.status, answer.json()["message"]) == (200, "after the 100")
    await still_serving(edge)


# --- chunked bodies the parser refuses -----------------------------------------------------

CHUNKED: Final = request("POST", "/v1/echo", "Transfer-Encoding: chunked")
BIG_TRAILER: Final = b"X-Trailer: " + b"t" * 20_000 + b"\r\n\r\n"  # the field limit is 16 KiB


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([CHUNKED + b"2\r\n{}\r\n0\r\n" + BIG_TRAILER], id="trailer-with-head"),
        pytest.param([CHUNKED + b"2\r\n{}\r\n", b"0\r\n" + BIG_TRAILER], id="trailer-later"),
        pytest.param([CHUNKED + b"2\r\n{}\r\n0\r\n", BIG_TRAILER], id="trailer-alone"),
        pytest.param([CHUNKED + b"2\r\n{}\r\n", b"zz\r\n"], id="bad-chunk-size-later"),
        pytest.param([CHUNKED, b"2\r\n{}\r\n", b"3\r\nabcdef\r\n"], id="chunk-longer-than-said"),
    ],
)
async def test_a_chunked_body_the_parser_refuses_is_400_not_a_hang(
    edge: Bridge, parts: list[bytes]
) -> None:
    connection = await RawConnection.open(edge.url)
    for part in parts:
        await connection.send(part)
        await asyncio.sleep(0.05)  # the handler is waiting for the body by now
    answer = await connection.answer(1)  # well before body_timeout's 408
    answer.assert_status(400, 3)
    assert answer.headers["connection"] == "close"
    assert await connection.closed_within(1) < 0.5
    await still_serving(edge)


# --- what aiohttp's parser refuses -------------------------------------------------------

MALFORMED: Final = [
    pytest.param(b"G<T / HTTP/1.1\r\nHost: b\r\n\r\n", "method", id="bad-method"),
    pytest.param(b"GET / HTTP/1.1\r\nHo st: b\r\n\r\n", "header", id="space-in-header-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: b\r\nX: a\x01\xffb\r\n\r\n", "header",
                 id="control-byte"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: b\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", "16384",
                 id="header-too-long"),
    pytest.param(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: b\r\n\r\n", "16384",
                 id="request-line-too-long"),
    pytest.param(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
                 + b"Host: b\r\n\r\n", "headers", id="too-many-headers"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", "Host", id="no-host"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: abc\r\n\r\n", "Content-Length",
                 id="bad-content-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "",
                 id="length-and-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 "chunk", id="bad-chunk-size"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "", id="tls-on-http-port",
                 marks=pytest.mark.skipif(not C_PARSER, reason="the Python parser awaits a line")),
]  # fmt: skip


@pytest.mark.parametrize("data, word", MALFORMED)
async def test_a_malformed_request_is_400_status_json_and_one_debug_line(
    edge: Bridge, caplog: pytest.LogCaptureFixture, data: bytes, word: str
) -> None:
    caplog.set_level(logging.DEBUG)
    connection = await RawConnection.open(edge.url)
    await connection.send(data)
    answer = await connection.answer()
    body = answer.assert_status(400, 3, word)
    assert body["message"].isascii() and body["message"].isprintable(), body
    assert len(body["message"]) < 200, body  # a short excerpt, not the bytes sent
    await connection.closed_within(1)
    await still_serving(edge)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    lines = [r for r in caplog.records if r.getMessage().startswith("malformed request from")]
    assert len(lines) == 1, [r.getMessage() for r in lines]


# --- HTTP versions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"GET {path} HTTP/2.0", id="http-2.0"),
        pytest.param(b"GET {path} HTTP/0.9", id="http-0.9"),
        pytest.param(
            b"GET {path}",
            id="no-version",
            marks=pytest.mark.skipif(
                not C_PARSER,
                reason="HTTP/0.9 to llhttp, a malformed line (400) to the Python parser",
            ),
        ),
        pytest.param(b"GET {path} HTTP/1.2", id="http-1.2"),
        pytest.param(b"GET {path} HTTP/3.0", id="http-3.0"),
    ],
)
@pytest.mark.parametrize("path", ["/healthz", "/v1/users/1", "/ws", "/admin/routes"])
async def test_a_version_other_than_1_0_and_1_1_is_505(
    edge: Bridge, line: bytes, path: str
) -> None:
    connection = await RawConnection.open(edge.url)
    await connection.send(line.replace(b"{path}", path.encode()) + b"\r\nHost: b\r\n\r\n")
    answer = await connection.answer()
    assert answer.status_line.startswith("HTTP/1."), answer.status_line
    answer.assert_status(505, 12, "HTTP/1.0 and HTTP/1.1")
    await connection.closed_within(1)
    assert (await exchange(edge.url, request("GET", path, version="1.0"))).status != 505
    await still_serving(edge)


# --- the connection limit ----------------------------------------------------------------

LIMIT: Final = 20
TICKS: Final = request("GET", "/v1/ticks?count=0&interval_ms=200")  # a stream that never ends


@pytest.fixture
async def crowded(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    config = demo_config(users_server, echo_server, limits={"max_connections": LIMIT})
    return await start_bridge(config)


async def opened(url: str, count: int) -> list[RawConnection]:
    connections = [await RawConnection.open(url) for _ in range(count)]
    await asyncio.sleep(0.2)  # accepted and counted by the bridge
    return connections


async def test_silent_connections_make_room_for_a_client_with_a_request(crowded: Bridge) -> None:
    silent = await opened(crowded.url, 3 * LIMIT)  # a flood three times the limit
    assert (await exchange(crowded.url, HEALTHZ)).status == 200
    assert await silent[0].closed_within(1) < 0.5  # the longest waiting made room
    assert await silent[-1].is_open()  # the newest still waits for its head
    await still_serving(crowded)


async def test_idle_keep_alive_connections_make_room_too(crowded: Bridge) -> None:
    idle = await opened(crowded.url, LIMIT)
    for connection in idle:
        await connection.send(HEALTHZ)
        assert (await connection.answer()).status == 200
    assert (await exchange(crowded.url, HEALTHZ)).status == 200
    assert await idle[0].closed_within(1) < 0.5
    await still_serving(crowded)


async def test_when_every_connection_is_busy_a_new_one_is_refused_503(crowded: Bridge) -> None:
    """Streams and WebSockets are busy, never closed to make room; the refusal is immediate."""
    busy = await opened(crowded.url, LIMIT)
    for i, connection in enumerate(busy):
        if i % 2:
            await connection.send(TICKS)
        else:
            await connection.send(request(
                "GET", "/ws", "Upgrade: websocket", "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
            ))  # fmt: skip
        assert (await connection.answer()).status in (101, 200)
    refused = await RawConnection.open(crowded.url)
    await refused.send(HEALTHZ)
    answer = await refused.answer(1)
    answer.assert_status(503, 14, "limits.max_connections")
    assert answer.headers["retry-after"] == "1"
    await refused.closed_within(1)
    assert all([await c.is_open() for c in busy])
    for connection in busy:
        connection.close()
    await _until_served(crowded)


async def _until_served(bridge: Bridge, within: float = 3.0) -> None:
    """Once the busy connections are gone, new clients are served again."""
    deadline = time.monotonic() + within
    while (answer := await exchange(bridge.url, HEALTHZ)).status != 200:
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)
    await still_serving(bridge)


async def test_a_flood_past_the_open_file_limit_leaves_room_for_real_clients(
    tmp_path: Path,
) -> None:
    """`bridge serve` with 600 descriptors: the default max_connections (10000) cannot fit, so
    the bridge lowers it and says so, and 800 silent sockets still leave room for a request
    (before, accept() failed with EMFILE and every new client waited)."""
    config = tmp_path / "bridge.yaml"
    config.write_text("{}\n")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600)),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await _until_listening(url, proc)
        flood = [await RawConnection.open(url) for _ in range(800)]
        answer = await exchange(url, HEALTHZ)
        assert answer.status == 200, answer
        assert not await flood[0].is_open(0.5)  # the first silent ones made room
        assert await flood[-1].is_open()
    finally:
        await RawConnection.close_all()
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "limits.max_connections is 10000, but the open-file limit of 600" in err, err
    assert "Traceback" not in err and "Too many open files" not in err, err


async def _until_listening(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if (await exchange(url, HEALTHZ, wait=1)).status == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "bridge did not start"
        await asyncio.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
