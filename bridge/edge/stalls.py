"""The send timeout: a client that takes none of the bridge's waiting output is let go.

Backpressure holds a writer while the client reads slowly (aiohttp's drain waits for the
transport's `resume_writing`), which is right, but a client that stops reading would hold the
connection, the handler and its backend call forever. nginx bounds this with `send_timeout`
and Envoy with its stream idle timeout; here it is ``limits.send_timeout``.

Nothing is paid per write. A watch exists only while the transport's write buffer is above
its high-water mark (from `pause_writing` to `resume_writing`), or while a closed transport
still holds output (close() waits for it to be sent), and looks at the output not yet
taken a few times per timeout: the transport's buffer plus, on Linux, the bytes in the kernel's
send queue that the client has not acknowledged (SIOCOUTQ). Writers only add to it and only the
client's reading takes from it, so output that has not once got smaller between two looks for
a whole timeout means the client took none of it; a slow but steady reader keeps lowering it
(writers add at most a drain limit each before they wait, so they cannot hide it for long). The
kernel's queue matters: a socket is writable again only once about a third of it is free, so
the transport's buffer alone could stand still for seconds under a client reading steadily.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from collections.abc import Callable
from typing import Any, Final

# Looks at the buffer per timeout: a stalled client is dropped within 1 + 1/CHECKS timeouts of
# its last read, and a buffer refilled between two looks is seen draining at a later one.
CHECKS: Final = 4
_COUNT: Final = struct.Struct("i")
_OUTQ: Final = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux sockets


def untaken(transport: asyncio.WriteTransport) -> int:
    """Bytes written to `transport` that the client has not taken yet (as far as is known)."""
    size = transport.get_write_buffer_size()
    sock: Any = transport.get_extra_info("socket")
    if _OUTQ is None or sock is None:
        return size
    with contextlib.suppress(OSError, ValueError):
        raw = fcntl.ioctl(sock.fileno(), _OUTQ, bytes(_COUNT.size))
        size += _COUNT.unpack(raw)[0]
    return size


class SendWatch:
    """Calls `stalled` once if the output a paused transport holds stops shrinking for `timeout`."""

    __slots__ = ("_handle", "_last", "_loop", "_since", "_stalled", "_timeout", "transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        timeout: float,
        stalled: Callable[[asyncio.WriteTransport], None],
    ) -> None:
        self._loop = loop
        self.transport = transport
        self._timeout = timeout
        self._stalled = stalled
        self._last = untaken(transport)  # at the previous look
        self._since = loop.time()  # when the client was last seen taking some
        self._handle: asyncio.TimerHandle | None = loop.call_later(timeout / CHECKS, self._look)

    def _look(self) -> None:
        now = self._loop.time()
        size = untaken(self.transport)
        if size < self._last:
            self._since = now
        elif now - self._since >= self._timeout * (1 - 0.5 / CHECKS):  # timer jitter
            self._handle = None
            self._stalled(self.transport)
            return
        self._last = size
        self._handle = self._loop.call_later(self._timeout / CHECKS, self._look)

    def stop(self) -> None:
        """The output drained below the low-water mark, or the connection is gone."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
