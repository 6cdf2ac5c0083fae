"""Helpers shared by catalog's integration and end-to-end tests (no tests here)."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.catalog.schemas import (
    CategoryCreate,
    ProductCreate,
    Warehouse,
    WarehouseCreate,
)
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.platform.service import ServiceContext
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import fast_settings

API = "/api/v1"

catalog_service: ModuleType = importlib.import_module("ecosistema.catalog.service")


@pytest.fixture(name="settings")
def settings_fixture(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path, max_body_bytes=50_000_000)


@asynccontextmanager
async def catalog_runtime(settings: Settings) -> AsyncIterator[ServiceContext]:
    """A started runtime hosting only catalog (no background jobs); its context."""
    runtime = Runtime(settings, load_services(["catalog"]))
    await runtime.start(background=False)
    try:
        yield runtime.contexts["catalog"]
    finally:
        await runtime.stop()
        await drop_test_schemas(settings)


@pytest.fixture(name="catalog")
async def catalog_fixture(settings: Settings) -> AsyncIterator[ServiceContext]:
    async with catalog_runtime(settings) as ctx:
        yield ctx


@pytest.fixture(name="shop_app")
async def shop_app_fixture(settings: Settings) -> AsyncIterator[FastAPI]:
    """Identity and catalog behind one app, lifespan running."""
    application = create_app(load_services(["identity", "catalog"]), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


@pytest.fixture(name="shop")
async def shop_fixture(shop_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=shop_app, client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def ctx_of(app: FastAPI, name: str = "catalog") -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts[name]
    return ctx


async def sign_in_demo(app: FastAPI, client: httpx.AsyncClient, role: str) -> dict[str, str]:
    """Bearer headers for identity's demo user of ``role`` (seeded on first use)."""
    from ecosistema.identity import seed_demo

    accounts = await seed_demo(ctx_of(app, "identity"))
    creds = accounts[role]
    response = await client.post(
        f"{API}/auth/login", json={"email": creds["email"], "password": creds["password"]}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def variant(sku: str, eur: int, **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "prices": [{"currency": "EUR", "amount": eur}], **extra}


async def make_product(
    ctx: ServiceContext,
    name: str,
    *,
    skus: dict[str, int] | None = None,
    status: str = "active",
    **extra: Any,
) -> Any:
    data = ProductCreate.model_validate(
        {
            "name": name,
            "status": status,
            "variants": [variant(sku, eur) for sku, eur in (skus or {}).items()],
            **extra,
        }
    )
    return await catalog_service.create_product(ctx, data)


async def make_category(ctx: ServiceContext, name: str, parent_id: str | None = None) -> Any:
    return await catalog_service.create_category(
        ctx, CategoryCreate(name=name, parent_id=parent_id)
    )


async def make_warehouse(ctx: ServiceContext, code: str, priority: int = 0) -> Warehouse:
    result: Warehouse = await catalog_service.create_warehouse(
        ctx, WarehouseCreate(code=code, name=code.title(), priority=priority)
    )
    return result


async def outbox_types(ctx: ServiceContext) -> list[tuple[str, dict[str, Any]]]:
    from sqlalchemy import select

    t = ctx.outbox.table
    async with ctx.db.read() as session:
        rows = (await session.execute(select(t.c.type, t.c.payload).order_by(t.c.position))).all()
    return [(r.type, r.payload) for r in rows]
