"""Routes served by an ASGI app inside the gateway's process (the embedded shape), over real
HTTP to the gateway: lifespan once, bodies streamed both ways, the edge's headers, failures."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.inprocess import LifespanFailed, LocalService, Message, Receive, Send
from ecosistema.gateway.server import GatewayServer

MB = 1024 * 1024


class App:
    """A small ASGI app that says what it received, streams, and fails on demand."""

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.started += 1
                    scope["state"]["greeting"] = "hola"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.stopped += 1
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("the app failed")
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(20):
                await send({"type": "http.response.body", "body": b"y" * MB, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        digest = hashlib.sha256()
        size = parts = 0
        while True:
            message: Message = await receive()
            body = message.get("body", b"")
            digest.update(body)
            size += len(body)
            parts += 1 if body else 0
            if not message.get("more_body"):
                break
        payload = json.dumps(
            {
                "method": scope["method"],
                "path": path,
                "query": scope["query_string"].decode(),
                "client": list(scope["client"]),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "size": size,
                "sha256": digest.hexdigest(),
                "state": scope["state"].get("greeting"),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", b"from-the-app"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


TABLE = {
    "services": {"local": {"in_process": True, "health_path": None}},
    "routes": [
        {"prefix": "/small", "service": "local", "public": True, "max_body_bytes": MB},
        {"prefix": "/", "service": "local", "public": True, "max_body_bytes": 64 * MB},
    ],
    "rate_limits": {"enabled": False},
}


@pytest.fixture
async def served() -> AsyncIterator[tuple[GatewayServer, App]]:
    app = App()
    local = LocalService(app)
    await local.startup()
    server = await serve(
        gateway_config(TABLE), port=0, access_log=io.StringIO(), local_apps={"local": local}
    )
    yield server, app
    await server.close(1)
    await local.shutdown()
    assert (app.started, app.stopped) == (1, 1)


def client(server: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)


async def test_the_app_sees_the_request_as_an_upstream_would(
    served: tuple[GatewayServer, App],
) -> None:
    server, app = served
    async with client(server) as c:
        response = await c.get(
            "/items/1?x=2",
            headers={"X-Ecosistema-Principal": "forged", "X-Forwarded-For": "6.6.6.6"},
        )
    seen = response.json()
    assert seen["path"] == "/items/1" and seen["query"] == "x=2"
    assert seen["client"][0] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "x-ecosistema-principal" not in seen["headers"]
    assert seen["headers"]["x-request-id"] == response.headers["x-request-id"]
    assert response.headers["x-request-id"] != "from-the-app"
    assert seen["state"] == "hola"
    assert app.started == 1


async def test_behind_a_trusted_proxy_the_app_sees_the_client_it_names() -> None:
    app = App()
    local = LocalService(app)
    await local.startup()
    table = {**TABLE, "trusted_proxies": ["127.0.0.0/8"]}
    server = await serve(
        gateway_config(table), port=0, access_log=io.StringIO(), local_apps={"local": local}
    )
    try:
        async with client(server) as c:
            response = await c.get(
                "/items", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.8, 127.0.0.2"}
            )
    finally:
        await server.close(1)
        await local.shutdown()
    seen = response.json()
    assert seen["client"] == ["203.0.113.8", 0]
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.8, 127.0.0.2, 127.0.0.1"


async def test_a_20_mb_chunked_upload_reaches_the_app_whole_in_pieces(
    served: tuple[GatewayServer, App],
) -> None:
    server, _ = served
    digest = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(80):
            part = bytes([i]) * (256 * 1024)
            digest.update(part)
            yield part

    async with client(server) as c:
        response = await c.post("/upload", content=chunks())
    seen = response.json()
    assert seen["size"] == 20 * MB
    assert seen["sha256"] == digest.hexdigest()


async def test_a_chunked_body_past_the_routes_limit_is_the_gateways_413_not_the_apps_answer(
    served: tuple[GatewayServer, App],
) -> None:
    # The app reads what it is given and would answer 200 about a body cut short.
    server, _ = served

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"z" * (256 * 1024)

    async with client(server) as c:
        refused = await c.post("/small/upload", content=chunks())
        within = await c.post("/small/upload", content=b"z" * 1000)
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/payload-too-large")
    assert within.status_code == 200 and within.json()["size"] == 1000


async def test_a_broken_chunked_body_is_the_gateways_400_and_the_apps_late_answer_is_dropped(
    served: tuple[GatewayServer, App], capfd: pytest.CaptureFixture[str]
) -> None:
    server, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nzz\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()  # the app, still waiting for the body, now hears the client has gone
    await asyncio.sleep(0.2)
    async with client(server) as c:
        after = await c.get("/fine")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert after.status_code == 200
    logged = capfd.readouterr()
    assert "gateway_error" not in logged.out + logged.err
    assert "sent twice" not in logged.out + logged.err


async def test_a_streamed_response_without_length_is_rechunked(
    served: tuple[GatewayServer, App],
) -> None:
    server, _ = served
    async with client(server) as c, c.stream("GET", "/stream") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        total = 0
        async for part in response.aiter_bytes():
            total += len(part)
    assert total == 20 * MB


async def test_an_app_failure_is_a_500_problem_and_the_connection_lives_on(
    served: tuple[GatewayServer, App],
) -> None:
    server, _ = served
    async with client(server) as c:
        failed = await c.get("/boom")
        after = await c.get("/fine")
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert after.status_code == 200


async def test_head_gets_the_head_without_the_body(served: tuple[GatewayServer, App]) -> None:
    server, _ = served
    async with client(server) as c:
        response = await c.head("/items/2")
    assert response.status_code == 200 and response.content == b""


async def test_a_failing_lifespan_startup_is_reported() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    local = LocalService(app)
    with pytest.raises(LifespanFailed, match="no database"):
        await local.startup()
    await local.shutdown()


async def test_a_startup_that_raises_after_reporting_its_failure_is_reported() -> None:
    """Starlette reports a failing startup and then raises its exception: still a failure (an
    app that raises before any lifespan message does not support lifespans, which is allowed)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        raise RuntimeError("mailer URL has no scheme")
        yield

    local = LocalService(FastAPI(lifespan=lifespan))
    with pytest.raises(LifespanFailed, match="mailer URL has no scheme"):
        await local.startup()
    await local.shutdown()

    async def no_lifespan(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"

    unsupported = LocalService(no_lifespan)
    await unsupported.startup()
    await unsupported.shutdown()


def test_an_in_process_service_needs_an_app_to_serve_it() -> None:
    from ecosistema.gateway.proxy import Gateway

    with pytest.raises(ValueError, match="in_process"):
        Gateway(gateway_config(TABLE))
