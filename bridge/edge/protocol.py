"""One client connection: aiohttp's RequestHandler plus timeouts, room and Status errors.

aiohttp has no public hooks for any of this, so `EdgeProtocol` subclasses its RequestHandler
and leans on these internals, checked against aiohttp 3.11.0 and 3.14.5 and verified once at
start by `check_aiohttp()`: the `_messages` queue of parsed requests (a parse error is queued
there as a pseudo-request), `web.Server._kwargs`/`_loop`, which build each handler, a
request's `_cache` of properties, to answer an HTTP/2.0 request line in HTTP/1.1, and
`BaseProtocol._drain_waiter`, the future a writer waiting for the client awaits, which the send
timeout fails so that the writer stops at once (on a plain lost connection it just resumes).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

from aiohttp import base_protocol, web, web_protocol
from aiohttp.http_exceptions import (
    BadHttpMessage,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.streams import StreamReader

from bridge import errors
from bridge.edge.connections import ConnectionTable
from bridge.edge.stalls import SendWatch
from bridge.errors import BridgeError, error_response
from bridge.observe.metrics import REJECTED_LIMIT

log = logging.getLogger("bridge")

# After the bridge ends a connection with an answer, it keeps reading (and dropping) what the
# client still sends for this long, so closing with unread input does not reset the connection
# and destroy the answer on its way; a client that closes first ends it sooner.
LINGER: Final = 2.0
# At most this many connections linger at once; beyond it an answer is followed by a plain close.
LINGER_SLOTS: Final = 64
_EXCERPT: Final = 40  # characters of the offending bytes quoted in a parse error
_REASON: Final = 100  # characters of the parser's own description

TIMED_OUT: Final = BridgeError(
    errors.DEADLINE_EXCEEDED,
    "the request head did not arrive within limits.header_timeout",
    status=408,
)
NO_ROOM: Final = BridgeError(
    errors.UNAVAILABLE,
    "the bridge is at limits.max_connections and every connection is busy; retry later",
    headers={"Retry-After": "1"},
)
MADE_ROOM: Final = BridgeError(
    errors.UNAVAILABLE,
    "the bridge is at limits.max_connections; this connection waited longest for its request",
    headers={"Retry-After": "1"},
)


def check_aiohttp() -> None:
    """Fail at start, not on a request, if aiohttp lacks an internal the edge relies on."""
    missing = [f"RequestHandler.{n}" for n in ("_messages",) if n not in _SLOTS]
    missing += [f"BaseRequest.{n}" for n in ("_cache",) if n not in _REQUEST_ATTRS]
    waiter = "_drain_waiter"
    missing += [f"BaseProtocol.{waiter}"] if waiter not in _BASE_SLOTS else []
    server = web.Server(_unused, loop=asyncio.get_running_loop())
    missing += [f"Server.{name}" for name in ("_kwargs", "_loop") if not hasattr(server, name)]
    if missing:
        raise RuntimeError(
            f"this aiohttp lacks {', '.join(missing)}, which bridge.edge relies on "
            "(checked against aiohttp 3.11 to 3.14)"
        )


_SLOTS: Final = web_protocol.RequestHandler.__slots__
_BASE_SLOTS: Final = base_protocol.BaseProtocol.__slots__
_REQUEST_ATTRS: Final = web.BaseRequest.ATTRS


async def _unused(request: web.BaseRequest) -> web.StreamResponse:
    raise NotImplementedError


class EdgeServer(web.Server):
    """aiohttp's low-level server, making EdgeProtocols that share one ConnectionTable."""

    def __init__(
        self, table: ConnectionTable, *args: Any, send_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.table = table
        self.send_timeout = send_timeout
        self.lingering = 0

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)


class EdgeProtocol(web_protocol.RequestHandler):
    """A client connection that times out its waits, makes room, and answers in Status JSON."""

    __slots__ = ("_body", "_edge", "_linger", "_refused", "_started", "_watch", "counted", "queue")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self.queue: OrderedDict[Any, float] | None = None
        self.counted = False
        self._started = False  # bytes of a request head arrived since the last response
        self._body: StreamReader | None = None  # the body of the request in progress
        self._linger: asyncio.TimerHandle | None = None
        self._refused = False
        self._watch: SendWatch | None = None  # output waits for the client (send_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._edge.table.admit(self):
            super().connection_made(transport)
            return
        self._refused = True
        REJECTED_LIMIT.inc()  # limits.max_connections
        self.close()  # aiohttp ignores whatever arrives from here on
        self._answer(transport, NO_ROOM)  # type: ignore[arg-type]

    def connection_lost(self, exc: BaseException | None) -> None:
        self._edge.table.leave(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self._edge.lingering -= 1
        if not self._refused:
            super().connection_lost(exc)  # its force_close() may begin a watch: stopped here
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def data_received(self, data: bytes) -> None:
        if self.queue is not None:  # waiting: these bytes begin or continue a request head
            super().data_received(data)
            if self._messages:  # the head is complete (or failed to parse)
                self._edge.table.start_request(self)
            elif data:
                self._edge.table.head_started(self)
                self._started = True
            return
        body = self._body
        if body is None or body.is_eof():
            super().data_received(data)
            return
        queued = len(self._messages)
        super().data_received(data)
        if not body.is_eof():
            self._check_body(body, queued)

    def _check_body(self, body: StreamReader, queued: int) -> None:
        """Fail the body in progress if the parser just gave up on it.

        aiohttp's C parser queues an error inside a body (a bad chunk size, an oversized chunk
        trailer) as the next request and leaves this body waiting for bytes that never come:
        the handler would hang. The error goes to the body's reader instead (a 400) and the
        connection closes after the answer; the body is also ended, so aiohttp's lingering
        read of an unread body does not raise it again.
        """
        error = body.exception()
        if len(self._messages) > queued:
            error = error or getattr(self._messages[-1][0], "exc", None)
            error = error or BadHttpMessage("malformed request body")
        if error is None:
            return
        if body.exception() is None:
            body.set_exception(error)
        body.feed_eof()
        self.close()

    def pause_writing(self) -> None:
        # The write buffer passed its high-water mark: writers now wait for the client.
        super().pause_writing()
        transport = self.transport
        if transport is not None:
            self._watch = SendWatch(self._loop, transport, self._edge.send_timeout, self._stall)

    def resume_writing(self) -> None:
        watch = self._watch
        if watch is not None and not watch.transport.is_closing():
            watch.stop()
            self._watch = None
        super().resume_writing()

    async def start(self) -> None:
        transport = self.transport
        try:
            await super().start()
        finally:  # aiohttp closes the transport when its last request is done
            if transport is not None:
                self._watch_closing(transport)

    def force_close(self) -> None:
        transport = self.transport
        super().force_close()
        if transport is not None:
            self._watch_closing(transport)

    def _watch_closing(self, transport: asyncio.Transport) -> None:
        """A closed transport stays open until it has sent what it holds: bound that too.

        Below the high-water mark no writer waits, so no watch runs; but close() keeps the
        connection until the client takes the rest, which a stalled client never does.
        """
        if self._watch is None and transport.is_closing() and transport.get_write_buffer_size():
            self._watch = SendWatch(self._loop, transport, self._edge.send_timeout, self._stall)

    def _stall(self, transport: asyncio.WriteTransport) -> None:
        """The client took none of the output waiting for it for limits.send_timeout: drop it.

        An abort, not a close: close() waits for the buffer to be sent, which this client
        never takes, and no answer or WebSocket close frame could reach it past that buffer.
        The writer waiting on drain gets a ConnectionResetError, so the REST stream or the
        WebSocket session ends and cancels its backend calls as when a client hangs up.
        """
        self._watch = None
        REJECTED_LIMIT.inc()
        log.debug(
            "dropped the connection from %s: it took none of the bridge's output for %gs "
            "(limits.send_timeout)", _peer(transport), self._edge.send_timeout,
        )  # fmt: skip
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            self._drain_waiter = None
            waiter.set_exception(ConnectionResetError("the client stopped reading"))
        transport.abort()

    def begin(self, body: StreamReader) -> None:
        """A request is being handled (called by RequestGate before routing)."""
        self._edge.table.start_request(self)
        self._body = body

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: Any) -> None:
        # aiohttp calls this right after every response is written: the connection rests.
        super().log_access(request, response, time)
        self._body = None
        self._started = False
        if response.keep_alive and not (self._close or self._force_close):
            self._edge.table.rest(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A Status JSON answer for a request aiohttp could not parse or a handler failed."""
        self._edge.table.start_request(self)
        if status == 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error = BridgeError(errors.INTERNAL, "internal error in the bridge")
        elif status == 504:
            error = BridgeError(errors.DEADLINE_EXCEEDED, "the request handler timed out")
        else:
            error = parse_error(exc)
            # A client error: one line at DEBUG, like every other 4xx (none are logged), so
            # a client cannot flood the log with malformed requests.
            log.debug("malformed request from %s: %s", request.remote, error.message)
        if request.writer.output_size > 0:  # aiohttp's rule: a started response cannot change
            raise ConnectionError("response already started; cannot send an error")
        response = error_response(error, {"Connection": "close"})
        response.force_close()
        return response

    def expire(self) -> None:
        if self._started:
            self._end_with(TIMED_OUT)
        else:
            self.force_close()

    def evict(self) -> None:
        if self._started:
            self._end_with(MADE_ROOM)
        else:
            self.force_close()

    def _end_with(self, error: BridgeError) -> None:
        """Answer a request head cut short (limits.header_timeout or max_connections), close."""
        REJECTED_LIMIT.inc()
        transport = self.transport
        self.close()  # aiohttp stops parsing and ends its wait for a request
        if transport is not None:
            self._answer(transport, error)  # type: ignore[arg-type]

    def _answer(self, transport: asyncio.Transport, error: BridgeError) -> None:
        """Write a whole Status answer outside any request, then close, lingering if allowed."""
        transport.write(raw_answer(error))
        if self._edge.lingering >= LINGER_SLOTS or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the client sees the end; a well-behaved one closes at once
        self._edge.lingering += 1
        self._linger = self._loop.call_later(LINGER, transport.close)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "an unknown peer"


def raw_answer(error: BridgeError) -> bytes:
    """A complete HTTP/1.1 response carrying `error`, ending the connection."""
    body = error_response(error).body
    assert isinstance(body, bytes)
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Date: {formatdate(usegmt=True)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def parse_error(exc: BaseException | None, what: str = "malformed HTTP request") -> BridgeError:
    """The Status error for a request aiohttp's parser refused, quoting little and escaped.

    The C parser's messages name the problem and quote the bytes around it (as a repr); the
    pure-Python parser's often quote only the bytes, so its error types name the problem.
    """
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the allowed"
        return errors.invalid_argument(f"{what}: a line or header field is over {limit} bytes")
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc or "")
    reasons, excerpt = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("b'", 'b"', "bytearray(")):
            excerpt = excerpt or line  # the parser's repr() of the bytes around the error
        elif line.strip("^ "):
            reasons.append(line.rstrip(":. "))
    kind = next((name for cls, name in _KINDS if isinstance(exc, cls)), None)
    if kind is not None:
        reasons, excerpt = [kind], excerpt or repr(" ".join(reasons))
    reason = _shorten(": ".join(reasons) or "unreadable request", _REASON)
    if excerpt:
        reason += f", at {_shorten(excerpt, _EXCERPT)}"
    if "Invalid HTTP version" in text:
        return _version_error(reason)
    return errors.invalid_argument(f"{what}: {_printable(reason)}")


# What the pure-Python parser's errors mean, where their text is only the offending bytes.
_KINDS: Final = (
    (TransferEncodingError, "bad chunked encoding"),
    (ContentLengthError, "the body is shorter than its Content-Length"),
    (ContentEncodingError, "the body does not decode as its Content-Encoding says"),
    (InvalidHeader, "invalid header"),
    (InvalidURLError, "invalid request target"),
)


def version_error(version: str) -> BridgeError:
    return _version_error(f"HTTP/{version} is not supported")


def _version_error(reason: str) -> BridgeError:
    return BridgeError(
        errors.UNIMPLEMENTED,
        f"{_printable(reason)}; the bridge speaks HTTP/1.0 and HTTP/1.1",
        status=505,
    )


def quote(text: str) -> str:
    """A client's text as a short excerpt of printable ASCII, fit to go into a message."""
    return _printable(_shorten(text, _EXCERPT))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """The text with anything but printable ASCII escaped, so no raw client bytes are echoed."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
