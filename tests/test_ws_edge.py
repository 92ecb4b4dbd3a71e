"""GET /ws at the byte level (issue 9): close codes a client receives instead of a TCP reset,
RFC 6455's client-mask rule, and sockets lost mid-stream. Frames are written by hand on raw
sockets, where aiohttp's client would mask them or refuse to send them."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import pytest

from bridge.ws import wire
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
