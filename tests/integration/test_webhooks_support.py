"""Helpers shared by webhooks' integration and end-to-end tests (no tests here): a real HTTP
receiver on loopback that records what it gets and answers as told, and an app hosting
identity, catalog, orders and webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import Service, ServiceContext
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer, fast_settings

# The periodic sender is kept out of the way: tests send by calling ``dispatch_due`` with the
# clock they choose.
WEBHOOK_TEST_SETTINGS: dict[str, object] = {"webhooks_dispatch_interval_seconds": 3600.0}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that records each request and answers ``status``
    (or the next of ``script``); ``hang`` makes it never answer."""

    status: int = 200
    script: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _hung: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self._hung.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                method, path, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = (await reader.readline()).decode().rstrip("\r\n")
                    if not line:
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, path, headers, body))
                if self.hang:
                    await self._hung.wait()
                    break
                status = self.script.pop(0) if self.script else self.status
                answer = json.dumps({"received": True, "status": status}).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"X-Receiver: test\r\nContent-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def services(*names: str) -> list[Service]:
    return [importlib.import_module(f"ecosistema.{n}").descriptor for n in names]


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path, **WEBHOOK_TEST_SETTINGS)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(services("identity", "catalog", "orders", "webhooks"), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


def webhooks_ctx(app: FastAPI) -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts["webhooks"]
    return ctx


async def subscribe(
    client: httpx.AsyncClient,
    who: dict[str, Any],
    url: str,
    event_types: list[str],
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/webhook-subscriptions",
        json={"url": url, "event_types": event_types, **extra},
        headers=bearer(who),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def publish(
    app: FastAPI, event_type: str, payload: dict[str, Any], *, source: str = "orders"
) -> EventEnvelope:
    """Publish an event through the app's own bus, as another service's relay would."""
    envelope = EventEnvelope(type=event_type, source=source, payload=payload)
    await app.state.runtime.bus.publish(envelope)
    return envelope


async def deliveries(
    client: httpx.AsyncClient, who: dict[str, Any], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/webhook-deliveries", params=params, headers=bearer(who))
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def delivery(client: httpx.AsyncClient, who: dict[str, Any], delivery_id: str) -> Any:
    response = await client.get(f"{API}/webhook-deliveries/{delivery_id}", headers=bearer(who))
    assert response.status_code == 200, response.text
    return response.json()
