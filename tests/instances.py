"""Several bridge processes against one config (SPEC 10): each on its own free port.

`instances(config, n)` starts ``bridge serve`` ``n`` times, waits until every one answers
``/healthz``, yields their base URLs, and on exit stops them with SIGTERM and checks each ended
cleanly, with no traceback in its log. ``logs`` collects each process's stderr, for tests that
read what the bridge said (an outage logged once, never a password).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.test_cli import ROOT, free_port


@dataclass
class Instance:
    url: str
    proc: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)  # stderr lines so far

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))


async def wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def instances(config: Path, n: int = 2) -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    readers = []
    try:
        for _ in range(n):
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.cli", "serve", "--config", str(config),
                "--listen", f"127.0.0.1:{port}", cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            instance = Instance(f"http://127.0.0.1:{port}", proc)
            started.append(instance)
            readers.append(asyncio.create_task(instance._read()))
        for instance in started:
            await wait_healthy(instance.url)
        yield started
    finally:
        for instance in started:
            if instance.proc.returncode is None:
                instance.proc.send_signal(signal.SIGTERM)
        for instance in started:
            await asyncio.wait_for(instance.proc.wait(), 20)
        await asyncio.gather(*readers, return_exceptions=True)
    for instance in started:
        text = "".join(instance.log)
        assert instance.proc.returncode == 0, text
        assert "Traceback" not in text, text
