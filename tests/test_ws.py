"""GET /ws (SPEC section 4): every call kind, metadata, statuses, cancellation, bad frames,
and calls that stay independent of each other."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from typing import Final

import pytest

from tests.ws_client import Backend, connect, messages, seqs, status, wait_for

OK: Final = {"code": 0, "message": "", "details": []}
BAD_REQUEST_DETAIL: Final = {
    "@type": "type.googleapis.com/google.rpc.BadRequest",
    "fieldViolations": [{"field": "code", "description": "requested"}],
}
STUCK: Final = {"count": 2, "intervalMs": 100000}  # one event at once, the next in 100 s


@pytest.fixture
async def backend(echo_server: int) -> AsyncIterator[Backend]:
    backend = Backend(echo_server)
    yield backend
    await backend.channel.close()


# --- every call kind -------------------------------------------------------------------------


async def test_subprotocol_is_selected(demo):
    async with connect(demo.url) as ws:
        assert ws.ws.protocol == "bridge.v1"


async def test_unary_call_with_string_and_integer_ids(demo):
    async with connect(demo.url) as ws:
        for call_id in ("a", 7):
            frames = await ws.call(call_id, "Echo", {"message": f"hi {call_id}", "number": "42"})
            assert {f["id"] for f in frames} == {call_id}
            [reply] = messages(frames)
            assert (reply["message"], reply["request"]["number"]) == (f"hi {call_id}", "42")
            assert status(frames) == OK


async def test_messages_are_rendered_like_rest_replies_with_nulls(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Echo", {"message": "hi", "inner": {"note": "n"}})
        [reply] = messages(frames)
        assert reply["request"]["inner"] == {"note": "n", "level": 0, "child": None}
        assert reply["request"]["at"] is None and "textChoice" not in reply["request"]


async def test_server_stream_sends_headers_then_messages_in_order(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Tick", {"count": 5, "intervalMs": 10, "prefix": "p"})
    assert frames[0]["headers"]["x-tick-stream"] == "started"
    assert seqs(frames) == [1, 2, 3, 4, 5]
    assert [m["text"] for m in messages(frames)] == ["p1", "p2", "p3", "p4", "p5"]
    assert status(frames) == OK


async def test_unary_headers_and_trailers(demo):
    request = {"responseHeaders": {"x-first": "h"}, "responseTrailers": {"x-last": "t"}}
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Echo", request)
    assert frames[0]["headers"]["x-first"] == "h"
    assert len(messages(frames)) == 1
    assert status(frames) == OK
    assert frames[-1]["trailers"]["x-last"] == "t"


async def test_backend_error_is_the_status_with_its_details(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Fail", {"code": 9, "message": "why not", "withDetails": True})
    assert messages(frames) == []
    assert status(frames) == {"code": 9, "message": "why not", "details": [BAD_REQUEST_DETAIL]}


async def test_server_stream_failing_midway(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Tick", {"count": 10, "failAfter": 2})
    assert seqs(frames) == [1, 2]
    assert status(frames) == {"code": 14, "message": "tick source failed", "details": []}


async def test_client_stream_first_message_in_start_frame(demo):
    async with connect(demo.url) as ws:
        await ws.start("s", "Sum", {"value": "1"})
        for value in (2, 3, 4):
            await ws.send({"id": "s", "message": {"value": str(value)}})
        await ws.send({"id": "s", "end": True})
        frames = await ws.until_status("s")
        assert messages(frames) == [{"total": "10", "count": 4}]
        assert status(frames) == OK

        await ws.start("e", "Sum")  # no message at all
        await ws.send({"id": "e", "end": True})
        assert messages(await ws.until_status("e")) == [{"total": "0", "count": 0}]


async def test_bidi_chat_answers_each_message_before_the_end(demo):
    async with connect(demo.url) as ws:
        await ws.start("c", "Chat")
        for n, text in enumerate(("hi", "there"), start=1):
            await ws.send({"id": "c", "message": {"user": "ann", "text": text}})
            reply = await ws.next("c")
            while "headers" in reply:
                reply = await ws.next("c")
            assert reply["message"] == {"user": "echo", "text": f"ann: {text}", "seq": str(n)}
        await ws.send({"id": "c", "end": True})
        assert status(await ws.until_status("c")) == OK


# --- metadata --------------------------------------------------------------------------------


async def test_start_frame_metadata_reaches_the_backend(demo):
    trace = base64.b64encode(b"\0\1").decode()
    metadata = {"x-custom": "v", "X-Mixed-Case": "m", "trace-bin": trace}
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Echo", {}, metadata=metadata)
    assert status(frames) == OK
    seen = messages(frames)[0]["metadata"]
    assert seen["x-custom"] == "v"
    assert seen["x-mixed-case"] == "m"
    assert seen["trace-bin"] == "AAE="
    assert seen["x-request-id"]  # the bridge's own, one per call


async def test_reserved_metadata_cannot_be_spoofed(demo):
    spoofed = {
        "x-forwarded-for": "6.6.6.6",
        "grpc-timeout": "1m",
        "x-request-id": "mine",
        "x-bridge-subject": "admin",
    }
    async with connect(demo.url, headers={"X-Forwarded-For": "6.6.6.6"}) as ws:
        frames = await ws.call(1, "Echo", {}, metadata=spoofed)
    assert status(frames) == OK  # a 1 ms grpc-timeout would have failed the call
    reply = messages(frames)[0]
    seen = reply["metadata"]
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the real peer, nothing else
    assert seen["x-request-id"] == "mine"  # a client's request id is kept (SPEC section 8)
    assert "x-bridge-subject" not in seen
    assert "6.6.6.6" not in str(seen)
    assert reply["deadlineRemaining"] > 5  # the upstream's 10 s default, not the client's 1 ms


# --- deadlines and cancellation ----------------------------------------------------------------


async def test_timeout_ends_a_unary_call_and_cancels_the_backend(demo, backend):
    async with connect(demo.url) as ws:
        start = time.monotonic()
        frames = await ws.call(1, "Echo", {"sleepMs": 5000}, timeout=0.3)
        assert time.monotonic() - start < 1.5
        assert status(frames)["code"] == 4  # DEADLINE_EXCEEDED
        await backend.sees_cancelled("Echo", 1)


async def test_timeout_ends_a_server_stream_and_cancels_the_backend(demo, backend):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Tick", {"intervalMs": 50}, timeout=0.5)
        assert 3 <= len(seqs(frames)) <= 11
        assert status(frames)["code"] == 4
        await backend.sees_cancelled("Tick", 1)


async def test_timeout_reaches_the_backend(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "Echo", {}, timeout=2)
    assert 1.0 < messages(frames)[0]["deadlineRemaining"] <= 2.0 * 1.01 + 0.002


async def test_cancel_frame_cancels_the_backend(demo, backend):
    async with connect(demo.url) as ws:
        await ws.start(1, "Tick", {"intervalMs": 50})
        assert "headers" in await ws.next(1)
        assert "message" in await ws.next(1)
        await ws.send({"id": 1, "cancel": True})
        frames = await ws.until_status(1)
        assert status(frames)["code"] == 1  # CANCELLED
        await backend.sees_cancelled("Tick", 1)


async def test_cancel_right_after_start_still_ends_with_one_status(demo, backend):
    """The cancel (or a bad follow-up) may arrive before the call's task has run at all."""
    async with connect(demo.url) as ws:
        for n in range(3):
            await ws.start("quick", "Tick", STUCK)
            await ws.send({"id": "quick", "cancel": True})
            assert status(await ws.until_status("quick"))["code"] == 1, n  # and the id is free
            await ws.start("bad", "Sum", {"value": "1"})
            await ws.send({"id": "bad", "message": {"value": "many"}})
            assert status(await ws.until_status("bad"))["code"] == 3, n
        await backend.idle()


async def test_closing_the_socket_cancels_every_call(demo, backend):
    async with connect(demo.url) as ws:
        await start_one_of_each(ws, backend)
        await ws.ws.close()
        await backend_ends_one_of_each(backend)


async def test_dropped_connection_cancels_every_call(demo, backend):
    """The TCP connection ends without a close frame."""
    async with connect(demo.url) as ws:
        await start_one_of_each(ws, backend)
        sock = ws.ws.get_extra_info("socket")
        sock.shutdown(socket.SHUT_RDWR)
        await backend_ends_one_of_each(backend)


async def start_one_of_each(ws, backend: Backend) -> None:
    """A stuck call of every kind, all running at the backend."""
    await ws.start("tick", "Tick", STUCK)
    await ws.start("echo", "Echo", {"sleepMs": 60000})
    await ws.start("sum", "Sum", {"value": "1"})
    await ws.start("chat", "Chat", {"user": "a", "text": "b"})

    async def all_started() -> bool:
        return (await backend.stats()).active == 4

    await wait_for(all_started, 2.0, "four calls running at the backend")


async def backend_ends_one_of_each(backend: Backend) -> None:
    """Within a second of the socket going: the busy calls cancelled, the streams ended."""
    start = time.monotonic()
    await backend.sees_cancelled("Tick", 1)
    await backend.sees_cancelled("Echo", 1)
    await backend.idle(within=max(1.0 - (time.monotonic() - start), 0.05))


async def test_exactly_one_status_per_call(demo):
    async with connect(demo.url) as ws:
        await ws.call("ok", "Echo", {})
        await ws.call("fail", "Fail", {"code": 5})
        await ws.call("deadline", "Echo", {"sleepMs": 2000}, timeout=0.1)
        await ws.call("unknown", "demo.echo.v1.EchoService/Nope", {})
        await ws.call("bad", "Echo", {"number": "x"})
        await ws.start("cancelled", "Tick", STUCK)
        await ws.next("cancelled")
        await ws.send({"id": "cancelled", "cancel": True})
        await ws.until_status("cancelled")
        # A cancel or end crossing a call's status is ignored: no second status, no error.
        await ws.send({"id": "ok", "cancel": True})
        await ws.send({"id": "fail", "end": True})
        await ws.call("after", "Echo", {})
        await asyncio.sleep(0.3)  # time for any stray frame to arrive
        assert ws.errors.empty()
        ids = ("ok", "fail", "deadline", "unknown", "bad", "cancelled")
        assert {i: ws.statuses[i] for i in ids} == dict.fromkeys(ids, 1)
        assert [ws.pending(i) for i in ids] == [0] * len(ids)


# --- bad frames: a clear error, and the socket stays open ---------------------------------------


@pytest.mark.parametrize(
    "text, says",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"method": "demo.echo.v1.EchoService/Echo", "message": {}}', "id"),
        ('{"id": true, "method": "demo.echo.v1.EchoService/Echo", "message": {}}', "id"),
        ('{"id": {"a": 1}, "message": {}}', "id"),
        ('{"id": 1, "method": 5}', "method"),
        ('{"id": "nobody", "message": {}}', "no open call"),
    ],
)
async def test_frame_without_a_call_gets_an_error_frame(demo, text, says):
    async with connect(demo.url) as ws:
        await ws.send(text)
        error = await ws.error()
        assert error["code"] == 3
        assert says in error["message"]
        assert status(await ws.call(1, "Echo", {})) == OK  # the socket is still open


async def test_binary_frame_gets_an_error_frame(demo):
    async with connect(demo.url) as ws:
        await ws.ws.send_bytes(b'{"id": 1}')
        assert (await ws.error())["code"] == 3
        assert status(await ws.call(1, "Echo", {})) == OK


async def test_unknown_method_is_unimplemented(demo):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, "demo.echo.v1.EchoService/Nope", {})
        assert status(frames)["code"] == 12
        assert "Nope" in status(frames)["message"]
        assert status(await ws.call(2, "Echo", {})) == OK


async def test_reusing_an_open_id_leaves_the_open_call_alone(demo, backend):
    async with connect(demo.url) as ws:
        await ws.start("x", "Tick", {"intervalMs": 20, "count": 10})
        await ws.start("x", "Echo", {})
        error = await ws.error()
        assert error["code"] == 3 and "already open" in error["message"]
        frames = await ws.until_status("x")
        assert seqs(frames) == list(range(1, 11))  # the first call, untouched
        assert status(frames) == OK
        assert (await backend.stats()).started == 1  # the second start never reached it
        assert status(await ws.call("x", "Echo", {})) == OK  # a finished id may be reused


@pytest.mark.parametrize(
    "method, message",
    [
        ("Echo", {"number": "not a number"}),
        ("Echo", {"noSuchField": 1}),
        ("Echo", [1, 2]),
        ("Echo", "text"),
        ("Tick", {"count": {}}),
        ("Echo", None),  # unary and server streaming need a message
        ("Tick", None),
    ],
)
async def test_wrong_message_shape_is_the_calls_status(demo, backend, method, message):
    async with connect(demo.url) as ws:
        frames = await ws.call(1, method, message)
        assert messages(frames) == []
        assert status(frames)["code"] == 3
        assert status(frames)["message"]
        assert status(await ws.call(2, "Echo", {})) == OK
    assert (await backend.stats()).started == 1


async def test_wrong_follow_up_message_ends_that_call_only(demo, backend):
    async with connect(demo.url) as ws:
        await ws.start("sum", "Sum", {"value": "1"})
        await ws.start("chat", "Chat")
        await ws.send({"id": "sum", "message": {"value": "many"}})
        frames = await ws.until_status("sum")
        assert status(frames)["code"] == 3

        async def sum_ended() -> bool:
            return (await backend.stats()).active == 1  # only the chat

        await wait_for(sum_ended, 1.0, "the backend to end the Sum call")
        await ws.send({"id": "chat", "message": {"user": "a", "text": "still here"}})
        await ws.send({"id": "chat", "end": True})
        frames = await ws.until_status("chat")
        assert [m["text"] for m in messages(frames)] == ["a: still here"]
        assert status(frames) == OK


async def test_follow_up_that_the_call_cannot_take_gets_an_error_frame(demo):
    async with connect(demo.url) as ws:
        await ws.start(1, "Echo", {"sleepMs": 300})
        await ws.send({"id": 1, "message": {}})  # a unary call takes one message only
        assert "no more messages" in (await ws.error())["message"]
        await ws.send({"id": 1, "what": True})
        assert "expected message, end or cancel" in (await ws.error())["message"]
        assert status(await ws.until_status(1)) == OK


# --- independence ------------------------------------------------------------------------------


async def test_fifty_concurrent_streams_on_one_socket(demo):
    async with connect(demo.url) as ws:
        for i in range(50):
            await ws.start(i, "Tick", {"count": 20, "intervalMs": 5, "prefix": f"s{i}-"})
        results = await asyncio.gather(*(ws.until_status(i, timeout=10) for i in range(50)))
    for i, frames in enumerate(results):
        assert status(frames) == OK, (i, frames[-1])
        assert seqs(frames) == list(range(1, 21)), i
        assert [m["text"] for m in messages(frames)] == [f"s{i}-{n}" for n in range(1, 21)]


async def test_stuck_stream_does_not_delay_other_calls(demo, backend):
    async with connect(demo.url) as ws, connect(demo.url) as other:
        await ws.start("stuck", "Tick", STUCK)
        assert "headers" in await ws.next("stuck")
        assert "message" in await ws.next("stuck")
        await ws.start("slow", "Echo", {"sleepMs": 3000})

        start = time.monotonic()
        same = await ws.call("fast", "Echo", {"message": "same socket"})
        elapsed_same = time.monotonic() - start
        start = time.monotonic()
        across = await other.call("fast", "Echo", {"message": "other socket"})
        elapsed_other = time.monotonic() - start
        assert messages(same)[0]["message"] == "same socket"
        assert messages(across)[0]["message"] == "other socket"
        assert elapsed_same < 0.5 and elapsed_other < 0.5, (elapsed_same, elapsed_other)
        assert ws.pending("stuck") == 0 and ws.statuses["slow"] == 0  # both still running

        await ws.send({"id": "stuck", "cancel": True})
        assert status(await ws.until_status("stuck"))["code"] == 1
        await backend.sees_cancelled("Tick", 1)


async def test_client_stream_whole_in_the_start_frame(demo):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(demo.url + "/ws", protocols=("bridge.v1",)) as ws:
            await ws.send_json(
                {
                    "id": "s",
                    "method": "demo.echo.v1.EchoService/Sum",
                    "message": {"value": "5"},
                    "end": True,
                }
            )
            frames = []
            while not frames or "status" not in frames[-1]:
                frames.append(await ws.receive_json(timeout=5))
    assert [f["message"] for f in frames if "message" in f] == [{"total": "5", "count": 1}]
    assert frames[-1]["status"]["code"] == 0
