"""A service behind the gateway believes the principal the gateway signed, and nothing else.

The service here is orders alone, with identity in no process it can reach: an access token can
therefore not be verified (its keys are unavailable), which shows that a valid gateway principal
is accepted without verifying any token, and that anything less falls back to the request's own
credentials.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ecosistema.gateway.principal import (
    PRINCIPAL_HEADER,
    Principal,
    request_binding,
    sign_principal,
)
from ecosistema.platform.app import create_app
from ecosistema.platform.auth import REVOKED_SESSION_KEY
from ecosistema.platform.config import Settings
from ecosistema.platform.tokens import encode_access_token, generate_signing_key
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas, make_settings

SECRET = "gateway-secret-for-tests-0123456789abcdef"
ORDERS = "/api/v1/orders"


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return make_settings(shape, tmp_path, gateway_secret=SECRET, identity_url=None)


@pytest.fixture
async def orders_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(load_services(["orders"]), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


@pytest.fixture
async def client(orders_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=orders_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as c:
        yield c


def vouched(
    principal: Principal,
    *,
    method: str = "GET",
    target: str = ORDERS,
    request_id: str | None = None,
    secret: str = SECRET,
    ttl: int = 60,
    now: float | None = None,
) -> dict[str, str]:
    """The headers the gateway adds for ``principal`` on one request."""
    rid = request_id or uuid.uuid4().hex
    value = sign_principal(
        principal,
        secret.encode(),
        ttl_seconds=ttl,
        now=now,
        binding=request_binding(method, target, rid),
    )
    return {PRINCIPAL_HEADER: value, "X-Request-ID": rid}


CUSTOMER = Principal(sub="user-principal-1", role="customer", session_id="s-1")


async def test_gateway_signed_principal_is_accepted_without_verifying_a_token(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(ORDERS, headers=vouched(CUSTOMER))
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


async def test_gateway_principal_spares_the_token_check_that_would_fail_here(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    # The gateway forwards the client's Authorization too; with identity's keys unreachable,
    # verifying it would be a 503. The signed principal is enough.
    token = encode_access_token(
        generate_signing_key(),
        subject=CUSTOMER.sub,
        role="customer",
        session_id="s-1",
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=300,
    )
    alone = await client.get(ORDERS, headers={"Authorization": f"Bearer {token}"})
    assert alone.status_code == 503
    both = await client.get(
        ORDERS, headers={**vouched(CUSTOMER), "Authorization": f"Bearer {token}"}
    )
    assert both.status_code == 200, both.text


async def test_service_reached_directly_without_credentials_answers_401(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(ORDERS)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_principal_signed_with_another_secret_is_401(client: httpx.AsyncClient) -> None:
    forged = vouched(CUSTOMER, secret="not-the-gateway-secret-0123456789abcdef")
    assert (await client.get(ORDERS, headers=forged)).status_code == 401


async def test_expired_principal_is_401(client: httpx.AsyncClient) -> None:
    stale = vouched(CUSTOMER, ttl=10, now=time.time() - 60)
    assert (await client.get(ORDERS, headers=stale)).status_code == 401


async def test_principal_with_an_edited_role_is_401(client: httpx.AsyncClient) -> None:
    headers = vouched(CUSTOMER)
    admin = vouched(
        Principal(CUSTOMER.sub, "admin", session_id="s-1"), request_id=headers["X-Request-ID"]
    )
    version, _, signature = headers[PRINCIPAL_HEADER].split(".")
    payload = admin[PRINCIPAL_HEADER].split(".")[1]
    headers[PRINCIPAL_HEADER] = f"{version}.{payload}.{signature}"
    assert (await client.get(ORDERS, headers=headers)).status_code == 401


@pytest.mark.parametrize(
    ("method", "target", "same_request_id"),
    [
        ("GET", f"{ORDERS}?status=paid", True),
        ("POST", ORDERS, True),
        ("GET", ORDERS, False),
    ],
)
async def test_principal_bound_to_another_request_is_401(
    client: httpx.AsyncClient, method: str, target: str, same_request_id: bool
) -> None:
    headers = vouched(CUSTOMER, method=method, target=target)
    if not same_request_id:
        headers["X-Request-ID"] = uuid.uuid4().hex
    assert (await client.get(ORDERS, headers=headers)).status_code == 401


async def test_principal_naming_an_unknown_role_is_401(client: httpx.AsyncClient) -> None:
    odd = vouched(Principal("user-2", "superuser"))
    assert (await client.get(ORDERS, headers=odd)).status_code == 401


async def test_principal_of_an_ended_session_is_401(
    orders_app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await client.get(ORDERS, headers=vouched(CUSTOMER))).status_code == 200
    cache = orders_app.state.runtime.verifier._cache
    await cache.set(REVOKED_SESSION_KEY.format(session_id="s-1"), b"1", ttl=60)
    assert (await client.get(ORDERS, headers=vouched(CUSTOMER))).status_code == 401


async def test_service_without_the_gateway_secret_ignores_the_principal(
    shape: str, tmp_path: Path
) -> None:
    settings = make_settings(shape, tmp_path, identity_url=None)
    application = create_app(load_services(["orders"]), settings)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://orders") as c:
                assert (await c.get(ORDERS, headers=vouched(CUSTOMER))).status_code == 401
    finally:
        await drop_test_schemas(settings)


# --- API keys checked through identity, from a process that does not host it --------------------


class ServedApp:
    """An ASGI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


async def _api_key(settings: Settings, scopes: list[str]) -> str:
    from ecosistema.identity.service import create_admin, create_api_key
    from ecosistema.platform.runtime import Runtime

    runtime = Runtime(settings, load_services(["identity"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["identity"]
        owner = await create_admin(
            ctx, email=f"ops-{uuid.uuid4().hex[:6]}@example.com", password="an admin passphrase"
        )
        created = await create_api_key(
            ctx, user_id=owner.id, role="admin", name="test", scopes=scopes
        )
        await runtime.drain_outboxes()
        return created.key
    finally:
        await runtime.stop()


async def test_api_key_is_checked_through_identity_by_a_service_that_does_not_host_it(
    shape: str, tmp_path: Path
) -> None:
    settings = make_settings(shape, tmp_path, password_hash_memory_kib=1024)
    key = await _api_key(settings, ["inventory:read"])
    identity = ServedApp(create_app(load_services(["identity"]), settings))
    catalog_settings = settings.model_copy(update={"identity_url": identity.url})
    catalog = create_app(load_services(["catalog"]), catalog_settings)
    try:
        async with catalog.router.lifespan_context(catalog):
            transport = httpx.ASGITransport(app=catalog)
            async with httpx.AsyncClient(transport=transport, base_url="http://catalog") as c:
                allowed = await c.get("/api/v1/warehouses", headers={"X-API-Key": key})
                assert allowed.status_code == 200, allowed.text
                unknown = key[:-4] + "abcd"
                refused = await c.get("/api/v1/warehouses", headers={"X-API-Key": unknown})
                assert refused.status_code == 401
                scope_missing = await c.post(
                    "/api/v1/warehouses",
                    json={"code": "w1", "name": "W1"},
                    headers={"X-API-Key": key},
                )
                assert scope_missing.status_code == 403

                identity.stop()
                # The answer is kept: the known key still works while identity is away, and a
                # key never seen cannot be checked (503, not a wrong 401).
                kept = await c.get("/api/v1/warehouses", headers={"X-API-Key": key})
                assert kept.status_code == 200
                other = await c.get("/api/v1/warehouses", headers={"X-API-Key": key[:-4] + "wxyz"})
                assert other.status_code == 503
    finally:
        identity.stop()
        await drop_test_schemas(settings)
