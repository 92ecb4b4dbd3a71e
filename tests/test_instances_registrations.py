"""Registrations shared by real `bridge serve` processes through one real Redis (SPEC 10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.shared.registrations import EPOCH, REGISTRATIONS, VERSION
from tests.instances import Instance, instances
from tests.redis_server import RedisServer, free_port, redis_server
from tests.test_workers import PROTO

__all__ = ["redis_server"]  # the fixture, used by name

TOKEN = "shared-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
V3 = PROTO.replace("/v2/echo/", "/v3/echo/")  # the same service, mapped elsewhere
# Another registration's service; the echo backend lacks it, so a call routed there is 501.
OTHER = PROTO.replace("demo.echo.v1", "demo.other.v1").replace("/v2/echo/", "/v3/other/")
ROUTED = 501
UNREACHABLE = "is unreachable"


def write_config(tmp_path: Path, store: str, echo: int, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"admin: {{token: {TOKEN}}}\nprotos: {{store: '{store}'}}\n"
        f"upstreams: {{echo: {{targets: ['127.0.0.1:{echo}']}}}}\n"
    )
    return path


async def call(url: str, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(verb, url + path, json=body, headers=AUTH) as resp:
            return resp.status, await resp.json(content_type=None)


async def register(instance: Instance, proto: str = PROTO, name: str = "echo2") -> tuple[int, Any]:
    body = {"name": name, "files": {f"{name}/echo.proto": proto}, "upstream": "echo"}
    return await call(instance.url, "POST", "/admin/protos", body)


async def status(instance: Instance, path: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(instance.url + path) as resp:
            return resp.status


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Wait until ``check()`` holds; return how long it took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "not within the time allowed"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def serving(group: list[Instance], path: str, expected: int = 200) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await asyncio.gather(*(status(i, path) for i in group))
        return set(found) == {expected}

    return check


def said(instance: Instance, text: str) -> int:
    return sum(text in line for line in instance.log)


@pytest.fixture
async def config(tmp_path: Path, redis_server: RedisServer, echo_server: int) -> Path:
    return write_config(tmp_path, redis_server.url, echo_server)


async def test_a_change_through_one_instance_is_live_on_the_others_within_a_second(
    config: Path, redis_server: RedisServer
) -> None:
    async with instances(config, 3) as [a, b, c]:
        assert (await register(a))[0] == 201
        took = await until(serving([b, c], "/v2/echo/hi"), 5)
        assert took < 1.0, took
        client = redis_server.client()
        try:
            stored = json.loads(await client.hget(REGISTRATIONS, "echo2"))
            assert stored["files"] == {"echo2/echo.proto": PROTO}
            assert await client.get(VERSION) == b"1" and await client.hexists(REGISTRATIONS, EPOCH)
        finally:
            await client.aclose()
        assert (await call(b.url, "DELETE", "/admin/protos/echo2"))[0] == 200
        took = await until(serving([a, c], "/v2/echo/hi", 404), 5)
        assert took < 1.0, took


async def test_one_name_registered_at_once_through_two_instances_has_one_winner_everywhere(
    config: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    try:
        async with instances(config, 3) as group:
            a, b, _ = group
            for _ in range(5):
                replies = await asyncio.gather(register(a, PROTO), register(b, V3))
                assert {s for s, _ in replies} <= {200, 201}, replies
                held = json.loads(await client.hget(REGISTRATIONS, "echo2"))["files"]
                won, lost = ("/v2", "/v3") if held["echo2/echo.proto"] == PROTO else ("/v3", "/v2")
                await until(serving(group, won + "/echo/hi"), 5)
                await until(serving(group, lost + "/echo/hi", 404), 5)
                shown = [await call(i.url, "GET", "/admin/protos/echo2") for i in group]
                assert all(s == 200 and r["files"] == held for s, r in shown), shown
    finally:
        await client.aclose()


async def test_with_redis_down_changes_are_refused_and_serving_goes_on(
    config: Path, redis_server: RedisServer
) -> None:
    async with instances(config, 2) as [a, b]:
        assert (await register(a))[0] == 201
        await until(serving([b], "/v2/echo/hi"), 5)
        await redis_server.kill(keep_data=True)
        for _ in range(3):
            started = time.monotonic()
            code, reply = await register(b, OTHER, name="echo3")
            assert time.monotonic() - started < 1.0
            assert code == 503 and reply["code"] == 14, reply
            assert UNREACHABLE in reply["message"] and "could not be shared" in reply["message"]
            code, reply = await call(a.url, "DELETE", "/admin/protos/echo2")
            assert code == 503 and reply["code"] == 14, reply
        assert await serving([a, b], "/v2/echo/hi")()
        assert await serving([a, b], "/v3/other/hi", 404)()  # nothing half-made
        code, ready = await call(a.url, "GET", "/readyz")
        [store] = ready["stores"].values()
        assert code == 200 and store["reachable"] is False, ready
        assert all(said(i, UNREACHABLE) == 1 for i in (a, b)), [a.log, b.log]

        await redis_server.start()

        async def taken() -> bool:
            return (await register(b, OTHER, name="echo3"))[0] == 201

        await until(taken, 10)
        await until(serving([a], "/v3/other/hi", ROUTED), 5)  # once its own link is back
        assert await serving([a, b], "/v2/echo/hi")()
        moved = OTHER.replace("/v3/other/", "/v4/other/")
        assert (await register(b, moved, name="echo3"))[0] == 200
        took = await until(serving([a], "/v4/other/hi", ROUTED), 5)
        assert took < 1.0, took
        assert all(said(i, UNREACHABLE) == 1 and said(i, "reachable again") == 1 for i in (a, b))


async def test_at_start_with_redis_down_the_config_is_served_and_caught_up_later(
    config: Path, redis_server: RedisServer
) -> None:
    async with instances(config, 1) as [a]:
        assert (await register(a))[0] == 201
    await redis_server.kill(keep_data=True)
    async with instances(config, 1) as [late]:
        assert await status(late, "/healthz") == 200
        assert await status(late, "/v2/echo/hi") == 404  # nothing to restore it from yet
        assert said(late, UNREACHABLE) == 1
        await redis_server.start()
        await until(serving([late], "/v2/echo/hi"), 5)


async def test_a_redis_that_comes_back_empty_is_written_back_for_every_instance(
    config: Path, redis_server: RedisServer
) -> None:
    async with instances(config, 2) as [a, b]:
        assert (await register(a))[0] == 201
        assert (await register(b, OTHER, name="echo3"))[0] == 201
        await until(serving([a, b], "/v3/other/hi", ROUTED), 5)
        await redis_server.kill(keep_data=False)
        await redis_server.start()
        client = redis_server.client()
        try:

            async def written_back() -> bool:
                names = await client.hkeys(REGISTRATIONS)
                return sorted(names) == [EPOCH.encode(), b"echo2", b"echo3"]

            await until(written_back, 10)
        finally:
            await client.aclose()
        assert any(said(i, "wrote back") for i in (a, b)), [a.log, b.log]
        async with instances(config, 1) as [late]:
            assert await serving([late], "/v2/echo/hi")()
            assert await serving([late], "/v3/other/hi", ROUTED)()
        assert await serving([a, b], "/v2/echo/hi")()
        assert (await register(a, OTHER, name="echo3"))[0] == 200  # changes are taken again


class Cut:
    """A TCP relay to Redis for one instance, which the test can cut and mend."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def mend(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.pipes):
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.pipes |= {writer, up_writer}
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        self.pipes -= {writer, up_writer}


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def cut(redis_server: RedisServer) -> AsyncIterator[Cut]:
    relay = Cut(redis_server.port)
    await relay.mend()
    yield relay
    if relay.server is not None and relay.server.is_serving():
        await relay.cut()


async def test_an_instance_cut_off_catches_up_with_changes_made_meanwhile(
    tmp_path: Path, config: Path, cut: Cut, echo_server: int
) -> None:
    relayed = write_config(tmp_path, f"redis://127.0.0.1:{cut.port}/0", echo_server, "cut.yaml")
    async with instances(config, 1) as [direct], instances(relayed, 1) as [cut_off]:
        assert (await register(direct))[0] == 201
        await until(serving([cut_off], "/v2/echo/hi"), 5)
        await cut.cut()
        await until(lambda: _refused(cut_off), 5)
        # Through the instance that still reaches Redis: one removal, one registration.
        assert (await call(direct.url, "DELETE", "/admin/protos/echo2"))[0] == 200
        assert (await register(direct, OTHER, name="echo3"))[0] == 201
        await asyncio.sleep(1.5)
        assert await status(cut_off, "/v2/echo/hi") == 200  # its last snapshot, kept
        assert await status(cut_off, "/v3/other/hi") == 404
        await cut.mend()
        await until(serving([cut_off], "/v3/other/hi", ROUTED), 5)
        # The store kept its epoch: the missing entry is a removal, not a loss to write back.
        await until(serving([cut_off], "/v2/echo/hi", 404), 5)
        assert not said(cut_off, "wrote back")
        await asyncio.sleep(0.5)
        assert await status(direct, "/v2/echo/hi") == 404


async def _refused(instance: Instance) -> bool:
    return (await register(instance, OTHER, name="echo3"))[0] == 503
