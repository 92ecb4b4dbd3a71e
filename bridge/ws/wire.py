"""The WebSocket connection below the frames: RFC 6455's client-mask rule and a close that drains.

Both hook into aiohttp 3.14's server WebSocket where it has no option for them (checked against
aiohttp 3.14.5's ``web_ws.py``, ``web_protocol.py`` and ``_websocket/reader_py.py``):

- aiohttp's frame reader reads the mask bit but serves unmasked frames. ``MaskGuard`` stands
  between the connection and that reader and looks only at each frame's header as the bytes
  pass, skipping payloads by counting, so it copies nothing and costs a few operations a frame.
- aiohttp closes the transport right after its close frame. When the client is still sending
  (a frame over the size limit is refused from its header, before its payload arrives), the
  kernel answers the unread input with a TCP reset and the client loses the close frame. So
  ``ClientSocket`` half-closes instead and reads and discards input until the client closes
  its side or ``LINGER_SECONDS`` pass, as HTTP servers do on a lingering close.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from aiohttp import WebSocketError, WSCloseCode, web

# How long a closed socket keeps reading (and dropping) what the client still sends, waiting
# for the client to close its side; then the connection is dropped.
LINGER_SECONDS: Final = 2.0

_UNMASKED: Final = -1  # _frame_span: the frame's mask bit is clear
_SHORT: Final = 0  # _frame_span: the read ends inside the header's length field
_LONGEST_HEAD: Final = 10  # first two bytes and a 64-bit length: all a span needs
_NOTHING: Final = (False, b"")
_REFUSED: Final = (True, b"")


def _frame_span(data: bytes, at: int) -> int:
    """Bytes from ``at`` to the end of the client frame whose header starts there.

    _UNMASKED when its mask bit is clear, _SHORT when ``data`` ends before its length is known.
    """
    left = len(data) - at
    if left < 2:
        return _SHORT
    second = data[at + 1]
    if second < 0x80:
        return _UNMASKED
    size = second & 0x7F
    if size < 126:
        return 6 + size  # 2 header bytes, 4 of mask key, the payload
    if size == 126:
        return _SHORT if left < 4 else 8 + (data[at + 2] << 8 | data[at + 3])
    return _SHORT if left < 10 else 14 + int.from_bytes(data[at + 2 : at + 10], "big")


class MaskGuard:
    """A connection's frame reader that refuses unmasked client frames with close code 1002.

    It passes each read to aiohttp's reader whole; once the socket is closing it drops them.
    """

    __slots__ = ("_head", "_queue", "_reader", "_skip", "discarding", "gone")

    def __init__(self, reader: Any, queue: Any) -> None:
        self._reader = reader  # aiohttp's WebSocketReader, which parses and queues frames
        self._queue = queue  # its WebSocketDataQueue, which the handler's receive() reads
        self._skip = 0  # bytes of the current frame (mask key and payload) not yet seen
        self._head = b""  # the start of a header split across reads (under 10 bytes)
        self.discarding = False
        self.gone = asyncio.get_running_loop().create_future()  # the connection was lost

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """Called by aiohttp's connection with each read; (True, _) makes it stop reading."""
        if self.discarding:
            return _NOTHING
        bad = self._unmasked_at(data)
        if bad < 0:
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        self.discarding = True
        if bad > 0:  # the frames before the bad one are served; rare, so the copy is fine
            eof, tail = self._reader.feed_data(data[:bad])
            if eof:
                return eof, tail
        self._queue.set_exception(
            WebSocketError(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked")
        )
        return _REFUSED

    def feed_eof(self) -> None:
        """Called by aiohttp's connection when it is lost."""
        self._reader.feed_eof()
        if not self.gone.done():
            self.gone.set_result(None)

    def _unmasked_at(self, data: bytes) -> int:
        """Where in ``data`` the first unmasked frame starts (0 if it began earlier); else -1."""
        end = len(data)
        pos = self._skip
        if self._head:
            head = self._head + data[:_LONGEST_HEAD]
            span = _frame_span(head, 0)
            if span == _SHORT:
                self._head = head  # all of data, still short of a length
                return -1
            if span == _UNMASKED:
                return 0
            pos = span - len(self._head)
            self._head = b""
        while pos < end:
            span = _frame_span(data, pos)
            if span <= 0:
                if span == _UNMASKED:
                    return pos
                self._head = data[pos:]
                self._skip = 0
                return -1
            pos += span
        self._skip = pos - end
        return -1


class ClientSocket(web.WebSocketResponse):
    """aiohttp's server WebSocket with the client-mask rule and a close that drains the input."""

    _guard: MaskGuard | None = None
    _linger: asyncio.TimerHandle | None = None

    def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
        # Bytes sent right behind the upgrade request (before the 101) are handed to the reader
        # by set_parser() inside super()._post_start: hold them back for the guard to see.
        connection = request.protocol
        early, connection._message_tail = connection._message_tail, b""
        super()._post_start(request, protocol, writer)
        self._guard = MaskGuard(connection._payload_parser, self._reader)
        connection._payload_parser = self._guard
        if early and self._guard.feed_data(early)[0]:
            connection.close()

    def _close_transport(self) -> None:
        """Half-close and drain instead of closing at once (aiohttp calls this after its close)."""
        if self._linger is not None:
            return  # already draining
        transport = self._req.transport if self._req is not None else None
        guard = self._guard
        if guard is None or transport is None or transport.is_closing():
            super()._close_transport()
            return
        guard.discarding = True
        transport.resume_reading()  # flow control may have paused it; unread input means RST
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            transport.write_eof()  # FIN after the close frame: the client's read ends cleanly
        # The client's FIN closes the transport (aiohttp's eof_received); this bounds the wait.
        # abort(), not close(): close() waits for a write buffer a stalled client never reads.
        assert self._loop is not None
        self._linger = self._loop.call_later(LINGER_SECONDS, transport.abort)
        guard.gone.add_done_callback(self._linger_done)

    def _linger_done(self, _: object) -> None:
        if self._linger is not None:
            self._linger.cancel()

    async def drained(self) -> None:
        """Wait until a draining close has ended: the client closed its side, or time ran out."""
        if self._guard is not None and self._linger is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._guard.gone), LINGER_SECONDS + 1.0)
