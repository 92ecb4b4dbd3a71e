"""A raw HTTP/1.1 client over asyncio streams, for tests where a client library hides the bytes."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

WAIT: Final = 5.0  # the longest a test waits for an answer or a close


@dataclass
class Answer:
    """One HTTP response as read off the wire."""

    status_line: str
    headers: dict[str, str]  # lowercased names
    body: bytes
    interim: list[str] = field(default_factory=list)  # 1xx status lines that came before it

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def json(self) -> Any:
        return json.loads(self.body)

    def assert_status(self, status: int, code: int, *words: str) -> dict[str, Any]:
        """The answer is `status` with a google.rpc.Status body of `code` naming `words`."""
        assert self.status == status, (self.status_line, self.body)
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        body = self.json()
        assert body.keys() == {"code", "message", "details"} and body["code"] == code, body
        for word in words:
            assert word in body["message"], body["message"]
        return dict(body)


class RawConnection:
    """One TCP connection to the bridge: write bytes, read answers, see it close.

    Every connection opened is remembered until `close_all()`, which a fixture calls, so a
    test that fails half-way leaves no socket open.
    """

    opened: ClassVar[list[RawConnection]] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        connection = cls(reader, writer)
        cls.opened.append(connection)
        return connection

    @classmethod
    async def close_all(cls) -> None:
        for connection in cls.opened:
            connection.close()
        for connection in cls.opened:
            try:
                await connection.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        cls.opened.clear()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def trickle(self, data: bytes, every: float) -> None:
        """Send one byte at a time, `every` seconds apart, until done or the bridge closes."""
        for i in range(len(data)):
            if self.writer.is_closing() or self.reader.at_eof():
                return
            try:
                await self.send(data[i : i + 1])
            except ConnectionError:
                return
            await asyncio.sleep(every)

    async def answer(self, wait: float = WAIT) -> Answer:
        """The next response (after any 1xx interim ones)."""
        interim = []
        while True:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), wait)
            lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            if lines[0].split()[1] in ("100", "102", "103"):  # 101 is the final answer
                interim.append(lines[0])
                continue
            length = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(self.reader.readexactly(length), wait)
            return Answer(lines[0], headers, body, interim)

    async def closed_within(self, wait: float = WAIT) -> float:
        """Seconds until the bridge closes the connection (no bytes may arrive before)."""
        began = time.monotonic()
        try:
            rest = await asyncio.wait_for(self.reader.read(), wait)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest
        return time.monotonic() - began

    async def is_open(self, wait: float = 0.05) -> bool:
        """Whether the connection is still open: no end of stream within `wait` (a byte that
        arrives is consumed)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), wait) != b""
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False

    def close(self) -> None:
        self.writer.close()


async def exchange(url: str, data: bytes, wait: float = WAIT) -> Answer:
    """Send `data` on a new connection and read one answer."""
    connection = await RawConnection.open(url)
    try:
        await connection.send(data)
        return await connection.answer(wait)
    finally:
        connection.close()


def request(
    method: str, path: str, *headers: str, body: bytes = b"", version: str = "1.1"
) -> bytes:
    """The bytes of a request; a body gets its Content-Length unless a header sets framing."""
    lines = [f"{method} {path} HTTP/{version}", "Host: bridge", *headers]
    framed = any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers)
    if body and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
