"""Helpers shared by orders' integration and end-to-end tests (no tests here): an app hosting
identity, catalog and orders, a shop with products, stock, tax rates, shipping and vouchers."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.identity import create_admin
from ecosistema.orders import seed_demo
from ecosistema.orders.models import outbox
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import Service, ServiceContext
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer, fast_settings, register, signed_in

ADMIN_EMAIL = "boss@shop.example"
ADMIN_PASSWORD = "an admin passphrase"
CART_TOKEN = "X-Cart-Token"


def commerce_services() -> list[Service]:
    """Identity, catalog and orders, whether or not the registry lists them all yet."""
    return [
        importlib.import_module(f"ecosistema.{n}").descriptor
        for n in ("identity", "catalog", "orders")
    ]


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(commerce_services(), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


def orders_ctx(app: FastAPI) -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts["orders"]
    return ctx


async def staff_tokens(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """An admin (who holds every staff permission), signed in."""
    await create_admin(
        app.state.runtime.contexts["identity"], email=ADMIN_EMAIL, password=ADMIN_PASSWORD
    )
    return await signed_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def customer(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """A registered, signed-in customer: tokens plus ``id`` and ``email``."""
    email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    user = await register(client, email)
    tokens = await signed_in(client, email)
    return {**tokens, "id": user["id"], "email": email}


async def seed_shop(
    app: FastAPI, client: httpx.AsyncClient, admin: dict[str, Any], stock: dict[str, int]
) -> None:
    """Orders' demo configuration, a warehouse, and one product per SKU at EUR 20.00, 250 g."""
    await seed_demo(orders_ctx(app))
    response = await client.post(
        f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=bearer(admin)
    )
    assert response.status_code == 201, response.text
    for sku, quantity in stock.items():
        await add_product(client, admin, sku, quantity)


async def add_product(
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    sku: str,
    quantity: int,
    *,
    price: int = 2000,
    weight: int = 250,
) -> None:
    response = await client.post(
        f"{API}/products",
        json={
            "name": f"Product {sku}",
            "status": "active",
            "variants": [
                {
                    "sku": sku,
                    "weight_grams": weight,
                    "prices": [{"currency": "EUR", "amount": price}],
                }
            ],
        },
        headers=bearer(admin),
    )
    assert response.status_code == 201, response.text
    if quantity:
        moved = await client.post(
            f"{API}/inventory/{sku}/adjustments",
            json={"warehouse": "main", "delta": quantity, "reason": "initial stock"},
            headers=bearer(admin),
        )
        assert moved.status_code in (200, 201), moved.text


async def available(client: httpx.AsyncClient, admin: dict[str, Any], sku: str) -> int:
    response = await client.get(f"{API}/inventory/{sku}", headers=bearer(admin))
    assert response.status_code == 200, response.text
    return int(response.json()["available"])


async def guest_cart(
    client: httpx.AsyncClient, items: dict[str, int], **cart: Any
) -> tuple[str, dict[str, str]]:
    """A new anonymous cart holding ``items``; returns its id and the token header."""
    created = await client.post(f"{API}/carts", json={"currency": "EUR", **cart})
    assert created.status_code == 201, created.text
    headers = {CART_TOKEN: created.headers[CART_TOKEN]}
    for sku, quantity in items.items():
        added = await client.post(
            f"{API}/carts/{created.json()['id']}/items",
            json={"sku": sku, "quantity": quantity},
            headers=headers,
        )
        assert added.status_code == 200, added.text
    return created.json()["id"], headers


# Where the tests' parcels go, in the country the checkout is for.
DELIVERY = {
    "name": "Ana Prueba",
    "line1": "Calle Mayor 1",
    "city": "Madrid",
    "postal_code": "28013",
}


async def checkout(
    client: httpx.AsyncClient,
    cart_id: str,
    headers: dict[str, str],
    *,
    key: str | None = None,
    **body: Any,
) -> httpx.Response:
    """Check the cart out with the ``standard`` shipping method. A parcel needs an address:
    unless the body says (``shipping_address=None`` sends none, leaving the cart's) or the
    cart has one, a ``DELIVERY`` address in the body's country, else the cart's, is given."""
    extra = {"Idempotency-Key": key or uuid.uuid4().hex}
    json = {"cart_id": cart_id, "shipping_method": "standard", **body}
    if json["shipping_method"] and "shipping_address" not in json:
        seen = await client.get(f"{API}/carts/{cart_id}", headers=headers)
        cart = seen.json() if seen.status_code == 200 else {}
        if cart.get("shipping_address") is None:
            country = json.get("country") or cart.get("country") or "ES"
            json["shipping_address"] = {**DELIVERY, "country": country}
    return await client.post(f"{API}/orders", json=json, headers={**headers, **extra})


async def place_guest_order(
    client: httpx.AsyncClient, items: dict[str, int], email: str = "guest@example.com"
) -> dict[str, Any]:
    cart_id, headers = await guest_cart(client, items)
    response = await checkout(client, cart_id, headers, email=email)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    body["_headers"] = headers
    return body


async def outbox_payloads(app: FastAPI, event_type: str) -> list[dict[str, Any]]:
    async with orders_ctx(app).db.read() as session:
        rows = await session.execute(
            select(outbox.table.c.payload)
            .where(outbox.table.c.type == event_type)
            .order_by(outbox.table.c.position)
        )
        return [dict(r) for r in rows.scalars()]


async def publish(app: FastAPI, event_type: str, payload: dict[str, Any]) -> EventEnvelope:
    """Publish an event as payments would, through the app's own bus."""
    envelope = EventEnvelope(type=event_type, source="payments", payload=payload)
    await app.state.runtime.bus.publish(envelope)
    return envelope


async def eventually(
    probe: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``probe`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
