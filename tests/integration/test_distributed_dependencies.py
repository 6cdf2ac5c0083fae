"""Calls between services when the callee refuses, fails or is gone: the caller answers 502 or
503 naming the service, never a 500; and identity's HTTP client presents its API key.

The callees are real: identity served by uvicorn on loopback (its database in either shape),
a small ASGI app that answers 500 and 503, and a port nothing listens on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ecosistema.identity.client import HttpIdentityClient, http_client
from ecosistema.identity.service import create_admin, create_api_key, register
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import install_error_handlers
from ecosistema.platform.http import DependencyFailed, DependencyUnavailable, service_client
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas, make_settings
from tests.integration.test_distributed_principal import ServedApp
from tests.integration.test_distributed_support import free_ports


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return make_settings(shape, tmp_path, password_hash_memory_kib=1024)


class Accounts:
    """An API key with ``users:read``, one without it, and a registered user's id."""

    def __init__(self, reader: str, other: str, user_id: str) -> None:
        self.reader = reader
        self.other = other
        self.user_id = user_id


async def _accounts(settings: Settings) -> Accounts:
    runtime = Runtime(settings, load_services(["identity"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["identity"]
        owner = await create_admin(
            ctx, email=f"ops-{uuid.uuid4().hex[:6]}@example.com", password="an admin passphrase"
        )
        reader = await create_api_key(
            ctx, user_id=owner.id, role="admin", name="reader", scopes=["users:read"]
        )
        other = await create_api_key(
            ctx, user_id=owner.id, role="admin", name="other", scopes=["inventory:read"]
        )
        user = await register(
            ctx, email=f"shopper-{uuid.uuid4().hex[:6]}@example.com", password="a long passphrase"
        )
        await runtime.drain_outboxes()
        return Accounts(reader.key, other.key, user.id)
    finally:
        await runtime.stop()


@pytest.fixture
async def identity(settings: Settings) -> AsyncIterator[tuple[str, Accounts]]:
    accounts = await _accounts(settings)
    served = ServedApp(create_app(load_services(["identity"]), settings))
    try:
        yield served.url, accounts
    finally:
        served.stop()
        await drop_test_schemas(settings)


async def _failing(request: Request) -> JSONResponse:
    status = int(request.path_params["status"])
    return JSONResponse(
        {"type": "about:blank", "title": "x", "status": status, "detail": "db pool exhausted"},
        status_code=status,
        media_type="application/problem+json",
    )


@pytest.fixture(scope="module")
def failing_service() -> Iterator[str]:
    app = Starlette(routes=[Route("/api/v1/status/{status:int}", _failing)])
    served = ServedApp(app)  # type: ignore[arg-type]
    yield served.url
    served.stop()


async def test_identity_lookup_without_a_key_is_a_502_naming_identity(
    identity: tuple[str, Accounts],
) -> None:
    url, accounts = identity
    client = HttpIdentityClient(url)
    try:
        with pytest.raises(DependencyFailed) as caught:
            await client.get_user(accounts.user_id)
    finally:
        await client.aclose()
    assert caught.value.status == 502
    assert caught.value.type == "dependency-failed"
    assert caught.value.extra == {"service": "identity", "dependency_status": 401}
    assert "identity refused the platform's own credential (401)" in caught.value.detail
    # Code written against raise_for_status() still recognises it.
    assert isinstance(caught.value, httpx.HTTPStatusError)
    assert caught.value.response.status_code == 401


async def test_identity_lookup_with_a_key_lacking_users_read_is_a_502(
    identity: tuple[str, Accounts],
) -> None:
    url, accounts = identity
    client = HttpIdentityClient(url, credential=accounts.other)
    try:
        with pytest.raises(DependencyFailed) as caught:
            await client.get_user(accounts.user_id)
    finally:
        await client.aclose()
    assert caught.value.extra["dependency_status"] == 403


async def test_identity_http_client_presents_the_configured_identity_api_key(
    settings: Settings, identity: tuple[str, Accounts]
) -> None:
    url, accounts = identity
    configured = settings.model_copy(
        update={"identity_url": url, "identity_api_key": SecretStr(accounts.reader)}
    )
    client = http_client(configured)
    try:
        user = await client.get_user(accounts.user_id)
        missing = await client.get_user("no-such-user")
    finally:
        await client.aclose()
    assert user is not None and user.id == accounts.user_id
    assert missing is None


async def test_an_api_key_identity_refuses_is_an_answer_not_a_dependency_failure(
    identity: tuple[str, Accounts],
) -> None:
    url, accounts = identity
    client = HttpIdentityClient(url)
    try:
        refused = await client.verify_api_key(accounts.reader[:-4] + "abcd")
        known = await client.verify_api_key(accounts.reader)
    finally:
        await client.aclose()
    assert refused is None
    assert known is not None and known.scopes == ["users:read"]


async def test_a_service_nothing_listens_for_is_a_503_with_retry_after() -> None:
    (port,) = free_ports(1)
    async with service_client(f"http://127.0.0.1:{port}", service="catalog") as client:
        with pytest.raises(DependencyUnavailable) as caught:
            await client.get("/products")
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "5"}
    assert caught.value.detail.startswith("catalog cannot be reached")


async def test_a_callee_server_error_is_a_502_and_its_503_stays_a_503(failing_service: str) -> None:
    async with service_client(failing_service, service="payments") as client:
        with pytest.raises(DependencyFailed) as failed:
            await client.get("/status/500")
        with pytest.raises(DependencyUnavailable) as unavailable:
            await client.get("/status/503")
        answered = await client.get("/status/409")
    assert failed.value.status == 502
    assert failed.value.detail == "payments failed to answer (500)."
    # The callee's internals stay in the log, not in the caller's answer.
    assert "db pool" not in failed.value.detail
    assert unavailable.value.status == 503
    assert answered.status_code == 409


async def test_a_failed_dependency_leaves_the_caller_as_a_502_problem_not_a_500(
    identity: tuple[str, Accounts],
) -> None:
    url, accounts = identity
    caller = FastAPI()
    install_error_handlers(caller)

    @caller.get("/customers/{user_id}")
    async def customer(user_id: str) -> dict[str, str]:
        client = HttpIdentityClient(url)
        try:
            user = await client.get_user(user_id)
        finally:
            await client.aclose()
        return {"email": str(user.email) if user else ""}

    transport = httpx.ASGITransport(app=caller, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://caller") as http:
        response = await http.get(f"/customers/{accounts.user_id}")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/dependency-failed")
    assert problem["service"] == "identity"
    assert "identity" in problem["detail"]
