"""The client address behind trusted proxies, as identity reads it from its own requests (the
gateway's tests are in test_gateway_client_ip.py): the same rule in both places."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from ecosistema.identity.api import client_ip
from ecosistema.platform.config import Settings
from ecosistema.platform.proxies import TrustedProxies, parse_hop


def _request(peer: str, *forwarded_for: bytes) -> Request:
    headers = [(b"x-forwarded-for", value) for value in forwarded_for]
    return Request({"type": "http", "headers": headers, "client": (peer, 4711)})


@pytest.mark.parametrize(
    "peer, forwarded_for, client",
    [
        ("198.51.100.1", (b"203.0.113.5",), "198.51.100.1"),  # untrusted peer: not believed
        ("10.0.0.2", (b"6.6.6.6, 203.0.113.5, 10.1.0.1",), "203.0.113.5"),
        ("10.0.0.2", (b"6.6.6.6, 203.0.113.5", b"10.1.0.1"), "203.0.113.5"),
        ("10.0.0.2", (b"10.7.0.1, 10.1.0.1",), "10.7.0.1"),  # all trusted: the leftmost
        ("10.0.0.2", (b"203.0.113.5, bogus, 10.1.0.1",), "10.1.0.1"),  # the last good hop
        ("10.0.0.2", (b"203.0.113.5, bogus",), "10.0.0.2"),
        ("10.0.0.2", (), "10.0.0.2"),
        ("fd00::2", (b"2001:db8::7, fd00::9",), "2001:db8::7"),
    ],
)
def test_identity_takes_the_client_by_the_gateways_rule(
    peer: str, forwarded_for: tuple[bytes, ...], client: str
) -> None:
    settings = Settings(trusted_proxies=["10.0.0.0/8", "fd00::/8"])
    assert client_ip(_request(peer, *forwarded_for), settings) == client


def test_without_trusted_proxies_identity_ignores_forwarded_for() -> None:
    assert client_ip(_request("10.0.0.2", b"203.0.113.5"), Settings()) == "10.0.0.2"


@pytest.mark.parametrize(
    "hop, address",
    [
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:4711", "192.0.2.1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("192.0.2.1:port", None),
        ("[2001:db8::1", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_a_forwarded_for_entry_is_an_address_with_an_optional_port(
    hop: str, address: str | None
) -> None:
    parsed = parse_hop(hop)
    assert (str(parsed) if parsed is not None else None) == address


def test_verdicts_stay_bounded_whoever_connects() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for n in range(10_000):
        proxies.trusts(f"203.0.{n // 256 % 256}.{n % 256}")
    assert proxies.trusts("10.1.2.3") and not proxies.trusts("203.0.113.1")
    assert len(proxies._verdicts) <= 4096
