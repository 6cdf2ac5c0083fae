"""HTTP semantics a client relies on, on every way Ecosistema is served: reason phrases, HEAD
wherever GET is served, a 405's Allow naming the methods of the requested path, and the
gateway's own health, readiness and API description in front of separate service processes.

Services run for real: the embedded app behind the gateway in process (``ecosistema up``), and
``ecosistema serve <service>`` processes on SQLite behind a gateway built from the generated
route table (the distributed shape's gateway, with its upstreams on loopback)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.distributed import Instance, route_table
from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.embedded import EmbeddedGateway, serve_embedded
from ecosistema.gateway.proxy import _REASONS
from ecosistema.gateway.server import GatewayServer
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.services import load_services
from tests.default_model import DefaultModelCache
from tests.integration.test_distributed_support import child_environment, free_ports
from tests.integration.test_gateway_upstream import start_upstream, stop
from tests.integration.test_identity_support import fast_settings

API = "/api/v1"
# RFC 9110 names these four differently from Python 3.11's HTTPStatus.
RFC9110 = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
SERVED_ALONE = ("catalog", "orders")


def test_every_standard_status_has_its_reason_phrase() -> None:
    for status in HTTPStatus:
        expected = RFC9110.get(status.value, status.phrase)
        assert _REASONS[status.value] == expected.encode(), status


async def raw_status_line(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()


# The embedded shape: ``ecosistema up``.


@pytest.fixture
async def embedded(
    tmp_path: Path, default_model_cache: DefaultModelCache
) -> AsyncIterator[tuple[Any, EmbeddedGateway]]:
    settings = fast_settings("embedded", tmp_path)
    default_model_cache.seed(settings)
    services = load_services()
    app = create_app(services, settings)
    running = await serve_embedded(
        settings, port=0, app=app, services=services, access_log=io.StringIO()
    )
    try:
        yield app, running
    finally:
        await running.close(2)


def client_of(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)


async def test_up_sends_the_proper_reason_phrase_for_created_and_unprocessable(
    embedded: tuple[Any, EmbeddedGateway],
) -> None:
    _, running = embedded
    unprocessable = await raw_status_line(
        running.port,
        b"POST /api/v1/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert unprocessable == b"HTTP/1.1 422 Unprocessable Content\r\n"
    body = b'{"email":"reason@example.com","password":"a long enough password 1"}'
    created = await raw_status_line(
        running.port,
        b"POST /api/v1/auth/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
    )
    assert created == b"HTTP/1.1 201 Created\r\n"


async def test_up_answers_head_wherever_get_is_served_with_the_same_head(
    embedded: tuple[Any, EmbeddedGateway],
) -> None:
    _, running = embedded
    async with client_of(running.port) as client:
        for path in (f"{API}/products", f"{API}/categories", f"{API}/orders", "/docs"):
            get = await client.get(path)
            head = await client.head(path)
            assert head.status_code == get.status_code, path
            assert head.content == b""
            assert head.headers["content-length"] == str(len(get.content)), path
            assert head.headers.get("etag") == get.headers.get("etag"), path
            assert head.headers["content-type"] == get.headers["content-type"], path
        assert (await client.head(f"{API}/orders")).status_code == 401  # as GET, not 405


async def test_up_answers_a_405_with_the_methods_of_the_requested_path_only(
    embedded: tuple[Any, EmbeddedGateway],
) -> None:
    _, running = embedded
    async with client_of(running.port) as client:
        categories = await client.put(f"{API}/categories", json={})
        orders = await client.put(f"{API}/orders", json={})
        health = await client.delete("/healthz")
    assert categories.status_code == 405
    assert categories.headers["allow"] == "GET, HEAD, POST"
    assert categories.headers["content-type"] == "application/problem+json"
    assert orders.headers["allow"] == "GET, HEAD, POST"
    assert health.headers["allow"] == "GET, HEAD"


# Services served alone (``ecosistema serve``) and the gateway in front of them.


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, f"{url} exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``ecosistema serve catalog`` and ``ecosistema serve orders`` on SQLite."""
    data_dir = tmp_path_factory.mktemp("served-alone")
    settings = fast_settings("embedded", data_dir)
    env = {**os.environ, **child_environment(settings)}
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in zip(SERVED_ALONE, free_ports(len(SERVED_ALONE)), strict=True):
            proc = subprocess.Popen(
                [sys.executable, "-m", "ecosistema", "serve", name, "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(data_dir / f"{name}.log").open("wb"),
            )
            procs.append(proc)
            urls[name] = f"http://127.0.0.1:{port}"
        for url, proc in zip(urls.values(), procs, strict=True):
            wait_until_ready(url, proc)
        yield urls
    finally:
        for proc in procs:
            stop(proc)


async def test_a_service_served_alone_answers_head_and_a_precise_allow(
    served_alone: dict[str, str],
) -> None:
    async with httpx.AsyncClient(base_url=served_alone["catalog"], timeout=30) as client:
        get = await client.get(f"{API}/products")
        head = await client.head(f"{API}/products")
        wrong = await client.put(f"{API}/categories", json={})
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, POST"


def _instances(urls: dict[str, str]) -> list[Instance]:
    found = []
    for name, url in urls.items():
        port = int(url.rsplit(":", 1)[1])
        found.append(Instance(service=name, replica=0, host="127.0.0.1", port=port))
    return found


@pytest.fixture
async def gateway_in_front(served_alone: dict[str, str]) -> AsyncIterator[GatewayServer]:
    """The gateway with the route table ``up --distributed`` writes, for these services."""
    table = route_table(_instances(served_alone), settings=Settings(environment="test"))
    for service in table["services"].values():
        service["health_interval_seconds"] = 0.2
    table["rate_limits"] = {"enabled": False}
    server = await serve(gateway_config(table), port=0, access_log=io.StringIO())
    try:
        yield server
    finally:
        await server.close(1)


async def test_the_gateway_in_front_of_services_answers_its_own_health_and_readiness(
    gateway_in_front: GatewayServer,
) -> None:
    async with client_of(gateway_in_front.port) as client:
        alive = await client.get("/healthz")
        ready = await client.get("/readyz")
        head = await client.head("/readyz")
        wrong = await client.post("/healthz")
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": dict.fromkeys(SERVED_ALONE, "ok")}
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(ready.content))
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"


async def test_the_gateway_is_not_ready_while_a_service_has_no_healthy_instance(
    tmp_path: Path,
) -> None:
    proc, url = start_upstream("a")
    (dead_port,) = free_ports(1)
    table = {
        "services": {
            "echo": {"instances": [url], "health_path": "/status/200"},
            "ledger": {
                "instances": [f"http://127.0.0.1:{dead_port}"],
                "health_path": "/readyz",
                "health_interval_seconds": 0.1,
                "unhealthy_threshold": 1,
            },
        },
        "routes": [
            {"prefix": "/echo", "service": "echo", "public": True},
            {"prefix": "/ledger", "service": "ledger", "public": True},
        ],
        "rate_limits": {"enabled": False},
    }
    server = await serve(gateway_config(table), port=0, access_log=io.StringIO())
    try:
        async with client_of(server.port) as client:
            deadline = time.monotonic() + 30
            while (ready := await client.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "the dead service never turned unhealthy"
                await asyncio.sleep(0.05)
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.close(1)
        stop(proc)
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    problem = ready.json()
    assert problem["type"].endswith("/not-ready")
    assert "ledger" in problem["detail"] and "echo" not in problem["detail"]
    assert problem["checks"] == {"echo": "ok", "ledger": "error: no healthy instance"}


async def test_the_gateway_in_front_of_services_serves_their_merged_api_and_offline_docs(
    gateway_in_front: GatewayServer,
) -> None:
    embedded = create_app(load_services(list(SERVED_ALONE)), Settings(environment="test"))
    expected = embedded.openapi()
    async with client_of(gateway_in_front.port) as client:
        merged = await client.get("/openapi.json")
        docs = await client.get("/docs")
        assets = re.findall(r"(?:src|href)=['\"](/docs/static/[^'\"]+)", docs.text)
        fetched = [await client.get(asset) for asset in assets]
        missing = await client.get("/docs/static/nothing.js")
    assert merged.status_code == 200
    document = merged.json()
    assert document["info"]["title"] == "Ecosistema"
    assert set(document["paths"]) == set(expected["paths"])
    for path, item in expected["paths"].items():
        assert set(document["paths"][path]) == set(item), path
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', merged.text))
    assert refs <= set(document["components"]["schemas"])
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert sorted(assets) == sorted(
        [
            "/docs/static/favicon-32x32.png",
            "/docs/static/swagger-ui-bundle.js",
            "/docs/static/swagger-ui.css",
        ]
    )
    assert all(r.status_code == 200 and r.content for r in fetched)
    assert missing.status_code == 404


async def test_an_error_answered_by_the_gateway_to_a_head_has_no_body(
    gateway_in_front: GatewayServer,
) -> None:
    async with client_of(gateway_in_front.port) as client:
        missing = await client.head("/nowhere")
        # The same connection goes on: no stray body bytes were left on it.
        after = await client.get("/healthz")
    assert missing.status_code == 404
    assert missing.content == b""
    assert int(missing.headers["content-length"]) > 0
    assert after.status_code == 200


async def test_the_gateway_in_front_of_services_passes_on_head_and_the_paths_own_allow(
    gateway_in_front: GatewayServer,
) -> None:
    async with client_of(gateway_in_front.port) as client:
        get = await client.get(f"{API}/products")
        head = await client.head(f"{API}/products")
        orders = await client.head(f"{API}/orders")
        categories = await client.put(f"{API}/categories", json={})
        carts = await client.put(f"{API}/carts", json={})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]
    assert orders.status_code == 401
    assert categories.status_code == 405
    assert categories.headers["allow"] == "GET, HEAD, POST"
    assert categories.headers["content-type"] == "application/problem+json"
    assert carts.status_code == 405
    assert carts.headers["allow"] == "POST"
