"""Rate limits over real HTTP and WebSocket (SPEC 6): a bridge with `rate_limits` in front of the
example services, bursts sent at it, the 429s and headers it answers, recovery after 1/rate, and
X-Forwarded-For believed only from `trusted_proxies`."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import pytest

from tests.conftest import Bridge, StartBridge, demo_config
from tests.ws_client import connect, messages, status

BURST: Final = 5
RATE: Final = 2.0  # tokens a second: one back every 0.5 s
EVERY_METHOD: Final = [{"match": "*", "key": "ip", "rate": "2/s", "burst": BURST}]
ECHO: Final = "/v1/echo/hi"
RETRY_INFO: Final = "type.googleapis.com/google.rpc.RetryInfo"


@pytest.fixture
async def bridge(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    return await start_bridge(demo_config(users_server, echo_server, rate_limits=EVERY_METHOD))


async def burst(bridge: Bridge, count: int, **kwargs: Any) -> list[tuple[int, Any, Any]]:
    """``count`` GETs of the echo route sent at once."""
    return await asyncio.gather(*(bridge.json("GET", ECHO, **kwargs) for _ in range(count)))


def passed(answers: list[tuple[int, Any, Any]]) -> int:
    assert {code for code, _, _ in answers} <= {200, 429}, answers
    return sum(code == 200 for code, _, _ in answers)


async def test_exactly_burst_pass_then_429_with_headers(bridge: Bridge) -> None:
    answers = await burst(bridge, BURST + 4)
    allowed = [headers for code, _, headers in answers if code == 200]
    refused = [(body, headers) for code, body, headers in answers if code == 429]
    assert (len(allowed), len(refused)) == (BURST, 4)

    assert {h["RateLimit-Limit"] for h in allowed} == {"5"}
    # Reset: seconds (rounded up) until the bucket is full again, 0.5 s for each token taken.
    reset = {h["RateLimit-Remaining"]: h["RateLimit-Reset"] for h in allowed}
    assert reset == {"4": "1", "3": "1", "2": "2", "1": "2", "0": "3"}

    for body, headers in refused:
        assert headers["Retry-After"] == "1"  # 0.5 s to the next token: whole seconds, at least 1
        assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("5", "0")
        assert headers["RateLimit-Reset"] == "3"  # 2.5 s until full
        assert headers["Content-Type"].startswith("application/json")
        assert headers["X-Request-Id"]
        assert body["code"] == 8  # RESOURCE_EXHAUSTED, as a google.rpc.Status
        assert body["message"].startswith("rate limit exceeded")
        [detail] = body["details"]
        assert detail["@type"] == RETRY_INFO
        assert 0 < float(detail["retryDelay"].removesuffix("s")) <= 0.5


async def test_one_more_passes_after_one_over_rate(bridge: Bridge) -> None:
    assert passed(await burst(bridge, BURST + 2)) == BURST
    await asyncio.sleep(1 / RATE + 0.05)
    code, _, headers = await bridge.json("GET", ECHO)
    assert (code, headers["RateLimit-Remaining"]) == (200, "0")
    assert (await bridge.json("GET", ECHO))[0] == 429


async def test_one_rule_counts_every_method_of_a_client(bridge: Bridge) -> None:
    """A `*` rule is one bucket per client: REST calls to two services share it."""
    users = [bridge.json("GET", "/v1/users/1") for _ in range(3)]
    echoes = [bridge.json("GET", ECHO) for _ in range(3)]
    assert passed(await asyncio.gather(*users, *echoes)) == BURST


async def test_methods_no_rule_matches_carry_no_headers(start_bridge, users_server, echo_server):
    rules = [{"match": "demo.users.v1.*", "key": "ip", "rate": "2/s", "burst": 1}]
    bridge = await start_bridge(demo_config(users_server, echo_server, rate_limits=rules))
    answers = await burst(bridge, 3)
    assert passed(answers) == 3
    assert not [h for _, _, h in answers if "RateLimit-Limit" in h]
    assert (await bridge.json("GET", "/v1/users/1"))[0] == 200
    assert (await bridge.json("GET", "/v1/users/1"))[0] == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(bridge: Bridge) -> None:
    assert passed(await burst(bridge, BURST + 1)) == BURST
    forged = {"X-Forwarded-For": "198.51.100.7"}
    assert passed(await burst(bridge, 2, headers=forged)) == 0  # still the peer's bucket


async def test_forwarded_for_from_a_trusted_proxy_is_the_client(
    start_bridge, users_server, echo_server
):
    proxies = ["127.0.0.1/32", "10.0.0.0/8"]
    config = demo_config(users_server, echo_server, rate_limits=EVERY_METHOD)
    bridge = await start_bridge({**config, "trusted_proxies": proxies})
    one, two = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "6.6.6.6, 198.51.100.8"}
    assert passed(await burst(bridge, BURST + 2, headers=one)) == BURST
    assert passed(await burst(bridge, BURST + 2, headers=two)) == BURST  # another client
    assert passed(await burst(bridge, BURST + 2)) == BURST  # the proxy's own calls
    # A client cannot escape its bucket by prepending addresses: the proxy appended the real one.
    forged = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    assert passed(await burst(bridge, 2, headers=forged)) == 0
    # Two X-Forwarded-For headers are one list, read from the last one's end.
    for split in (["6.6.6.6", "198.51.100.8"], ["198.51.100.8", "10.9.9.9"]):
        headers = [("X-Forwarded-For", value) for value in split]
        assert passed(await burst(bridge, 2, headers=headers)) == 0, split


async def test_api_keys_are_counted_separately(start_bridge, users_server, echo_server):
    auth = {
        "api_keys": {"header": "x-api-key", "keys": "alice=alice-key-0123,bob=bob-key-456789"},
        "rules": [{"match": "*", "require": "any"}],
    }
    rules = [{"match": "*", "key": "api_key", "rate": "2/s", "burst": 2}]
    config = demo_config(users_server, echo_server, auth=auth, rate_limits=rules)
    bridge = await start_bridge(config)
    alice, bob = {"x-api-key": "alice-key-0123"}, {"x-api-key": "bob-key-456789"}
    assert passed(await burst(bridge, 4, headers=alice)) == 2
    assert passed(await burst(bridge, 4, headers=bob)) == 2  # same address, another key
    code, _, _ = await bridge.json("GET", ECHO)
    assert code == 401  # auth runs first: an anonymous call never takes a token


async def test_ws_call_over_the_limit_is_resource_exhausted_and_the_socket_stays(
    bridge: Bridge,
) -> None:
    async with connect(bridge.url) as ws:
        for n in range(BURST):
            assert status(await ws.call(n, "Echo", {"message": "hi"}))["code"] == 0
        frames = await ws.call("over", "Echo", {"message": "hi"})
        assert messages(frames) == []
        refused = status(frames)
        assert refused["code"] == 8
        assert refused["message"].startswith("rate limit exceeded")
        assert (await bridge.json("GET", ECHO))[0] == 429  # REST and WebSocket share the bucket
        await asyncio.sleep(1 / RATE + 0.05)
        assert status(await ws.call("again", "Echo", {"message": "hi"}))["code"] == 0
