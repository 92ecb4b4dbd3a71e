"""Streaming methods over plain HTTP: NDJSON and SSE out, NDJSON (or a JSON array) in."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import Bridge

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def ndjson(*items: Any) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def parse_ndjson(text: str) -> list[Any]:
    assert text.endswith("\n"), f"NDJSON must end with a newline: {text!r}"
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """Server-Sent Events as (event type, parsed data) pairs; the type defaults to "message"."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((event, json.loads("\n".join(data))))
    return events


async def get_text(bridge: Bridge, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with bridge.request(method, path, **kwargs) as resp:
        return resp.status, await resp.text(), resp.headers


# --- server streaming: NDJSON --------------------------------------------------------------


async def test_tick_as_ndjson(demo):
    status, text, headers = await get_text(demo, "GET", "/v1/ticks?count=3&prefix=t")
    assert status == 200, text
    assert headers["Content-Type"].startswith(NDJSON)
    assert headers["X-Request-Id"]
    lines = parse_ndjson(text)
    assert [line["result"]["seq"] for line in lines] == ["1", "2", "3"]  # int64 as strings
    assert [line["result"]["text"] for line in lines] == ["t1", "t2", "t3"]
    assert all(set(line) == {"result"} for line in lines)


async def test_ndjson_lines_are_written_as_they_arrive(demo):
    start = time.monotonic()
    async with demo.request("GET", "/v1/ticks?count=3&interval_ms=400") as resp:
        assert resp.status == 200
        first = json.loads(await resp.content.readline())
        first_at = time.monotonic() - start
        rest = parse_ndjson((await resp.read()).decode())
        end_at = time.monotonic() - start
    assert first["result"]["seq"] == "1"
    assert [line["result"]["seq"] for line in rest] == ["2", "3"]
    # The stream takes ~800 ms; the first line must not wait for the end of it.
    assert end_at >= 0.7, end_at
    assert first_at < 0.35, f"first line after {first_at:.3f}s, stream ended at {end_at:.3f}s"
    assert end_at - first_at >= 0.6


async def test_stream_initial_metadata_is_a_response_header(demo):
    status, text, headers = await get_text(demo, "GET", "/v1/ticks?count=1")
    assert status == 200, text
    assert headers["Grpc-Metadata-x-tick-stream"] == "started"


async def test_ndjson_error_after_first_message_is_the_last_line(demo):
    status, text, _ = await get_text(demo, "GET", "/v1/ticks?count=5&fail_after=2")
    assert status == 200  # the status line went out with the first message
    lines = parse_ndjson(text)
    assert [line["result"]["seq"] for line in lines[:-1]] == ["1", "2"]
    error = lines[-1]
    assert set(error) == {"error"}
    assert error["error"]["code"] == 14
    assert error["error"]["message"] == "tick source failed"
    assert "details" in error["error"]


async def test_error_before_first_message_is_an_http_error(demo):
    status, body, headers = await demo.json("GET", "/v1/ticks?count=-1")
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert body["code"] == 3
    assert "count" in body["message"]


async def test_error_before_first_message_is_an_http_error_for_sse_too(demo):
    status, body, headers = await demo.json(
        "GET", "/v1/ticks?interval_ms=-5", headers={"Accept": SSE}
    )
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert body["code"] == 3


async def test_bad_query_parameter_on_stream_is_400(demo):
    status, body, _ = await demo.json("GET", "/v1/ticks?count=abc")
    assert status == 400
    assert body["code"] == 3


# --- server streaming: Server-Sent Events --------------------------------------------------


async def test_tick_as_sse(demo):
    status, text, headers = await get_text(
        demo, "GET", "/v1/ticks?count=3", headers={"Accept": SSE}
    )
    assert status == 200, text
    assert headers["Content-Type"].startswith(SSE)
    assert headers["Grpc-Metadata-x-tick-stream"] == "started"
    events = parse_sse(text)
    assert [event for event, _ in events] == ["message"] * 3
    assert [data["seq"] for _, data in events] == ["1", "2", "3"]
    assert all(line.startswith(("data: ", "event: ", ":")) for line in text.splitlines() if line)


async def test_sse_events_are_written_as_they_arrive(demo):
    start = time.monotonic()
    async with demo.request(
        "GET", "/v1/ticks?count=2&interval_ms=500", headers={"Accept": SSE}
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        first_at = time.monotonic() - start
        await resp.read()
        end_at = time.monotonic() - start
    assert first.startswith(b"data: ")
    assert first_at < 0.35 and end_at - first_at >= 0.4, (first_at, end_at)


async def test_sse_error_after_first_message_is_an_error_event(demo):
    status, text, _ = await get_text(
        demo, "GET", "/v1/ticks?count=5&fail_after=1", headers={"Accept": SSE}
    )
    assert status == 200
    events = parse_sse(text)
    assert events[0] == ("message", events[0][1]) and events[0][1]["seq"] == "1"
    event, data = events[-1]
    assert event == "error"
    assert data["code"] == 14
    assert data["message"] == "tick source failed"
    assert len(events) == 2


async def test_accept_with_several_types_picks_sse(demo):
    status, text, headers = await get_text(
        demo, "GET", "/v1/ticks?count=1", headers={"Accept": "text/event-stream, */*;q=0.1"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith(SSE)
    assert parse_sse(text)[0][1]["seq"] == "1"


# --- client streaming ----------------------------------------------------------------------


async def test_sum_with_ndjson_body(demo):
    body = ndjson({"value": "40"}, {"value": 1}, {"value": 1})
    status, reply, headers = await demo.json(
        "POST", "/v1/sum", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 200, reply
    assert headers["Content-Type"].startswith("application/json")
    assert reply == {"total": "42", "count": 3}


async def test_sum_with_json_array_body(demo):
    status, reply, _ = await demo.json("POST", "/v1/sum", json=[{"value": 5}, {"value": "-2"}])
    assert status == 200, reply
    assert reply == {"total": "3", "count": 2}


async def test_sum_with_empty_body(demo):
    status, reply, _ = await demo.json(
        "POST", "/v1/sum", data=b"", headers={"Content-Type": NDJSON}
    )
    assert status == 200, reply
    assert reply == {"total": "0", "count": 0}


async def test_sum_ndjson_tolerates_blank_lines_and_crlf(demo):
    body = b'{"value": 1}\r\n\r\n{"value": 2}\r\n'
    status, reply, _ = await demo.json(
        "POST", "/v1/sum", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 200, reply
    assert reply == {"total": "3", "count": 2}


async def test_sum_with_a_malformed_line_is_400(demo):
    body = b'{"value": 1}\n{"value": \n'
    status, reply, _ = await demo.json(
        "POST", "/v1/sum", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 400, reply
    assert reply["code"] == 3


async def test_sum_with_an_array_of_non_messages_is_400(demo):
    status, reply, _ = await demo.json("POST", "/v1/sum", json=[{"value": 1}, 2])
    assert status == 400, reply
    assert reply["code"] == 3


async def test_sum_with_an_unknown_field_is_400_naming_it(demo):
    body = ndjson({"value": 1}, {"valu": 2})
    status, reply, _ = await demo.json(
        "POST", "/v1/sum", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 400, reply
    assert reply["code"] == 3
    assert "valu" in reply["message"]


async def test_sum_backend_error_is_mapped(demo):
    big = str(2**62)
    body = ndjson({"value": big}, {"value": big})
    status, reply, _ = await demo.json(
        "POST", "/v1/sum", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 400, reply
    assert reply["code"] == 11  # OUT_OF_RANGE


# --- bidirectional streaming ---------------------------------------------------------------


async def test_chat_ndjson_in_ndjson_out(demo):
    body = ndjson({"user": "ann", "text": "hi"}, {"user": "bob", "text": "yo"})
    status, text, headers = await get_text(
        demo, "POST", "/v1/chat", data=body, headers={"Content-Type": NDJSON}
    )
    assert status == 200, text
    assert headers["Content-Type"].startswith(NDJSON)
    replies = [line["result"] for line in parse_ndjson(text)]
    assert replies == [
        {"user": "echo", "text": "ann: hi", "seq": "1"},
        {"user": "echo", "text": "bob: yo", "seq": "2"},
    ]


async def test_chat_as_sse(demo):
    body = ndjson({"user": "ann", "text": "hi"})
    status, text, _ = await get_text(
        demo, "POST", "/v1/chat", data=body, headers={"Content-Type": NDJSON, "Accept": SSE}
    )
    assert status == 200, text
    assert parse_sse(text) == [("message", {"user": "echo", "text": "ann: hi", "seq": "1"})]


async def test_chat_with_no_messages_is_an_empty_stream(demo):
    status, text, headers = await get_text(
        demo, "POST", "/v1/chat", data=b"", headers={"Content-Type": NDJSON}
    )
    assert status == 200, text
    assert headers["Content-Type"].startswith(NDJSON)
    assert text == ""


# --- the default route ---------------------------------------------------------------------


async def test_default_route_server_streaming(demo):
    status, text, headers = await get_text(
        demo, "POST", "/demo.echo.v1.EchoService/Tick", json={"count": 2, "prefix": "d"}
    )
    assert status == 200, text
    assert headers["Content-Type"].startswith(NDJSON)
    assert [line["result"]["text"] for line in parse_ndjson(text)] == ["d1", "d2"]


async def test_default_route_client_streaming(demo):
    status, reply, _ = await demo.json(
        "POST", "/demo.echo.v1.EchoService/Sum", data=ndjson({"value": 2}, {"value": 3}),
        headers={"Content-Type": NDJSON},
    )  # fmt: skip
    assert status == 200, reply
    assert reply == {"total": "5", "count": 2}


async def test_default_route_bidi_streaming(demo):
    status, text, _ = await get_text(
        demo, "POST", "/demo.echo.v1.EchoService/Chat", json=[{"user": "u", "text": "t"}]
    )
    assert status == 200, text
    assert parse_ndjson(text) == [{"result": {"user": "echo", "text": "u: t", "seq": "1"}}]
