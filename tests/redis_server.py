"""A real redis-server (Debian's package) on a free loopback port, for SPEC 10's tests.

`RedisServer` can be stopped (SIGKILL, as a crash) and started again on the same port, with
its data kept (``flush=False``: a restart) or lost (a Redis that comes back empty). Nothing is
written to disk: no RDB, no AOF. It can ask for a password (``requirepass``) and speak only TLS
(`Tls`: its certificate and key, and the CA file clients are given); ``url`` says both.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Tls:
    """A TLS server's files: its certificate and key, and the CA that signed the certificate."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    def __init__(
        self, port: int | None = None, *, password: str | None = None, tls: Tls | None = None
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        secret = f":{password}@" if password else ""
        if tls is None:
            self.url = f"redis://{secret}127.0.0.1:{self.port}/0"
        else:
            self.url = f"rediss://{secret}127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"
        self.proc: asyncio.subprocess.Process | None = None
        self._saved: dict[bytes, tuple[bytes, int]] = {}

    def _options(self) -> list[str]:
        """redis-server's command line: where it listens, and its password and TLS if any."""
        if self.tls is None:
            options = ["--port", str(self.port)]
        else:
            tls = self.tls
            options = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                       "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
                       "--tls-ca-cert-file", str(tls.ca)]  # fmt: skip
        if self.password:
            options += ["--requirepass", self.password]
        return options

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER, *self._options(), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    break
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            for key, (dumped, ttl) in self._saved.items():
                await client.restore(key, max(ttl, 0), dumped, replace=True)
            self._saved = {}
        finally:
            await client.aclose()

    async def kill(self, *, keep_data: bool = True) -> None:
        """SIGKILL the server; with ``keep_data`` its keys come back at the next `start`."""
        if keep_data:
            client = self.client()
            try:
                self._saved = {}
                async for key in client.scan_iter():
                    dumped = await client.dump(key)
                    if dumped is not None:
                        self._saved[key] = (dumped, await client.pttl(key))
            finally:
                await client.aclose()
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self.proc = None

    def client(self, db: int = 0) -> aioredis.Redis:
        return aioredis.Redis.from_url(urlunsplit(urlsplit(self.url)._replace(path=f"/{db}")))

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
