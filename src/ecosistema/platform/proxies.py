"""Trusted proxies: which peers may say who the client is, and the client their
``X-Forwarded-For`` names.

A proxy appends the address of the peer it received the request from, so the chain grows to the
right and only the hops written by proxies we trust can be believed. The walk, as nginx's realip
module (``real_ip_recursive on``) and Kong's ``trusted_ips`` do it: a peer that is not trusted is
the client and its header is ignored. From a trusted peer, ``X-Forwarded-For`` is read from the
right, skipping trusted addresses; the first address that is not trusted is the client. If every
address is trusted, the leftmost is. An entry that is not an IP address (empty, a name,
``unknown``, garbage) ends the walk: the client is then the last address read before it, which
is the peer itself when the rightmost entry is the bad one. An entry may carry a port
(``192.0.2.1:4711``, ``[2001:db8::1]:4711``), which is dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Verdicts kept per address string: peers and proxy hops repeat, so the parse and the network
# scan are done once for each; bounded, as any address on the internet may connect.
_VERDICTS_KEPT = 4096


def proxy_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The networks of a trusted-proxy list (addresses or CIDR networks, IPv4 or IPv6), or
    ``ValueError`` naming the first entry that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8 or fc00::/7)"
            ) from None
    return tuple(networks)


def parse_hop(text: str) -> IPAddress | None:
    """The address of one ``X-Forwarded-For`` entry (its port dropped), or None if it has none."""
    text = text.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
    else:
        host, colon, port = text.partition(":")
        if not colon or not port.isdigit():
            return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed, and the client address it names."""

    __slots__ = ("_addresses", "_networks", "_verdicts")

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = proxy_networks(entries)
        # Per address string: whether it is trusted. Per X-Forwarded-For entry: its address,
        # normalised, or "" when it is not one.
        self._verdicts: dict[str, bool] = {}
        self._addresses: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (as a socket reports it) is one of the trusted proxies."""
        verdict = self._verdicts.get(address)
        if verdict is None:
            parsed = parse_hop(address)
            verdict = parsed is not None and self._contains(parsed)
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _contains(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _address(self, hop: str) -> str:
        address = self._addresses.get(hop)
        if address is None:
            parsed = parse_hop(hop)
            address = "" if parsed is None else str(parsed)
            if len(self._addresses) >= _VERDICTS_KEPT:
                self._addresses.clear()
            self._addresses[hop] = address
        return address

    def client(self, peer: str, forwarded_for: str | None) -> tuple[str, list[str]]:
        """The client address of a request from ``peer``, and the entries of ``forwarded_for``
        from that client rightwards (empty when the client is the peer)."""
        if not forwarded_for or not self.trusts(peer):
            return peer, []
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        client = peer
        first = len(hops)
        for index in range(len(hops) - 1, -1, -1):
            address = self._address(hops[index])
            if not address:
                break
            client = address
            first = index
            if not self.trusts(address):
                break
        return client, hops[first:]
