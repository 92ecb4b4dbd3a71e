"""Unit tests of the client address (bridge.edge.proxies): X-Forwarded-For is believed only
from trusted proxies, read right to left, and a forged or malformed entry is never the answer.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from bridge.edge.proxies import TrustedProxies

PROXIES = TrustedProxies([ip_network("10.0.0.0/8"), ip_network("2001:db8:1::/48")])
NONE = TrustedProxies([])


@pytest.mark.parametrize(
    "peer, forwarded_for, client",
    [
        pytest.param("203.0.113.7", None, "203.0.113.7", id="no-header"),
        pytest.param("10.0.0.2", None, "10.0.0.2", id="trusted-peer-no-header"),
        pytest.param("10.0.0.2", "", "10.0.0.2", id="trusted-peer-empty-header"),
        pytest.param("203.0.113.7", "198.51.100.1", "203.0.113.7", id="forged-by-untrusted-peer"),
        pytest.param("203.0.113.7", "10.0.0.9", "203.0.113.7", id="untrusted-claims-trusted"),
        pytest.param("10.0.0.2", "198.51.100.1", "198.51.100.1", id="one-proxy"),
        pytest.param(
            "10.0.0.2", "6.6.6.6, 198.51.100.1", "198.51.100.1", id="client-prepended-forgery"
        ),
        pytest.param(
            "10.0.0.2", "6.6.6.6, 198.51.100.1, 10.1.1.1", "198.51.100.1", id="two-proxies"
        ),
        pytest.param("10.0.0.2", "10.3.3.3, 10.1.1.1", "10.3.3.3", id="all-trusted-leftmost"),
        pytest.param("10.0.0.2", "198.51.100.1,10.1.1.1", "198.51.100.1", id="no-space"),
        pytest.param("10.0.0.2", " 198.51.100.1 ,  ", "198.51.100.1", id="empty-elements"),
        pytest.param("10.0.0.2", "198.51.100.1:4711", "198.51.100.1", id="ipv4-with-port"),
        pytest.param("10.0.0.2", "2001:DB8::5", "2001:db8::5", id="ipv6-canonical"),
        pytest.param("10.0.0.2", "[2001:db8::5]:443", "2001:db8::5", id="ipv6-bracket-port"),
        pytest.param("10.0.0.2", "[2001:db8::5]", "2001:db8::5", id="ipv6-bracket"),
        pytest.param("10.0.0.2", "::ffff:198.51.100.1", "198.51.100.1", id="ipv4-mapped"),
        pytest.param("2001:db8:1::9", "198.51.100.1", "198.51.100.1", id="ipv6-peer-trusted"),
        pytest.param("2001:db8:2::9", "198.51.100.1", "2001:db8:2::9", id="ipv6-peer-untrusted"),
        pytest.param("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1", id="mapped-peer"),
        pytest.param(
            "10.0.0.2", "2001:db8:1::3, 10.1.1.1", "2001:db8:1::3", id="mixed-all-trusted"
        ),
        pytest.param("10.0.0.2", "unknown", "10.0.0.2", id="garbage-only"),
        pytest.param("10.0.0.2", "198.51.100.1, garbage", "10.0.0.2", id="garbage-rightmost"),
        pytest.param(
            "10.0.0.2", "198.51.100.1, junk, 10.1.1.1", "10.1.1.1", id="garbage-behind-trusted"
        ),
        pytest.param(
            "10.0.0.2", "junk, 198.51.100.1, 10.1.1.1", "198.51.100.1", id="garbage-left-unread"
        ),
        pytest.param("10.0.0.2", "198.51.100.1:", "10.0.0.2", id="empty-port"),
        pytest.param("10.0.0.2", "198.51.100.1:99999a", "10.0.0.2", id="bad-port"),
        pytest.param("10.0.0.2", "198.51.100.1:\u0664\u0664", "10.0.0.2", id="non-ascii-port"),
        pytest.param("10.0.0.2", "[2001:db8::5", "10.0.0.2", id="unclosed-bracket"),
        pytest.param("10.0.0.2", "[2001:db8::5]x", "10.0.0.2", id="junk-after-bracket"),
        pytest.param("10.0.0.2", "[198.51.100.1]", "10.0.0.2", id="ipv4-in-brackets"),
        pytest.param("10.0.0.2", "198.051.100.1", "10.0.0.2", id="leading-zero"),
        pytest.param("10.0.0.2", "198.51.100.1/32", "10.0.0.2", id="network-not-address"),
        pytest.param("10.0.0.2", "999.1.1.1", "10.0.0.2", id="out-of-range"),
        pytest.param(None, "198.51.100.1", None, id="no-peer"),
        pytest.param("", "198.51.100.1", "", id="empty-peer"),
        pytest.param("not-an-ip", "198.51.100.1", "not-an-ip", id="peer-not-an-address"),
    ],
)
def test_client_address(peer: str | None, forwarded_for: str | None, client: str | None) -> None:
    assert PROXIES.client_address(peer, forwarded_for) == client


@pytest.mark.parametrize(
    "peer, forwarded_for",
    [
        pytest.param("10.0.0.2", "198.51.100.1", id="private-peer"),
        pytest.param("127.0.0.1", "198.51.100.1", id="loopback-peer"),
        pytest.param("203.0.113.7", "garbage", id="garbage"),
    ],
)
def test_no_trusted_proxies_means_the_peer(peer: str, forwarded_for: str) -> None:
    assert NONE.client_address(peer, forwarded_for) == peer


def test_several_headers_joined_in_order() -> None:
    """Two X-Forwarded-For headers are one list, the second header's entries last."""
    headers = ["6.6.6.6, 198.51.100.1", "10.1.1.1"]
    assert PROXIES.client_address("10.0.0.2", ", ".join(headers)) == "198.51.100.1"


def test_a_long_forged_prefix_is_not_read() -> None:
    forged = ", ".join(f"6.6.6.{i % 250}" for i in range(500))
    assert PROXIES.client_address("10.0.0.2", forged + ", 198.51.100.1") == "198.51.100.1"


@pytest.mark.parametrize(
    "address, trusted",
    [
        ("10.0.0.0", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("9.255.255.255", False),
        ("2001:db8:1:ffff::1", True),
        ("2001:db8:2::1", False),
        ("::ffff:10.0.0.1", True),
        ("::10.0.0.1", False),  # IPv4-compatible, not mapped: an IPv6 address
        ("garbage", False),
        ("", False),
    ],
)
def test_trusts(address: str, trusted: bool) -> None:
    assert PROXIES.trusts(address) is trusted


def test_single_host_network() -> None:
    proxies = TrustedProxies([ip_network("127.0.0.1/32"), ip_network("::1/128")])
    assert proxies.client_address("127.0.0.1", "198.51.100.1") == "198.51.100.1"
    assert proxies.client_address("::1", "198.51.100.1") == "198.51.100.1"
    assert proxies.client_address("127.0.0.2", "198.51.100.1") == "127.0.0.2"


def test_answers_hold_past_the_cache() -> None:
    """More distinct addresses than the hop cache holds: each answer is still read afresh."""
    proxies = TrustedProxies([ip_network("10.0.0.0/8")])
    for i in range(6000):
        client = f"198.51.{i // 250}.{i % 250}"
        assert proxies.client_address("10.0.0.2", f"{client}, 10.1.{i // 250}.{i % 250}") == client
        assert proxies.client_address(client, "10.0.0.9") == client
