"""Mapping fidelity at the edge (issue 9): the 401 challenge, one metadata rule, duplicate JSON
names and ASCII-only grpc-timeout, each over real HTTP (raw sockets where a client library would
normalise the bytes) and WebSocket, each followed by a call that shows the bridge still serves.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from bridge.errors import DEFAULT_CHALLENGE, BridgeError, error_response
from tests.conftest import Bridge
from tests.ws_client import connect, status

ECHO: Final = "/v1/echo"


async def still_serving(bridge: Bridge) -> None:
    got, body, _ = await bridge.json("POST", ECHO, json={"message": "still here"})
    assert (got, body.get("message")) == (200, "still here")


async def started_calls(bridge: Bridge) -> int:
    """Echo's ``started`` counter, to prove a refused request never reached the backend."""
    got, body, _ = await bridge.json("GET", "/v1/stats")
    assert got == 200, body
    return int(body["started"])


async def raw_exchange(bridge: Bridge, head: bytes, body: bytes = b"") -> tuple[int, bytes, Any]:
    """Send a request head written byte for byte (plus a body); (status, head, JSON body)."""
    url = urlsplit(bridge.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        host = f"Host: {url.netloc}\r\nConnection: close\r\n".encode()
        length = f"Content-Length: {len(body)}\r\n\r\n".encode()
        writer.write(head + b"\r\n" + host + length + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    response_head, _, payload = answer.partition(b"\r\n\r\n")
    return int(response_head.split()[1]), response_head, json.loads(payload)


def assert_status_400(body: Any, *names: str) -> None:
    assert body.keys() == {"code", "message", "details"} and body["code"] == 3, body
    for name in names:
        assert name in body["message"], body["message"]


# --- every 401 carries WWW-Authenticate ----------------------------------------------------


async def test_backend_unauthenticated_is_401_with_a_challenge(demo: Bridge) -> None:
    got, body, headers = await demo.json("GET", "/v1/fail/16")
    assert (got, body["code"]) == (401, 16)
    assert headers.getall("WWW-Authenticate") == [DEFAULT_CHALLENGE]
    got, _, headers = await demo.json("GET", "/v1/fail/7")  # a 403 needs none
    assert got == 403 and "WWW-Authenticate" not in headers
    await still_serving(demo)


@pytest.mark.parametrize(
    "error, expected",
    [
        pytest.param(BridgeError(16, "who?"), [DEFAULT_CHALLENGE], id="default"),
        pytest.param(
            BridgeError(16, "token", headers={"WWW-Authenticate": 'Bearer realm="bridge-admin"'}),
            ['Bearer realm="bridge-admin"'],
            id="own-challenge-kept",
        ),
        pytest.param(
            BridgeError(16, "key", headers={"www-authenticate": "ApiKey header=x-api-key"}),
            ["ApiKey header=x-api-key"],
            id="own-challenge-any-case",
        ),
        pytest.param(BridgeError(3, "bad"), [], id="not-a-401"),
        pytest.param(BridgeError(7, "no", status=401), [DEFAULT_CHALLENGE], id="explicit-401"),
    ],
)
def test_the_renderer_adds_a_challenge_to_every_401(error: BridgeError, expected: list) -> None:
    response = error_response(error, {"X-Request-Id": "r"})
    assert response.headers.getall("WWW-Authenticate", []) == expected


# --- metadata: reserved keys dropped, anything else unforwardable is a 400 -----------------

BAD_METADATA_HEADERS: Final = [
    pytest.param(b"Grpc-Metadata-a!b: x", "a!b", id="key-with-bang"),
    pytest.param(b"Grpc-Metadata-: x", "Grpc-Metadata-", id="empty-key"),
    pytest.param(b"Grpc-Metadata-a~b: x", "a~b", id="key-with-tilde"),
    pytest.param(b"Grpc-Metadata-x-name: Zo\xc3\xab", "x-name", id="non-ascii-value"),
    pytest.param(b"Grpc-Metadata-x-name: a\tb", "x-name", id="tab-in-value"),
    pytest.param(b"Grpc-Metadata-x-blob-bin: !!", "x-blob-bin", id="bad-base64"),
]


@pytest.mark.parametrize("header, named", BAD_METADATA_HEADERS)
async def test_unforwardable_metadata_header_is_400_naming_it(
    demo: Bridge, header: bytes, named: str
) -> None:
    before = await started_calls(demo)
    head = b"POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\n" + header
    got, _, body = await raw_exchange(demo, head, b'{"message": "hi"}')
    assert got == 400, body
    assert_status_400(body, named)
    assert await started_calls(demo) == before, "the backend was called for a bad request"
    await still_serving(demo)


async def test_reserved_metadata_is_dropped_silently(demo: Bridge) -> None:
    headers = {
        "Grpc-Metadata-grpc-timeout": "1n",
        "Grpc-Metadata-x-bridge-subject": "admin",
        "Grpc-Metadata-x-request-id": "spoofed",
        "Grpc-Metadata-connection": "close",
        "Grpc-Metadata-x-kept": "yes",
    }
    got, body, _ = await demo.json("POST", ECHO, json={"message": "hi"}, headers=headers)
    assert got == 200, body
    metadata = body["metadata"]
    assert metadata["x-kept"] == "yes"
    assert "x-bridge-subject" not in metadata and "connection" not in metadata
    assert metadata["x-request-id"] != "spoofed"


@pytest.mark.parametrize(
    "metadata, named",
    [
        pytest.param({"bad key": "v"}, "bad key", id="key-with-space"),
        pytest.param({"": "v"}, "''", id="empty-key"),
        pytest.param({"x-name": "Zoë"}, "x-name", id="non-ascii-value"),
        pytest.param({"x-blob-bin": "!!"}, "x-blob-bin", id="bad-base64"),
        pytest.param({"x-n": 5}, "x-n", id="not-a-string"),
    ],
)
async def test_unforwardable_websocket_metadata_ends_the_call_with_3(
    demo: Bridge, metadata: dict[str, Any], named: str
) -> None:
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Echo", {"message": "hi"}, metadata=metadata)
        end = status(frames)
        assert end["code"] == 3 and named in end["message"], end
        # Reserved keys are dropped, not refused; the socket still serves.
        frames = await ws.call(2, "Echo", {"message": "ok"}, metadata={"grpc-x": "1", "x-k": "v"})
        assert status(frames)["code"] == 0
        assert frames[-2]["message"]["metadata"]["x-k"] == "v"
        assert "grpc-x" not in frames[-2]["message"]["metadata"]


# --- duplicate JSON names are a 400 --------------------------------------------------------

DUPLICATES: Final = [
    pytest.param(ECHO, b'{"message": "a", "message": "b"}', '"message"', id="top-level"),
    pytest.param(ECHO, b'{"inner": {"note": "a", "note": "b"}}', '"note"', id="nested"),
    pytest.param(ECHO, b'{"extra": {"k": 1, "k": 2}}', '"k"', id="in-a-struct"),
    pytest.param(ECHO, b'{"named": {"x": {}, "x": {}}}', '"x"', id="map-keys"),
    pytest.param(ECHO, b'{"numbers": [], "numbers": [1]}', '"numbers"', id="repeated"),
    pytest.param(
        "/v1/users", b'{"displayName": "a", "displayName": "b"}', '"displayName"', id="body-field"
    ),
    pytest.param("/v1/sum", b'{"value": 1}\n{"value": 2, "value": 3}\n', '"value"', id="ndjson"),
]


@pytest.mark.parametrize("path, data, named", DUPLICATES)
async def test_duplicate_json_keys_are_400_naming_the_key(
    demo: Bridge, path: str, data: bytes, named: str
) -> None:
    before = await started_calls(demo)
    headers = {"Content-Type": "application/json"}
    got, body, _ = await demo.json("POST", path, data=data, headers=headers)
    assert got == 400, body
    assert_status_400(body, f"duplicate key {named}")
    assert await started_calls(demo) == before
    await still_serving(demo)


async def test_duplicate_keys_in_a_websocket_frame_are_an_error_frame(demo: Bridge) -> None:
    async with connect(demo.url) as ws:
        await ws.send('{"id": 1, "id": 2, "method": "demo.echo.v1.EchoService/Echo"}')
        error = await ws.error()
        assert error["code"] == 3 and 'duplicate key "id"' in error["message"], error
        await ws.send('{"id": 3, "method": "demo.echo.v1.EchoService/Echo", '
                      '"message": {"message": "a", "message": "b"}}')  # fmt: skip
        ws.starts[3] += 1  # a start frame, sent as text to repeat a name
        ended = status(await ws.until_status(3))  # inside the message: that call's status
        assert ended["code"] == 3 and 'duplicate key "message"' in ended["message"], ended
        frames = await ws.call(4, "Echo", {"message": "fine"})
        assert status(frames)["code"] == 0


# --- grpc-timeout: ASCII digits only -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\u0661S".encode(), id="arabic-indic-digit"),
        pytest.param("\uff11S".encode(), id="fullwidth-digit"),
        pytest.param("\u00a01S".encode(), id="no-break-space"),
        pytest.param(b"1s", id="lowercase-unit"),
        pytest.param(b"123456789S", id="nine-digits"),
    ],
)
async def test_grpc_timeout_with_non_ascii_digits_is_400(demo: Bridge, value: bytes) -> None:
    head = b"POST /v1/echo HTTP/1.1\r\nContent-Type: application/json\r\ngrpc-timeout: " + value
    started = time.monotonic()
    got, _, body = await raw_exchange(demo, head, b'{"message": "hi", "sleepMs": 10}')
    assert got == 400, body
    assert_status_400(body, "grpc-timeout")
    assert time.monotonic() - started < 2
    got, _, body = await raw_exchange(
        demo, b"POST /v1/echo HTTP/1.1\r\ngrpc-timeout: 2S", b'{"message": "hi"}'
    )
    assert got == 200 and 1.0 < body["deadlineRemaining"] <= 2.1, body  # gRPC rounds up


# --- every path reaches the bridge's router --------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        pytest.param(b"/%0A", 404, id="newline-alone"),
        pytest.param(b"/v1/nothing/a%0Ab", 404, id="newline-in-an-unknown-path"),
        pytest.param(b"/v1/echo/a%0Ab", 200, id="newline-in-a-path-value"),
        pytest.param(b"/v1/echo/%0D%0A", 200, id="crlf-in-a-path-value"),
    ],
)
async def test_paths_with_newlines_are_routed_by_the_bridge(
    demo: Bridge, path: bytes, expected: int
) -> None:
    """aiohttp's catch-all pattern "." skipped these: its own text/plain 404 answered."""
    got, head, body = await raw_exchange(demo, b"GET " + path + b" HTTP/1.1")
    assert got == expected, body
    assert b"application/json" in head
    if expected == 404:
        assert body["code"] == 5 and body["details"] == []
    else:
        assert "\n" in body["message"]
    await still_serving(demo)
