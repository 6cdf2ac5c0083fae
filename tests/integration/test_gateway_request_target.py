"""The gateway is an origin server: request targets are paths; proxy forms are refused."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.server import GatewayServer


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayServer]:
    table = {
        "services": {"shop": {"instances": ["http://127.0.0.1:9"], "health_path": None}},
        "routes": [{"prefix": "/healthz", "service": "shop", "public": True}],
        "rate_limits": {"enabled": False},
    }
    server = await serve(gateway_config(table), port=0, access_log=io.StringIO())
    yield server
    await server.close(1)


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://evil.example/healthz HTTP/1.1",
        b"GET https://127.0.0.1/healthz HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ],
)
async def test_a_request_target_that_is_not_a_path_is_a_400(
    gateway: GatewayServer, request_line: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request_line + b"\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"application/problem+json" in data
    assert b"The request path is not valid." in data


async def test_connect_is_refused_the_gateway_tunnels_nothing(gateway: GatewayServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\n\r\n")
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"application/problem+json" in data
