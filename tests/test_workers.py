"""`bridge serve --workers N`: one port, N processes, and registrations reach every one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.test_cli import ROOT, free_port

TOKEN = "workers-token"
PROTO = """syntax = "proto3";
package demo.echo.v1;
import "google/api/annotations.proto";
message EchoRequest { string message = 1; }
message EchoResponse { string message = 1; }
service EchoService {
  rpc Echo(EchoRequest) returns (EchoResponse) {
    option (google.api.http) = { get: "/v2/echo/{message}" };
  }
}
"""


async def statuses(url: str, count: int) -> list[int]:
    """GET url over ``count`` fresh connections, so the kernel spreads them over the workers."""
    found = []
    for _ in range(count):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            try:
                async with s.get(url) as resp:
                    found.append(resp.status)
            except aiohttp.ClientConnectionError:
                found.append(0)  # not listening yet
    return found


async def eventually(url: str, expected: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = await statuses(url, 24)
        if set(found) == {expected} or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.3)


@asynccontextmanager
async def serving(config: Path) -> AsyncIterator[str]:
    """``bridge serve --workers 2``: its base URL; on exit SIGTERM, a clean and quiet end."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "serve", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--workers", "2", cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


async def test_registrations_reach_every_worker(tmp_path: Path, echo_server: int) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"admin: {{token: {TOKEN}}}\nprotos: {{store: {tmp_path / 'store'}}}\n"
        "upstreams: {echo: {targets: ['127.0.0.1:%d']}}\n" % echo_server
    )
    async with serving(config) as base:
        await eventually(base + "/healthz", 200, timeout=20)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = {"name": "echo2", "files": {"e/echo.proto": PROTO}, "upstream": "echo"}
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/admin/protos", json=body, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
        found = await eventually(base + "/v2/echo/hi", 200)
        assert set(found) == {200}, found  # a worker that missed it would answer 404

        async with aiohttp.ClientSession() as s:
            async with s.delete(base + "/admin/protos/echo2", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        found = await eventually(base + "/v2/echo/hi", 404)
        assert set(found) == {404}, found
    assert os.listdir(tmp_path / "store") == []
