"""``/readyz``: ready once serving whatever one upstream does; ``?upstreams=all`` is strict."""

from __future__ import annotations

from tests.conftest import demo_config


async def test_one_dead_upstream_leaves_the_bridge_ready(start_bridge, users_server):
    # Port 1: nobody listens there, so the echo upstream is unreachable.
    bridge = await start_bridge(demo_config(users_server, 1))
    status, body, headers = await bridge.json("GET", "/readyz")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["ready"] is True
    assert body["upstreams_ready"] is False
    assert body["upstreams"]["echo"]["ready"] is False
    assert "127.0.0.1:1" in body["upstreams"]["echo"]["targets"]
    assert body["upstreams"]["users"]["ready"] is True


async def test_upstreams_all_is_503_while_one_is_down(start_bridge, users_server):
    bridge = await start_bridge(demo_config(users_server, 1))
    status, body, _ = await bridge.json("GET", "/readyz?upstreams=all")
    assert status == 503, body
    assert body["ready"] is False
    assert body["upstreams"]["echo"]["ready"] is False


async def test_upstreams_all_is_200_when_every_upstream_is_up(demo):
    status, body, _ = await demo.json("GET", "/readyz?upstreams=all")
    assert status == 200, body
    assert body["ready"] is True
    assert body["upstreams_ready"] is True
    assert set(body["upstreams"]) == {"users", "echo"}
