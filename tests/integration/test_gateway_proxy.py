"""The proxy over real processes on loopback: routing, headers, streaming, keep-alive."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.server import GatewayServer
from tests.integration.test_gateway_upstream import start_gateway, start_upstream, stop

MB = 1024 * 1024


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    proc, url = start_upstream("a")
    yield url
    stop(proc)


def table(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "services": {"echo": {"instances": [url], "health_path": None}},
        "routes": [
            {"prefix": "/echo", "service": "echo", "public": True, "max_body_bytes": 64 * MB},
            {"prefix": "/stream", "service": "echo", "public": True, "methods": ["GET"]},
            {"prefix": "/status", "service": "echo", "public": True},
            {"prefix": "/api/", "service": "echo", "public": True},
        ],
        "cors": {"allow_origins": ["https://shop.example"]},
        "rate_limits": {"enabled": False},
        **extra,
    }


@pytest.fixture
async def gateway(upstream: str) -> AsyncIterator[tuple[GatewayServer, io.StringIO]]:
    log = io.StringIO()
    server = await serve(gateway_config(table(upstream)), port=0, access_log=log)
    yield server, log
    await server.close(1)


def client(server: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)


async def test_unknown_path_is_a_404_problem(gateway: tuple[GatewayServer, io.StringIO]) -> None:
    async with client(gateway[0]) as c:
        response = await c.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/not-found")


async def test_method_not_on_the_route_is_a_405_with_allow(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        response = await c.post("/stream", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["status"] == 405


async def test_an_edge_answer_to_a_request_with_a_body_keeps_the_connection(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    try:
        for _ in range(2):
            writer.write(b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 405 ")
            assert b"connection: close" not in head.lower()
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
    finally:
        writer.close()


async def test_dot_segments_cannot_escape_a_route(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        response = await c.get("/echo/%2e%2e/admin")
    assert response.status_code == 400


async def test_request_reaches_the_service_with_forwarded_headers_and_no_hop_by_hop(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    headers = {
        "connection": "keep-alive, x-secret-hop",
        "x-secret-hop": "1",
        "te": "trailers",
        "x-forwarded-for": "6.6.6.6",
        "x-ecosistema-principal": "forged",
        "x-principal": "forged",
        "x-custom": "kept",
    }
    async with client(gateway[0]) as c:
        response = await c.get("/echo/a?q=1", headers=headers)
    body = response.json()
    seen = body["headers"]
    assert body["path"] == "/echo/a" and body["query"] == "q=1"
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{gateway[0].port}"]
    assert seen["x-custom"] == ["kept"]
    for dropped in ("x-secret-hop", "te", "x-ecosistema-principal", "x-principal"):
        assert dropped not in seen
    assert seen["x-request-id"] == [response.headers["x-request-id"]]
    assert seen["traceparent"][0].startswith("00-")
    # The upstream answers with Connection: x-drop-me and Keep-Alive; neither reaches the client.
    assert "x-drop-me" not in response.headers and "keep-alive" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in response.headers


async def test_incoming_request_id_and_traceparent_are_kept(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with client(gateway[0]) as c:
        response = await c.get("/echo", headers={"x-request-id": "req-42", "traceparent": trace})
    assert response.headers["x-request-id"] == "req-42"
    assert response.json()["headers"]["traceparent"] == [trace]


async def test_each_request_writes_one_json_access_log_line(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        response = await c.get("/echo/logged", headers={"x-request-id": "log-me"})
    # Lines are written in batches, at the latest a second after the request.
    deadline = asyncio.get_running_loop().time() + 5
    while '"log-me"' not in gateway[1].getvalue():
        assert asyncio.get_running_loop().time() < deadline, "no access line within 5 s"
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in gateway[1].getvalue().splitlines()]
    entry = next(e for e in lines if e["request_id"] == "log-me")
    assert response.status_code == 200
    assert entry["status"] == 200 and entry["path"] == "/echo/logged" and entry["route"] == "/echo"
    assert len(entry["trace_id"]) == 32


async def test_upstream_connections_are_kept_alive_and_reused(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        ports = {(await c.get("/echo")).json()["client_port"] for _ in range(20)}
    assert len(ports) == 1
    pool = next(iter(gateway[0].gateway.pools.values()))
    assert pool.opened == 1


async def test_chunked_response_of_unknown_length_is_streamed_whole(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c, c.stream("GET", "/stream?size=1000000&chunk=7000") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        total = 0
        async for part in r.aiter_raw():
            total += len(part)
    assert total == 1_000_000


async def test_head_request_gets_headers_and_no_body(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        head = await c.head("/echo")
        after = await c.get("/echo")
    assert head.status_code == 200 and head.content == b""
    assert after.status_code == 200 and after.json()["method"] == "GET"


async def test_chunked_request_body_arrives_whole(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    parts = [bytes([i]) * 10_000 for i in range(50)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with client(gateway[0]) as c:
        response = await c.post("/echo/upload", content=body())
    result = response.json()
    assert result["body_length"] == 500_000
    assert result["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_body_over_the_limit_is_a_413(upstream: str) -> None:
    config = gateway_config({**table(upstream), "max_body_bytes": 1000})
    server = await serve(config, port=0, access_log=io.StringIO())
    try:
        async with client(server) as c:
            announced = await c.post("/stream-not", content=b"x")
            too_big = await c.post("/status/200", content=b"x" * 5000)

            async def body() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"y" * 500

            streamed = await c.post("/api/upload", content=body())
    finally:
        await server.close(1)
    assert announced.status_code == 404
    assert too_big.status_code == 413 and too_big.json()["type"].endswith("/payload-too-large")
    assert streamed.status_code == 413


async def test_pipelined_requests_are_answered_in_order(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    writer.write(
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/203 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"201", b"202", b"203"]


async def test_malformed_request_is_a_400(gateway: tuple[GatewayServer, io.StringIO]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    writer.write(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400")
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    # Even an answer to no request at all can be quoted: it has an id, and the usual headers,
    # and the access log has a line with that id.
    found = re.search(rb"\r\nx-request-id: ([0-9a-f]{16,})\r\n", head + b"\r\n")
    assert found is not None
    assert b"\r\nx-content-type-options: nosniff" in head
    line = await access_line(gateway[1], found.group(1).decode())
    assert (line["status"], line["route"], line["method"]) == (400, "unparsed", None)


async def access_line(log: io.StringIO, request_id: str) -> dict[str, Any]:
    """The access-log line of ``request_id``, once the gateway has written it."""
    deadline = asyncio.get_running_loop().time() + 5
    while f'"{request_id}"' not in log.getvalue():
        assert asyncio.get_running_loop().time() < deadline, "no access line within 5 s"
        await asyncio.sleep(0.05)
    [line] = [json.loads(x) for x in log.getvalue().splitlines() if f'"{request_id}"' in x]
    return cast(dict[str, Any], line)


async def test_a_request_head_over_the_limit_is_a_431(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    writer.write(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 431"), data[:100]
    assert b"headers-too-large" in data


async def test_a_protocol_upgrade_is_a_501(gateway: tuple[GatewayServer, io.StringIO]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 501"), data[:100]
    assert re.search(rb"\r\nx-request-id: [0-9a-zA-Z-]+\r\n", data)


async def test_a_broken_chunked_body_is_a_400_not_a_silent_close(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway[0].port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nzz\r\nnot a chunk\r\n"
    )
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400")
    assert b"application/problem+json" in data and b"bad-request" in data
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", data)) == 1
    assert re.search(rb"\r\nx-request-id: [0-9a-zA-Z-]+\r\n", data)


async def test_cors_preflight_and_response_headers_follow_the_config(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        allowed = await c.options(
            "/echo",
            headers={"origin": "https://shop.example", "access-control-request-method": "POST"},
        )
        denied = await c.options(
            "/echo",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        simple = await c.get("/echo", headers={"origin": "https://shop.example"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert denied.status_code == 403
    assert simple.headers["access-control-allow-origin"] == "https://shop.example"
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]


async def test_metrics_count_requests_per_route_and_upstream(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        for _ in range(3):
            await c.get("/status/200")
        text = (await c.get("/metrics")).text
    assert (
        'ecosistema_gateway_requests_total{method="GET",route="/status",status="200"} 3.0' in text
    )
    assert "ecosistema_gateway_upstream_requests_total" in text
    assert "ecosistema_gateway_request_duration_seconds_bucket" in text


async def test_the_gateways_own_paths_are_counted_under_their_path_and_the_rest_unmatched(
    gateway: tuple[GatewayServer, io.StringIO],
) -> None:
    async with client(gateway[0]) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/no-such-route")).status_code == 404
        await c.get("/metrics")
        text = (await c.get("/metrics")).text
    assert 'ecosistema_gateway_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'ecosistema_gateway_requests_total{method="GET",route="/metrics",status="200"}' in text
    assert (
        'ecosistema_gateway_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    )


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not found")


@pytest.mark.slow
async def test_20_mb_bodies_stream_through_without_the_gateway_holding_them(
    upstream: str, tmp_path: Path
) -> None:
    proc, port = start_gateway(table(upstream, access_log=False), tmp_path)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            await c.get("/echo/warm-up")
            before = _rss_kib(proc.pid, "VmHWM")
            piece = bytes(range(256)) * 256  # 64 KiB
            digest = hashlib.sha256()

            async def body() -> AsyncIterator[bytes]:
                for _ in range(320):
                    digest.update(piece)
                    yield piece

            uploaded = (await c.post("/echo/upload", content=body())).json()
            whole = piece * 320
            sized = (await c.post("/echo/sized", content=whole)).json()
            downloaded = 0
            async with c.stream("GET", f"/stream?size={20 * MB}&chunk=65536") as r:
                async for part in r.aiter_raw():
                    downloaded += len(part)
            after = _rss_kib(proc.pid, "VmHWM")
    finally:
        stop(proc)
    grew_kib = after - before
    print(f"gateway peak RSS grew by {grew_kib} KiB while moving 3 x 20 MiB")
    assert uploaded["body_length"] == 20 * MB
    assert uploaded["body_sha256"] == digest.hexdigest()
    assert sized["body_length"] == 20 * MB
    assert sized["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert downloaded == 20 * MB
    assert grew_kib < 8 * 1024


def test_gateway_module_refuses_to_start_without_a_route_table() -> None:
    result = subprocess.run(
        ["python", "-m", "ecosistema.gateway"], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
