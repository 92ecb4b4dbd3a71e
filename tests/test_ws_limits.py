"""GET /ws limits and lifecycle (SPEC section 4): frame size, open calls, Origin, heartbeat,
draining shutdown, and backpressure measured on a bridge running in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
import yaml

from bridge.app import start
from bridge.config import load_settings
from tests.conftest import ROOT, demo_config
from tests.ws_client import Backend, connect, messages, seqs, status, wait_for

OK: Final = {"code": 0, "message": "", "details": []}
STUCK: Final = {"count": 2, "intervalMs": 100000}  # one event at once, the next in 100 s
MiB: Final = 1024 * 1024


@pytest.fixture
async def backend(echo_server: int) -> AsyncIterator[Backend]:
    backend = Backend(echo_server)
    yield backend
    await backend.channel.close()


async def running(backend: Backend, count: int) -> None:
    async def started() -> bool:
        return (await backend.stats()).active == count

    await wait_for(started, 2.0, f"{count} calls running at the backend")


# --- limits ------------------------------------------------------------------------------------


async def test_frame_over_the_limit_closes_with_1009(
    start_bridge, users_server, echo_server, backend
):
    config = demo_config(users_server, echo_server, limits={"ws_max_frame": "4KiB"})
    bridge = await start_bridge(config)
    async with connect(bridge.url) as ws:
        assert status(await ws.call(1, "Echo", {"message": "x" * 3000})) == OK  # under: fine
        await ws.start("stuck", "Tick", STUCK)
        await ws.next("stuck")
        await ws.start(2, "Echo", {"message": "x" * 5000})
        assert await ws.closed() == 1009
        await backend.sees_cancelled("Tick", 1)  # closing the socket ended its calls


async def test_more_open_calls_than_the_limit_is_resource_exhausted(
    start_bridge, users_server, echo_server, backend
):
    bridge = await start_bridge(demo_config(users_server, echo_server, limits={"ws_max_calls": 3}))
    async with connect(bridge.url) as ws, connect(bridge.url) as other:
        for n in range(3):
            await ws.start(n, "Tick", STUCK)
            assert "headers" in await ws.next(n)
        frames = await ws.call(3, "Echo", {})
        assert messages(frames) == []
        assert status(frames)["code"] == 8  # RESOURCE_EXHAUSTED
        assert "3" in status(frames)["message"]
        assert (await backend.stats()).started == 3  # the refused call never reached it

        assert status(await other.call(1, "Echo", {})) == OK  # the limit is per connection
        await ws.send({"id": 0, "cancel": True})
        assert status(await ws.until_status(0))["code"] == 1
        assert status(await ws.call(4, "Echo", {})) == OK  # room again
        assert [ws.statuses[n] for n in (1, 2)] == [0, 0]  # the others never stopped


# --- Origin at the upgrade ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed, origin, accepted",
    [
        (["https://app.example"], "https://app.example", True),
        (["https://app.example"], "https://evil.example", False),
        (["https://app.example"], "https://app.example:8443", False),
        (["https://app.example"], "null", False),
        ([], "https://app.example", False),
        (["https://app.example"], None, True),  # not a browser
        ([], "own", True),  # the bridge's own pages
        (["*"], "https://evil.example", True),
    ],
)
async def test_origin_is_checked_at_the_upgrade(
    start_bridge, users_server, echo_server, allowed, origin, accepted
):
    config = demo_config(users_server, echo_server, cors={"allow_origins": allowed})
    bridge = await start_bridge(config)
    if origin == "own":
        origin = bridge.url
    headers = {} if origin is None else {"Origin": origin}
    if not accepted:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with connect(bridge.url, headers=headers):
                pass
        assert refused.value.status == 403
        return
    async with connect(bridge.url, headers=headers) as ws:
        assert ws.ws.protocol == "bridge.v1"
        assert status(await ws.call(1, "Echo", {})) == OK


# --- the connection goes away ------------------------------------------------------------------


async def test_unanswered_pings_close_the_socket_and_cancel_its_calls(
    start_bridge, users_server, echo_server, backend
):
    """A peer that vanished (no FIN, no close frame) answers no ping: the heartbeat finds it."""
    config = demo_config(users_server, echo_server, limits={"ws_heartbeat": "500ms"})
    bridge = await start_bridge(config)
    async with connect(bridge.url, reading=False, autoping=False) as ws:
        await ws.start("tick", "Tick", STUCK)
        await ws.start("echo", "Echo", {"sleepMs": 60000})
        start = time.monotonic()
        await running(backend, 2)
        await backend.sees_cancelled("Tick", 1, within=2.0)
        await backend.sees_cancelled("Echo", 1, within=0.5)
        assert time.monotonic() - start < 2.0  # 0.5 s to the ping, 0.25 s for its pong, < 1 s
        await ws.closed(timeout=1.0)  # and the bridge dropped the connection


async def test_shutdown_ends_calls_with_unavailable_then_closes_1001(
    tmp_path, demo_protos, users_server, echo_server, backend
):
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(demo_config(users_server, echo_server)))
    settings = load_settings(path)
    runner, port = await start(settings, "127.0.0.1", 0, demo_protos)
    cleanup: asyncio.Task[None] | None = None
    try:
        async with connect(f"http://127.0.0.1:{port}") as ws:
            await ws.start("tick", "Tick", STUCK)
            await ws.start("echo", "Echo", {"sleepMs": 60000})
            await ws.start("chat", "Chat")
            await running(backend, 3)
            cleanup = asyncio.create_task(runner.cleanup())
            assert await ws.closed() == 1001
            # Every status came before the close frame (the reader stops at the close).
            for call_id in ("tick", "echo", "chat"):
                ended = status(await ws.until_status(call_id, timeout=0.1))
                assert ended["code"] == 14 and ended["message"], (call_id, ended)  # UNAVAILABLE
            await asyncio.wait_for(cleanup, 5)
        await backend.sees_cancelled("Tick", 1)
        await backend.sees_cancelled("Echo", 1)
        await backend.idle()
    finally:
        if cleanup is None:
            await runner.cleanup()


# --- backpressure, measured on a bridge in its own process -------------------------------------

BIG: Final = {"count": 640, "payloadSize": 65536}  # 40 MiB of payload (about 56 MB of JSON)


def rss(pid: int) -> int:
    """A process's resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def bridge_process(tmp_path: Path, config: dict) -> AsyncIterator[tuple[int, str]]:
    """``bridge serve`` in its own process; yields its pid and base URL."""
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "bridge.log"
    command = [sys.executable, "-m", "bridge.cli", "serve", "--config", str(path)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--listen", url.removeprefix("http://")], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/healthz") as resp:
                        return resp.status == 200
                return False

            await wait_for(up, 20.0, "the bridge process to serve")
        yield proc.pid, url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_stalled_reader_holds_the_backend_back(tmp_path, users_server, echo_server, backend):
    async with bridge_process(tmp_path, demo_config(users_server, echo_server)) as (pid, url):
        async with connect(url) as warm:  # the bridge's steady state, payload paths included
            assert status(await warm.call(0, "Tick", {"count": 20, "payloadSize": 65536})) == OK
        await asyncio.sleep(0.3)
        baseline = rss(pid)
        sent_before = (await backend.stats()).ticks_sent

        async with connect(url, reading=False) as ws, connect(url) as other:
            await ws.start(1, "Tick", BIG)
            head = [await ws.next(1), await ws.next(1)]  # headers and the first event
            assert seqs(head) == [1]
            peak, sent = baseline, []  # the browser now stops reading for 3 s
            for _ in range(30):
                await asyncio.sleep(0.1)
                peak = max(peak, rss(pid))
                sent.append((await backend.stats()).ticks_sent - sent_before)

            start = time.monotonic()
            assert status(await other.call(1, "Echo", {})) == OK  # other sockets unaffected
            assert time.monotonic() - start < 0.5

            growth = peak - baseline
            ahead = f"{sent[-1]}/640 events ({sent[-1] * 64 / 1024:.1f} MiB)"
            print(f"\nstalled 40 MiB stream: RSS +{growth / MiB:.1f} MiB, backend sent {ahead}")
            assert growth < 20 * MiB, f"bridge RSS grew {growth / MiB:.1f} MiB"
            assert sent[-1] < 640 // 2, f"the backend got {sent[-1]} of 640 events out"
            assert sent[-1] == sent[-11], f"the backend kept sending: {sent}"  # held, not slow

            ws.start_reading()
            frames = head + await ws.until_status(1, timeout=20)
            assert seqs(frames) == list(range(1, 641))
            assert status(frames) == OK
            assert (await backend.stats()).ticks_sent - sent_before == 640
