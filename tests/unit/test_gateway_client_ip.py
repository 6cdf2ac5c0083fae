"""The client address behind trusted proxies: read from X-Forwarded-For only when the TCP peer is
a trusted proxy, and then used for the rate limit, the access log and the chain sent on."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ecosistema.gateway.config import config_problems, gateway_config
from ecosistema.gateway.proxy import ClientConnection, Gateway
from ecosistema.gateway.upstream import UpstreamConnection
from ecosistema.platform.config import Settings

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
LB = "10.0.0.7"  # the load balancer in front of the gateway


class MemoryTransport:
    def __init__(self, peer: str = LB) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _gateway(**extra: Any) -> Gateway:
    table = {
        "services": {"tiny": {"instances": ["http://127.0.0.1:9"], "health_path": None}},
        "routes": [{"prefix": "/", "service": "tiny", "public": True}],
        "rate_limits": {"anonymous": {"rate": 0.001, "burst": 1}},
        **extra,
    }
    return Gateway(gateway_config(table), access_log=io.StringIO())


class Peer:
    """A client connection from ``address`` with one pooled upstream connection behind it."""

    def __init__(self, gateway: Gateway, address: str = LB) -> None:
        self.gateway = gateway
        self.upstream = UpstreamConnection()
        self.upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
        [pool] = gateway.pools.values()
        pool.release(self.upstream)
        self.conn = ClientConnection(gateway)
        self.out = MemoryTransport(address)
        self.conn.connection_made(self.out)  # type: ignore[arg-type]

    def get(self, *forwarded_for: str) -> tuple[int, str | None]:
        """The status of a GET with these X-Forwarded-For headers, and the X-Forwarded-For the
        upstream was sent (None when it was not reached)."""
        sent: list[bytes] = self.upstream.transport.written  # type: ignore[union-attr]
        before = len(sent)
        headers = b"".join(b"X-Forwarded-For: %s\r\n" % h.encode() for h in forwarded_for)
        self.conn.data_received(b"GET /items HTTP/1.1\r\nHost: shop.example\r\n%s\r\n" % headers)
        forwarded = None
        if len(sent) > before:
            [forwarded] = re.findall(r"\r\nx-forwarded-for: ([^\r]*)\r\n", sent[-1].decode())
            self.upstream.data_received(RESPONSE)
        status = int(self.out.written[-1].split(b" ", 2)[1])
        return status, forwarded


def _clients_logged(gateway: Gateway) -> list[str]:
    gateway._flush_log()
    log = gateway._access_log
    assert isinstance(log, io.StringIO)
    return [json.loads(line)["client"] for line in log.getvalue().splitlines()]


async def test_forwarded_for_from_an_untrusted_peer_is_neither_believed_nor_passed_on() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"], trust_forwarded=True)
    peer = Peer(gateway, "198.51.100.4")
    assert peer.get("203.0.113.1") == (200, "198.51.100.4")
    # Another forged address does not buy a fresh bucket: the peer's is spent.
    assert peer.get("203.0.113.2") == (429, None)
    assert _clients_logged(gateway) == ["198.51.100.4", "198.51.100.4"]
    await gateway.close()


async def test_a_trusted_proxy_names_the_client_for_the_log_and_the_chain_sent_on() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"])
    peer = Peer(gateway)
    # The leftmost entry is the client's own claim, beyond the first untrusted hop: dropped.
    assert peer.get("1.1.1.1, 203.0.113.9") == (200, f"203.0.113.9, {LB}")
    assert _clients_logged(gateway) == ["203.0.113.9"]
    await gateway.close()


async def test_two_clients_behind_one_trusted_proxy_have_a_bucket_each() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"])
    peer = Peer(gateway)
    assert peer.get("203.0.113.1")[0] == 200
    assert peer.get("203.0.113.2")[0] == 200
    assert peer.get("203.0.113.1")[0] == 429
    assert _clients_logged(gateway) == ["203.0.113.1", "203.0.113.2", "203.0.113.1"]
    await gateway.close()


async def test_the_walk_skips_every_trusted_hop_from_the_right() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8", "192.168.1.10"])
    peer = Peer(gateway)
    # Two X-Forwarded-For headers are one list, in order.
    status, sent = peer.get("6.6.6.6, 198.51.100.7, 192.168.1.10", "10.2.0.5")
    assert (status, sent) == (200, f"198.51.100.7, 192.168.1.10, 10.2.0.5, {LB}")
    assert _clients_logged(gateway) == ["198.51.100.7"]
    await gateway.close()


async def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"])
    assert Peer(gateway).get("10.9.9.9, 10.1.1.1")[1] == f"10.9.9.9, 10.1.1.1, {LB}"
    assert _clients_logged(gateway) == ["10.9.9.9"]
    await gateway.close()


async def test_ipv6_proxies_and_clients() -> None:
    gateway = _gateway(trusted_proxies=["fd00::/8", "2001:db8:ffff::1"])
    peer = Peer(gateway, "fd00::7")
    status, sent = peer.get("2001:DB8::42, [2001:db8:ffff::1]:443")
    assert (status, sent) == (200, "2001:DB8::42, [2001:db8:ffff::1]:443, fd00::7")
    assert Peer(gateway, "2001:db8::99").get("2001:db8::42")[1] == "2001:db8::99"
    assert _clients_logged(gateway) == ["2001:db8::42", "2001:db8::99"]
    await gateway.close()


async def test_an_ipv4_peer_on_a_dual_stack_socket_is_matched_as_ipv4() -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"])
    Peer(gateway, "::ffff:10.0.0.7").get("203.0.113.5")
    assert _clients_logged(gateway) == ["203.0.113.5"]
    await gateway.close()


@pytest.mark.parametrize(
    "forwarded_for, client, sent",
    [
        # A malformed entry ends the walk at the last good hop read before it.
        ("203.0.113.1, junk, 10.3.3.3", "10.3.3.3", f"10.3.3.3, {LB}"),
        ("203.0.113.1, 10.3.3.3, unknown", LB, LB),
        ("203.0.113.1,, 10.3.3.3", "10.3.3.3", f"10.3.3.3, {LB}"),
        ("", LB, LB),
        # An untrusted hop before any malformed one is the client, as usual.
        ("junk, 203.0.113.1, 10.3.3.3", "203.0.113.1", f"203.0.113.1, 10.3.3.3, {LB}"),
    ],
)
async def test_a_malformed_entry_stops_the_walk(forwarded_for: str, client: str, sent: str) -> None:
    gateway = _gateway(trusted_proxies=["10.0.0.0/8"])
    assert Peer(gateway).get(forwarded_for) == (200, sent)
    assert _clients_logged(gateway) == [client]
    await gateway.close()


async def test_trust_forwarded_alone_passes_the_chain_on_but_limits_by_peer() -> None:
    gateway = _gateway(trust_forwarded=True)
    peer = Peer(gateway)
    assert peer.get("203.0.113.1") == (200, f"203.0.113.1, {LB}")
    assert peer.get("203.0.113.2") == (429, None)
    assert _clients_logged(gateway) == [LB, LB]
    await gateway.close()


@pytest.mark.parametrize("entry", ["10.0.0.300", "10.0.0.0/33", "lb.internal", "fd00::/129"])
def test_an_invalid_trusted_proxy_is_refused_naming_the_entry(entry: str) -> None:
    table = {
        "services": {"tiny": {"instances": ["http://127.0.0.1:9"]}},
        "routes": [{"prefix": "/", "service": "tiny"}],
        "trusted_proxies": ["10.0.0.0/8", entry],
    }
    with pytest.raises(ValidationError) as refused:
        gateway_config(table)
    assert config_problems(refused.value) == [
        f"trusted_proxies: {entry!r} is not an IP address or CIDR network"
        " (e.g. 10.0.0.0/8 or fc00::/7)"
    ]


def test_trusted_proxies_default_to_the_settings_and_the_table_wins() -> None:
    table: dict[str, Any] = {
        "services": {"tiny": {"instances": ["http://127.0.0.1:9"]}},
        "routes": [{"prefix": "/", "service": "tiny"}],
    }
    settings = Settings(trusted_proxies=["10.0.0.0/8", " fd00::/8"])
    assert gateway_config(table, settings).trusted_proxies == ["10.0.0.0/8", "fd00::/8"]
    table["trusted_proxies"] = ["192.0.2.1"]
    assert gateway_config(table, settings).trusted_proxies == ["192.0.2.1"]


def test_the_gateway_command_refuses_a_bad_trusted_proxy_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ecosistema.cli import app
    from ecosistema.platform.config import get_settings

    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "services": {"tiny": {"instances": ["http://127.0.0.1:9"]}},
                "routes": [{"prefix": "/", "service": "tiny"}],
                "trusted_proxies": ["10.0.0.0/8", "10.0.0.300"],
            }
        )
    )
    monkeypatch.setenv("ECOSISTEMA_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["gateway", "--routes", str(routes), "--port", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: route table {routes}: trusted_proxies: '10.0.0.300' is not an IP address or"
        " CIDR network (e.g. 10.0.0.0/8 or fc00::/7)"
    ]
