"""The client's address: X-Forwarded-For believed only as far as a chain of trusted proxies.

The rule is nginx's ``real_ip_recursive on`` (and Envoy's XFF original-IP detection with
trusted CIDRs): the header is read only when the immediate peer is a trusted proxy, and then
right to left, because each proxy appends the address it saw. Trusted addresses are skipped;
the first untrusted one is the client. Everything left of it was written by the client or by
proxies nobody vouches for, so it is never read. An entry that is not an address ends the
walk at the last trusted hop, whose view is the best the bridge has; a forged value is never
used. When every entry is trusted, the leftmost is the client (nginx does the same).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

from aiohttp import web

# Hops read recently, with what they are: a proxy's peers and the addresses it writes repeat,
# and parsing an address costs microseconds where a cache hit costs tens of nanoseconds.
# Bounded, so that headers full of distinct addresses only push entries out.
_HOPS_CACHED: Final = 4096


class TrustedProxies:
    """The networks whose X-Forwarded-For the bridge believes; built once from the settings."""

    __slots__ = ("_hop", "_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network]) -> None:
        self.networks = tuple(networks)
        # (network address, netmask) as integers: a membership test is one AND and one compare.
        self._v4 = tuple(
            (int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4
        )
        self._v6 = tuple(
            (int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6
        )
        self._hop = functools.lru_cache(maxsize=_HOPS_CACHED)(self._read_hop)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address, from the socket's ``peer`` and the joined X-Forwarded-For.

        ``forwarded_for`` is every X-Forwarded-For header joined with ", " in the order
        received (None or "" when there is none). With no trusted proxies, or an untrusted
        peer, the answer is the peer itself; an address read from the header comes back in
        its canonical form (no port or brackets, lower case, IPv4-mapped IPv6 as IPv4).
        """
        if not self.networks or not forwarded_for or peer is None or not self.trusts(peer):
            return peer
        client = peer
        for entry in reversed(forwarded_for.split(",")):
            entry = entry.strip()
            if not entry:
                continue  # an empty list element (RFC 9110 5.6.1) says nothing
            hop = self._hop(entry)
            if hop is None:
                break  # not an address: stop at the last trusted hop
            client, trusted = hop
            if not trusted:
                break
        return client

    def trusts(self, address: str) -> bool:
        """Whether an address (as text) lies in one of the trusted networks."""
        hop = self._hop(address)
        return hop is not None and hop[1]

    def _read_hop(self, text: str) -> tuple[str, bool] | None:
        """An address's canonical text and whether it is trusted; None if it is no address."""
        address = _parse(text)
        if address is None:
            return None
        number = int(address)
        for network, mask in self._v4 if address.version == 4 else self._v6:
            if number & mask == network:
                return str(address), True
        return str(address), False


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    """An address as proxies write it: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``; else None."""
    bracketed = text.startswith("[")
    if bracketed:
        text, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv4Address):
        return None if bracketed else address  # brackets hold only IPv6 (RFC 3986 3.2.2)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


# The client's address as the bridge believes it, for a transport's request.
ClientAddress = Callable[[web.Request], "str | None"]


def client_address(proxies: TrustedProxies) -> ClientAddress:
    """The client address of a request: the peer, or what trusted proxies' X-Forwarded-For
    says; with no trusted proxies, the peer at no cost."""
    if not proxies.networks:
        return lambda request: request.remote

    def address(request: web.Request) -> str | None:
        forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        return proxies.client_address(request.remote, forwarded)

    return address
