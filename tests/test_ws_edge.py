"""GET /ws at the byte level (issue 9): close codes a client receives instead of a TCP reset,
RFC 6455's client-mask rule, and sockets lost mid-stream. Frames are written by hand on raw
sockets, where aiohttp's client would mask them or refuse to send them."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any, Final

import aiohttp
import pytest

from bridge.ws import wire
from bridge.ws.session import Session
from bridge.ws.wire import MaskGuard
from tests.ws_client import (
    ECHO,
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Backend,
    RawWs,
    WsClient,
    connect,
    raw_connect,
    status,
    text_frame,
    ws_frame,
)

OK: Final = {"code": 0, "message": "", "details": []}
MiB: Final = 1024 * 1024
TOO_BIG: Final = ws_frame(OP_TEXT, b"x" * (2 * MiB))  # over the default ws_max_frame of 1 MiB
SMALL_SEND_BUFFER: Final = 16384  # so the 2 MiB are sent only as fast as the bridge reads them
ECHO_START: Final = {"id": 1, "method": ECHO + "Echo", "message": {"message": "hi"}}


@pytest.fixture
async def backend(echo_server: int) -> AsyncIterator[Backend]:
    backend = Backend(echo_server)
    yield backend
    await backend.channel.close()


async def still_served(url: str) -> None:
    async with connect(url) as ws:
        assert status(await ws.call("after", "Echo", {"message": "still here"})) == OK


# --- a close frame, never a reset ----------------------------------------------------------------


async def test_frame_over_the_limit_is_a_close_1009_every_time(demo):
    """The bridge refuses the frame from its header, then reads the 2 MiB it still gets."""
    for attempt in range(10):
        async with raw_connect(demo.url, send_buffer=SMALL_SEND_BUFFER) as ws:
            await ws.send(TOO_BIG)  # a reset would fail this send (ECONNRESET)
            assert await ws.close_code() == 1009, attempt
            assert await ws.eof(), attempt  # then the bridge's FIN: a clean end of the stream
    await still_served(demo.url)


@pytest.mark.parametrize(
    "bad, code",
    [
        (ws_frame(OP_TEXT, b"\xff\xfe not UTF-8"), 1007),
        (bytes([0xA1, 0x80]) + b"\0\0\0\0", 1002),  # RSV2 set, an empty masked text frame
        (ws_frame(0x3, b"opcode 3 is reserved"), 1002),
        (ws_frame(OP_TEXT, json.dumps(ECHO_START).encode(), masked=False), 1002),
    ],
    ids=["invalid UTF-8", "reserved bit", "reserved opcode", "unmasked"],
)
async def test_protocol_errors_are_a_close_frame_while_the_client_still_sends(demo, bad, code):
    async with raw_connect(demo.url, send_buffer=SMALL_SEND_BUFFER) as ws:
        await ws.send(bad + ws_frame(OP_BINARY, b"y" * (2 * MiB)))
        assert await ws.close_code() == code
        assert await ws.eof()
    await still_served(demo.url)


async def test_a_client_that_keeps_sending_is_dropped_after_the_drain(demo):
    """The drain is bounded: input that never ends is read for LINGER_SECONDS, no longer."""
    async with raw_connect(demo.url) as ws:
        await ws.send(TOO_BIG[:1000])
        assert await ws.close_code() == 1009
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectionError):  # the reset that ends the drain
            while loop.time() - start < wire.LINGER_SECONDS + 3:
                await ws.send(b"z" * 65536)
                await asyncio.sleep(0.01)
        assert wire.LINGER_SECONDS - 0.2 < loop.time() - start < wire.LINGER_SECONDS + 1.5
    await still_served(demo.url)


# --- RFC 6455 section 5.1: a client's frames must be masked --------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [text_frame(ECHO_START, masked=False)],
        [ws_frame(OP_PING, b"unmasked ping", masked=False)],
        [ws_frame(OP_PONG, b"", masked=False)],
        [
            ws_frame(OP_TEXT, b'{"id": 1, "method": "', fin=False),
            ws_frame(OP_CONTINUATION, (ECHO + 'Echo", "message": {}}').encode(), masked=False),
        ],
        [ws_frame(OP_TEXT, b"a" * 70000 + b" ignored", masked=False)],  # 64-bit length field
    ],
    ids=["text", "ping", "pong", "second fragment", "long frame"],
)
async def test_unmasked_client_frame_is_a_close_1002(demo, frames):
    async with raw_connect(demo.url) as ws:
        await ws.send(b"".join(frames))
        assert await ws.close_code() == 1002  # nothing before it: the call was never served
        assert await ws.eof()
    await still_served(demo.url)


async def test_unmasked_frame_sent_with_the_upgrade_request_is_a_close_1002(demo):
    async with raw_connect(demo.url, early=text_frame(ECHO_START, masked=False)) as ws:
        assert await ws.close_code() == 1002
    await still_served(demo.url)


async def test_masked_frames_before_an_unmasked_one_are_served(demo):
    """Frames are checked as they pass: what came before the unmasked frame is served."""
    async with raw_connect(demo.url) as ws:
        await ws.send(text_frame(ECHO_START) + ws_frame(OP_PING, b"masked ping"))
        opcode, data = await ws.frame()
        assert (opcode, data) == (OP_PONG, b"masked ping")
        frames = await until_status(ws)
        assert frames[-1] == {"id": 1, "status": OK}, frames
        await ws.send(text_frame({**ECHO_START, "id": 2}, masked=False))
        assert await ws.close_code() == 1002
    await still_served(demo.url)


async def test_masked_frames_split_anywhere_are_served(demo):
    """Headers cut between reads (here, every few bytes) are put together before they count."""
    start = text_frame(ECHO_START, mask=b"\x80\x81\x82\x83")
    long_text = json.dumps({**ECHO_START, "id": 2, "message": {"message": "z" * 70000}})
    stream = start + ws_frame(OP_PING, b"p") + text_frame(long_text)
    async with raw_connect(demo.url) as ws:
        for at in range(0, 300, 3):
            await ws.send(stream[at : at + 3])
            await asyncio.sleep(0)
        await ws.send(stream[300:])
        assert await ws.frame() == (OP_PONG, b"p")
        frames = (await until_status(ws)) + (await until_status(ws))
        assert [f["status"] for f in frames if "status" in f] == [OK, OK]
        replies = {f["id"]: f["message"]["message"] for f in frames if "message" in f}
        assert replies == {1: "hi", 2: "z" * 70000}


async def until_status(ws: RawWs) -> list[dict[str, Any]]:
    """JSON frames up to the next status frame."""
    frames = [await ws.json()]
    while "status" not in frames[-1]:
        frames.append(await ws.json())
    return frames


# --- repeated JSON names ------------------------------------------------------------------------


START_ECHO: Final = f'{{"id": 1, "method": "{ECHO}Echo", '


@pytest.mark.parametrize(
    "start, key",
    [
        (START_ECHO + '"message": {"message": "a", "message": "b"}}', "message"),
        (START_ECHO + '"message": {"inner": {"note": "a", "note": "b"}}}', "note"),
        (START_ECHO + '"message": {}, "metadata": {"k": "1", "k": "2"}}', "k"),
    ],
    ids=["in the message", "deeper in the message", "in the metadata"],
)
async def test_a_start_frame_repeating_a_name_inside_is_that_calls_invalid_argument(
    demo, backend, start, key
):
    before = (await backend.stats()).started
    async with connect(demo.url) as ws:
        ws.starts[1] += 1
        await ws.send(start)
        ended = status(await ws.until_status(1))
        assert ended["code"] == 3 and f'duplicate key "{key}"' in ended["message"], ended
        assert (await backend.stats()).started == before  # refused before any backend call
        assert status(await ws.call(2, "Echo", {"message": "fine"})) == OK


async def test_a_message_frame_repeating_a_name_ends_its_call_with_invalid_argument(demo, backend):
    async with connect(demo.url) as ws:
        for call_id in ("chat", "other"):
            await ws.start(call_id, "Chat", {"user": "a", "text": "first"})
            assert await chat_reply(ws, call_id) == "a: first"
        await ws.send('{"id": "chat", "message": {"user": "a", "text": "x", "text": "y"}}')
        ended = status(await ws.until_status("chat"))
        assert ended["code"] == 3 and 'duplicate key "text"' in ended["message"], ended
        assert ws.errors.empty()  # no untied error frame: the call's status said it
        await ws.send({"id": "other", "message": {"user": "b", "text": "still open"}})
        assert await chat_reply(ws, "other") == "b: still open"
        await ws.send({"id": "other", "end": True})
        assert status(await ws.until_status("other")) == OK
    await backend.idle()


async def chat_reply(ws: WsClient, call_id: str) -> str:
    """The text of a Chat call's next reply (past its headers frame)."""
    frame = await ws.next(call_id)
    while "headers" in frame:
        frame = await ws.next(call_id)
    return str(frame["message"]["text"])


async def test_a_frame_repeating_its_own_member_is_an_error_frame(demo):
    async with connect(demo.url) as ws:
        await ws.send(f'{{"id": 1, "method": "{ECHO}Echo", "method": "x", "message": {{}}}}')
        error = await ws.error()
        assert error["code"] == 3 and 'duplicate key "method"' in error["message"]
        assert status(await ws.call(2, "Echo", {})) == OK


# --- MaskGuard alone ------------------------------------------------------------------------------


class FakeReader:
    """Stands for aiohttp's WebSocketReader: records the bytes it is fed."""

    def __init__(self) -> None:
        self.fed = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class FakeQueue:
    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def set_exception(self, exc: BaseException) -> None:
        self.exception = exc


GOOD: Final = [
    ws_frame(OP_TEXT, b"short"),
    ws_frame(OP_BINARY, b""),
    ws_frame(OP_TEXT, b"m" * 125),
    ws_frame(OP_TEXT, b"m" * 126),  # 16-bit length
    ws_frame(OP_PING, b"ping"),
    ws_frame(OP_TEXT, b"l" * 65536),  # 64-bit length
    ws_frame(OP_TEXT, b"part", fin=False),
    ws_frame(OP_CONTINUATION, b"rest"),
]
UNMASKED: Final = ws_frame(OP_TEXT, b"bare", masked=False)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[at : at + size] for at in range(0, len(data), size))


@pytest.mark.parametrize(
    "size", [1, 2, 3, 5, 7, 11, 64, 4096, 1 << 20], ids=lambda n: f"reads of {n}"
)
async def test_guard_passes_masked_frames_and_stops_at_the_first_unmasked(size):
    reader, queue = FakeReader(), FakeQueue()
    guard = MaskGuard(reader, queue)
    good = b"".join(GOOD)
    results = [guard.feed_data(chunk) for chunk in chunks(good + UNMASKED + good, size)]
    # Every byte before the unmasked frame and nothing after, but for its first byte when a read
    # ends there: it went on before the second told the mask bit (a byte is no frame).
    assert bytes(reader.fed) in (good, good + UNMASKED[:1])
    assert isinstance(queue.exception, Exception) and queue.exception.code == 1002  # type: ignore[attr-defined]
    refusal = results.index((True, b""))  # the read holding the bad frame's second byte
    assert results[refusal + 1 :] == [(False, b"")] * (len(results) - refusal - 1)  # dropped


@pytest.mark.parametrize("size", [1, 3, 10, 100000], ids=lambda n: f"reads of {n}")
async def test_guard_passes_every_byte_of_masked_frames(size):
    reader, queue = FakeReader(), FakeQueue()
    guard = MaskGuard(reader, queue)
    good = b"".join(GOOD) * 3
    for chunk in chunks(good, size):
        assert guard.feed_data(chunk) == (False, b"")
    assert bytes(reader.fed) == good
    assert queue.exception is None


# --- Session.send alone: a socket that is gone --------------------------------------------------


class GoneSocket:
    """Stands for the aiohttp WebSocket of a connection lost while a frame was being sent."""

    closed = False

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.sent = 0

    async def send_frame(self, frame: bytes, opcode: Any) -> None:
        self.sent += 1
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Connection lost"),  # a send waiting on a full socket (drain)
        aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        ConnectionAbortedError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_send_on_a_lost_socket_is_quiet(error):
    ws = GoneSocket(error)
    session = Session(ws, None, None, max_calls=1, max_metadata=1)  # type: ignore[arg-type]
    await session.send(b'{"id": 1, "message": {}}')
    assert ws.sent == 1


class BrokenCall:
    """Stands for a WsCall whose run() has a bug."""

    id = "broken"
    rid = "r-broken"
    method = SimpleNamespace(full_name="demo.echo.v1.EchoService/Echo")

    async def run(self, first: Any) -> None:
        raise KeyError("a bug")


async def test_a_call_task_that_fails_is_logged_and_still_ends_with_a_status(caplog):
    sent: list[bytes] = []
    session = Session(None, None, None, max_calls=1, max_metadata=1)  # type: ignore[arg-type]

    async def record(frame: bytes) -> None:
        sent.append(frame)

    session.send = record  # type: ignore[method-assign]
    session.calls["broken"] = BrokenCall()  # type: ignore[assignment]
    task = asyncio.create_task(session._run(BrokenCall(), None))  # type: ignore[arg-type]
    await task
    assert task.exception() is None  # nothing left for the loop to report
    assert [json.loads(f)["status"]["code"] for f in sent] == [13]  # INTERNAL, exactly once
    assert "broken" not in session.calls
    [record_] = [r for r in caplog.records if r.name == "bridge.ws"]
    assert record_.levelname == "ERROR" and "KeyError" in (record_.exc_text or "")
    assert "r-broken" in record_.getMessage()  # logged with its request id


# --- a socket lost in the middle of a fast stream ------------------------------------------------


FAST_STREAM: Final = {
    "id": "fast",
    "method": ECHO + "Tick",
    "message": {"count": 1000000, "payloadSize": 16384},
}


def unretrieved(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """Collect what the loop's exception handler is given ("Task exception was never retrieved")."""
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    return seen


async def test_reset_in_the_middle_of_a_fast_stream_leaves_no_exception(demo, backend):
    """The bridge is sending into a full socket when the client's reset arrives."""
    loop = asyncio.get_running_loop()
    seen = unretrieved(loop)
    try:
        for _ in range(3):
            async with raw_connect(demo.url) as ws:
                await ws.send(text_frame(FAST_STREAM))
                for _ in range(20):
                    await ws.frame()
                await asyncio.sleep(0.3)  # not reading: the bridge's send waits for the socket
                ws.reset()
            # The call ended at the backend long before its million ticks: the bridge cancelled
            # it. (Not sees_cancelled: a cancel that finds Tick blocked in a write reaches it as
            # a failed write, which grpc.aio does not report as a cancelled context.)
            await backend.idle()
            assert (await backend.stats()).ticks_sent < FAST_STREAM["message"]["count"]
        gc.collect()  # a task's unretrieved exception is reported when the task is collected
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(None)
    assert seen == []
    await still_served(demo.url)
