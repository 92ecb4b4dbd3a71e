"""The store watcher outlives a failing store: logged once, retried with backoff, then caught up."""

from __future__ import annotations

import asyncio
import errno
import inspect
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2

from bridge.app import json_shape
from bridge.config import load_settings
from bridge.registry import INCLUDE, ProtoSet, Registry, build_snapshot
from bridge.registry.registrar import Registrar
from bridge.registry.store import FileStore, Listing, Registration, Signature
from bridge.upstream.pool import Upstreams
from tests.conftest import Bridge, StartBridge
from tests.teams import PING, PING_FILE, TeamServer, admin_config, ping, register

FAILED = "cannot follow the store"
RECOVERED = "following the store again"
PING_V2_FILE = "acme/ping/v2/ping.proto"
PING_V2 = PING.replace("v1", "v2").replace('"/ping/', '"/v2/ping/')


class FlakyStore(FileStore):
    """A real folder store whose reads fail like a process out of file descriptors, for a while."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.failing = {"signature": 0, "listing": 0}  # failures still to come, by call
        self.calls: list[tuple[float, str]] = []  # (when, which) of every call

    def _maybe_fail(self, which: str) -> None:
        self.calls.append((time.monotonic(), which))
        if self.failing[which]:
            self.failing[which] -= 1
            raise OSError(errno.EMFILE, "Too many open files")

    def signature(self) -> Signature:
        self._maybe_fail("signature")
        return super().signature()

    def listing(self) -> Listing:
        self._maybe_fail("listing")
        return super().listing()


@pytest.fixture
async def team(tmp_path: Path) -> AsyncIterator[TeamServer]:
    server = await TeamServer(tmp_path / "team").start()
    await server.deploy(
        {PING_FILE: PING, PING_V2_FILE: PING_V2},
        {"acme.ping.v1.Ping/Get": ping, "acme.ping.v2.Ping/Get": ping},
    )
    yield server
    await server.stop()


@pytest.fixture
async def registrar(tmp_path: Path) -> AsyncIterator[Registrar]:
    """A registrar as a bridge process has it, following a FlakyStore."""
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(admin_config(tmp_path / "store")))
    settings = load_settings(path)
    include = ProtoSet(INCLUDE, descriptor_pb2.FileDescriptorSet(), frozenset())
    registry = Registry(build_snapshot([include], settings.upstream_for, json_shape(settings)))
    upstreams = Upstreams(settings.upstreams.values())
    registrar = Registrar(settings, registry, upstreams, include)
    registrar.store = FlakyStore(settings.protos_store)
    await registrar.restore()
    yield registrar
    await upstreams.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float) -> float:
    """Wait until ``check()`` holds (its result awaited if need be); return how long it took."""
    started = time.monotonic()
    while not await _result(check()):
        assert time.monotonic() - started < timeout, "not within the time allowed"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("failing", ["signature", "listing"], ids=["store-read", "sync"])
async def test_the_watcher_logs_once_backs_off_and_catches_up(
    registrar: Registrar,
    team: TeamServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    failing: str,
):
    store: FlakyStore = registrar.store  # type: ignore[assignment]
    watcher = asyncio.create_task(registrar.watch(interval=0.05, longest=0.4))
    try:
        await eventually(lambda: "signature" in {which for _, which in store.calls}, 2)
        store.failing[failing] = 6
        first = len(store.calls)
        # Another process registers meanwhile: its file lands in the shared folder.
        registration = Registration("ping", {PING_FILE: PING}, targets=(team.target,))
        FileStore(store.folder).save(registration)
        with caplog.at_level(logging.INFO, logger="bridge.registry"):
            await eventually(lambda: "ping" in registrar.entries, 10)
        assert not watcher.done()
    finally:
        watcher.cancel()
    assert store.failing[failing] == 0
    failed, recovered = messages(caplog, FAILED), messages(caplog, RECOVERED)
    assert len(failed) == 1 and "Too many open files" in failed[0], failed
    assert "\n" not in failed[0] and not any(r.exc_info for r in caplog.records)
    assert recovered == [f"protos.store: {RECOVERED} after 6 failed tries"]
    # The pauses between tries double from the interval and stop growing at `longest`.
    tries = [when for when, which in store.calls[first:] if which == failing]
    pauses = [b - a for a, b in itertools.pairwise(tries)][:6]
    assert 0.04 < pauses[0] < 0.3 and all(0.35 < p < 0.8 for p in pauses[3:6]), pauses


async def _result(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else value


async def test_an_entry_that_cannot_be_read_is_not_a_removal(
    registrar: Registrar, team: TeamServer
):
    folder = registrar.store.folder
    FileStore(folder).save(Registration("ping", {PING_FILE: PING}, targets=(team.target,)))
    await registrar.sync()
    assert "ping" in registrar.entries
    entry = folder / "ping.json"
    saved = entry.read_bytes()
    entry.unlink()
    entry.mkdir()  # reading it fails with an OSError, as a file would while fds run out
    await registrar.sync()
    assert "ping" in registrar.entries, "an unreadable entry was taken for a removal"
    entry.rmdir()
    entry.write_bytes(saved)
    await registrar.sync()
    assert "ping" in registrar.entries
    entry.unlink()
    await registrar.sync()
    assert "ping" not in registrar.entries  # a file really gone is a removal


async def test_bridges_sharing_a_store_keep_serving_and_catch_up_after_it_was_replaced(
    start_bridge: StartBridge, team: TeamServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    store = tmp_path / "store"
    writer = await start_bridge(admin_config(store))
    follower = await start_bridge(admin_config(store))
    assert (await register(writer, "ping", {PING_FILE: PING}, team.target))[0] == 201
    await eventually(lambda: _serves(follower, "/ping/a"), 5)

    with caplog.at_level(logging.INFO, logger="bridge.registry"):
        away = tmp_path / "store-away"
        store.rename(away)
        store.write_text("not a folder\n")  # the store's folder replaced by a file
        await asyncio.sleep(2.5)  # each watcher fails at least twice
        assert await _serves(follower, "/ping/during"), "a failing store dropped registrations"
        assert len(messages(caplog, FAILED)) == 2, messages(caplog, FAILED)  # one per bridge
        store.unlink()
        away.rename(store)
        status, reply = await register(writer, "ping-v2", {PING_V2_FILE: PING_V2}, team.target)
        assert status == 201, reply
        await eventually(lambda: _serves(follower, "/v2/ping/b"), 8)
        assert await _serves(follower, "/ping/after")
    assert len(messages(caplog, FAILED)) == 2
    assert len(messages(caplog, RECOVERED)) == 2


async def _serves(bridge: Bridge, path: str) -> bool:
    """Whether the ping route at ``path`` answers with its id."""
    async with bridge.request("GET", path) as resp:
        body: Any = await resp.json(content_type=None)
        return resp.status == 200 and body == {"id": path.rsplit("/", 1)[1]}
