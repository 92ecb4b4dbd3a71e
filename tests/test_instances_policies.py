"""Rate limits and the cache shared by several real `bridge serve` processes through one real
redis-server (SPEC 10), in front of a real echo backend: a burst split across instances passes
exactly ``burst``, an answer cached through one instance is a HIT through another, and with
Redis killed under traffic every call still answers (each instance counting alone meanwhile),
/readyz stays 200 and says so, the log says it once, and sharing resumes when Redis is back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import PROTOS
from tests.instances import Instance, instances
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

ECHO = "demo.echo.v1.EchoService/Echo"
BURST = 6
# One token every 100 s: nothing refills while a test runs.
CONFIG = """\
protos: {{include: [{protos}], store: {store}}}
upstreams: {{echo: {{targets: ["127.0.0.1:{echo}"], timeout: 5s}}}}
services: {{"demo.*": echo}}  # users too: only echo is called
rate_limits:
  store: {redis}
  rules: [{{match: "{echo_method}", key: ip, rate: 0.01/s, burst: {burst}}}]
cache:
  store: {redis}
  rules: [{{match: demo.echo.v1.EchoService/GetStats, ttl: 30s}}]
"""


def write(tmp_path: Path, redis: str, echo: int) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.format(protos=PROTOS, store=tmp_path / "store", echo=echo,
                                  redis=redis, echo_method=ECHO, burst=BURST))  # fmt: skip
    return path


async def call(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def echoes(http: aiohttp.ClientSession, bridges: list[Instance], count: int) -> list[int]:
    """``count`` Echo calls, round robin over the instances: their statuses, per instance."""
    passed = [0] * len(bridges)
    for i, bridge in zip(range(count), itertools.cycle(range(len(bridges))), strict=False):
        status, _, body = await call(http, f"{bridges[bridge].url}/v1/echo/m{i}")
        assert status in (200, 429), body
        passed[bridge] += status == 200
    return passed


async def readyz(http: aiohttp.ClientSession, bridge: Instance) -> dict[str, Any]:
    async with http.get(bridge.url + "/readyz") as resp:
        assert resp.status == 200
        return await resp.json()


async def reachable(http: aiohttp.ClientSession, bridge: Instance) -> bool:
    stores = (await readyz(http, bridge))["stores"]
    return all(store["reachable"] for store in stores.values())


async def test_a_burst_split_across_instances_passes_burst_in_all(
    tmp_path: Path, redis_server: RedisServer, echo_server: int
) -> None:
    config = write(tmp_path, redis_server.url, echo_server)
    async with instances(config, 3) as bridges, aiohttp.ClientSession() as http:
        passed = await echoes(http, bridges, 3 * BURST)
        assert sum(passed) == BURST
        assert passed == [2, 2, 2]  # round robin: every instance took from the one bucket
        status, headers, _ = await call(http, f"{bridges[0].url}/v1/echo/more")
        assert status == 429
        assert headers["RateLimit-Remaining"] == "0"
        assert int(headers["Retry-After"]) > 60


async def test_an_answer_cached_through_one_instance_is_a_hit_through_another(
    tmp_path: Path, redis_server: RedisServer, echo_server: int
) -> None:
    config = write(tmp_path, redis_server.url, echo_server)
    async with instances(config, 2) as (a, b), aiohttp.ClientSession() as http:
        first = await call(http, a.url + "/v1/stats")
        assert first[0] == 200 and first[1]["X-Cache"] == "MISS"
        again = await call(http, b.url + "/v1/stats")
        assert again[0] == 200 and again[1]["X-Cache"] == "HIT"
        assert json.loads(again[2]) == json.loads(first[2])  # the stats as A's call saw them


async def test_redis_killed_under_traffic_then_back(
    tmp_path: Path, redis_server: RedisServer, echo_server: int
) -> None:
    config = write(tmp_path, redis_server.url, echo_server)
    async with instances(config, 2) as bridges, aiohttp.ClientSession() as http:
        a, b = bridges
        assert await echoes(http, bridges, BURST + 2) == [3, 3]  # shared: burst in all
        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:  # cached calls on both instances, all along
            for bridge in itertools.cycle(bridges):
                if stop.is_set():
                    return
                statuses.append((await call(http, bridge.url + "/v1/stats"))[0])
                await asyncio.sleep(0.01)

        flowing = asyncio.create_task(traffic())
        await asyncio.sleep(0.2)
        await redis_server.kill(keep_data=False)  # and it comes back empty

        # Meanwhile each instance counts alone, from a full bucket: N times burst in all.
        assert await echoes(http, bridges, 2 * BURST + 4) == [BURST, BURST]
        for bridge in bridges:
            detail = await readyz(http, bridge)
            assert [s["reachable"] for s in detail["stores"].values()] == [False]
        status, headers, _ = await call(http, a.url + "/v1/stats")
        assert status == 200 and headers["X-Cache"] in ("HIT", "MISS")  # A's own memory

        await redis_server.start()
        deadline = time.monotonic() + 10
        while not all([await reachable(http, bridge) for bridge in bridges]):
            assert time.monotonic() < deadline, "the bridges did not see Redis again"
            await asyncio.sleep(0.1)
        stop.set()
        await flowing

        # Shared again, without a restart: Redis's bucket is full (its data was lost), and the
        # instances' own buckets are empty, so every call that passes was counted in Redis.
        assert sum(await echoes(http, bridges, BURST + 4)) == BURST
        mine, theirs = await call(http, a.url + "/v1/stats"), await call(http, b.url + "/v1/stats")
        assert theirs[1]["X-Cache"] == "HIT" and theirs[2] == mine[2]  # entries shared again
        assert set(statuses) == {200}, statuses  # every call answered, no 5xx, through it all
        assert len(statuses) > 10
    for bridge in bridges:
        text = "".join(bridge.log)
        assert text.count("is unreachable") == 1, text
        assert text.count("is reachable again") == 1, text


async def test_a_store_down_from_the_start_serves_and_hides_its_password(
    tmp_path: Path, echo_server: int
) -> None:
    from tests.redis_server import free_port

    secret = "s3cret-pass"
    url = f"redis://:{secret}@127.0.0.1:{free_port()}/0"  # nothing listens there
    config = write(tmp_path, url, echo_server)
    async with instances(config, 1) as [bridge], aiohttp.ClientSession() as http:
        assert await echoes(http, [bridge], BURST + 2) == [BURST]  # this instance's memory
        for path in ("/v1/stats", "/v1/stats"):
            status, _, _ = await call(http, bridge.url + path)
            assert status == 200
        detail = await readyz(http, bridge)
        assert secret not in json.dumps(detail)
        assert [s["reachable"] for s in detail["stores"].values()] == [False]
    text = "".join(bridge.log)
    assert secret not in text
    assert text.count("is unreachable") == 1, text
