"""Helpers shared by sales' integration and end-to-end tests (no tests here): an app hosting
identity, catalog, orders and sales, with signed-in users of every role."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.identity import seed_demo as seed_identity
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.service import Service, ServiceContext
from tests.conftest import drop_test_schemas
from tests.default_model import DefaultModelCache
from tests.integration.test_identity_support import API, bearer, fast_settings, register, signed_in
from tests.integration.test_orders_support import eventually

__all__ = ["API", "bearer", "eventually"]

DEMO_PASSWORDS = {
    "admin": "demo-admin-ecosistema",
    "staff": "demo-staff-ecosistema",
    "sales": "demo-sales-ecosistema",
    "customer": "demo-customer-ecosistema",
}


def sales_services() -> list[Service]:
    """Identity, catalog, orders and sales, whether or not the registry lists them all yet."""
    return [
        importlib.import_module(f"ecosistema.{n}").descriptor
        for n in ("identity", "catalog", "orders", "sales")
    ]


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path)


@pytest.fixture
async def app(settings: Settings, default_model_cache: DefaultModelCache) -> AsyncIterator[FastAPI]:
    default_model_cache.seed(settings)
    application = create_app(sales_services(), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


def sales_ctx(app: FastAPI) -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts["sales"]
    return ctx


async def users(app: FastAPI, client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """The demo admin, staff, sales and customer users, signed in, each with its ``id``."""
    await seed_identity(app.state.runtime.contexts["identity"])
    out: dict[str, dict[str, Any]] = {}
    for role, password in DEMO_PASSWORDS.items():
        tokens = await signed_in(client, f"{role}@demo.ecosistema.dev", password)
        me = await client.get(f"{API}/users/me", headers=bearer(tokens))
        out[role] = {**tokens, "id": me.json()["id"], "email": me.json()["email"]}
    await app.state.runtime.drain_outboxes()
    return out


async def another_sales_user(
    client: httpx.AsyncClient, admin: dict[str, Any], name: str = "rep"
) -> dict[str, Any]:
    """A newly registered user made a salesperson by the admin, signed in."""
    email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    user = await register(client, email)
    changed = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "sales"}, headers=bearer(admin)
    )
    assert changed.status_code == 200, changed.text
    tokens = await signed_in(client, email)
    return {**tokens, "id": user["id"], "email": email}


def lead_body(**overrides: Any) -> dict[str, Any]:
    """A valid lead with the attributes the model reads."""
    body: dict[str, Any] = {
        "name": "Ana García",
        "email": f"ana-{uuid.uuid4().hex[:6]}@example.com",
        "phone": "+34 600 123 456",
        "company": "Solaris",
        "source": "web",
        "channel": "mobile",
        "campaign": "spring-webinar",
        "message": "Please call me about pricing.",
        "attributes": {"age": 35, "job": "admin.", "education": "university.degree"},
    }
    body.update(overrides)
    return body
