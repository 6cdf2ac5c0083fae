"""The gateway's access lines have the shape of every other log line: ISO ``timestamp`` and
``logger`` besides their own fields."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.server import GatewayServer


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[GatewayServer, io.StringIO]]:
    table = {
        "services": {"shop": {"instances": ["http://127.0.0.1:9"], "health_path": None}},
        "routes": [{"prefix": "/shop", "service": "shop", "public": True}],
        "rate_limits": {"enabled": False},
    }
    log = io.StringIO()
    server = await serve(gateway_config(table), port=0, access_log=log)
    yield server, log
    await server.close(1)


async def lines(log: io.StringIO, count: int) -> list[dict[str, Any]]:
    """The first ``count`` access lines, once the gateway has written them."""
    deadline = asyncio.get_running_loop().time() + 5
    while len(log.getvalue().splitlines()) < count:
        assert asyncio.get_running_loop().time() < deadline, "no access line within 5 s"
        await asyncio.sleep(0.05)
    return [json.loads(x) for x in log.getvalue().splitlines()[:count]]


async def test_access_lines_carry_an_iso_timestamp_and_a_logger_like_app_lines(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    server, log = gateway
    before = datetime.now(UTC)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x00 / HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(reader.read(-1), 10)
    writer.close()

    routed, unparsed = await lines(log, 2)

    for line in (routed, unparsed):
        assert "ts" not in line
        assert line["logger"] == "ecosistema.gateway.access"
        assert line["event"] == "access"
        assert line["timestamp"].endswith("Z")
        at = datetime.fromisoformat(line["timestamp"])
        assert at.tzinfo is not None and at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= at <= datetime.now(UTC) + timedelta(seconds=1)
    assert (routed["status"], unparsed["route"]) == (404, "unparsed")
