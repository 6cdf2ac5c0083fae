"""End to end in the distributed shape (``ecosistema up --distributed`` behind the gateway, on
PostgreSQL, Redis and NATS): a guest pays their order through the gateway with their cart token,
payments asking orders over HTTP whether that token reaches the order; other tokens get the 404
a missing id gets, and capture and the payment list stay closed to guests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import requires_nats, requires_postgres, requires_redis
from tests.e2e.test_distributed_flow import Platform, platform
from tests.integration.test_identity_support import API, bearer, signed_in
from tests.integration.test_orders_support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CART_TOKEN,
    add_product,
    eventually,
    place_guest_order,
)

__all__ = ["platform"]

pytestmark = [requires_postgres, requires_redis, requires_nats]

CARD = {"card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}
THREE_D_SECURE = {
    "card": {"number": "4000 0025 0000 3155", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
}


async def _stocked(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    admin = await signed_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    warehouse = await client.post(
        f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=bearer(admin)
    )
    assert warehouse.status_code in (201, 409), warehouse.text
    sku = f"GUEST-{uuid.uuid4().hex[:6].upper()}"
    await add_product(client, admin, sku, 10)
    return admin, sku


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def test_guest_pays_through_the_gateway_with_a_3d_secure_action_and_gets_an_invoice(
    platform: Platform,
) -> None:
    async with platform.client() as client:
        admin, sku = await _stocked(client)
        order = await place_guest_order(client, {sku: 1}, email="walk-in@example.com")
        guest = order["_headers"]
        other = (await place_guest_order(client, {sku: 1}))["_headers"]

        body = {"order_id": order["id"], "payment_method": THREE_D_SECURE}
        once = {**guest, **_key()}
        started = await client.post(f"{API}/payments", json=body, headers=once)
        assert started.status_code == 201, started.text
        assert started.json()["status"] == "requires_action"
        replayed = await client.post(f"{API}/payments", json=body, headers=once)
        assert replayed.headers.get("Idempotent-Replayed") == "true"
        assert replayed.json()["id"] == started.json()["id"]
        payment_id = started.json()["id"]

        for stranger in ({}, {CART_TOKEN: "not-a-token"}, other):
            read = await client.get(f"{API}/payments/{payment_id}", headers=stranger)
            assert read.status_code == 404, read.text
            confirmed = await client.post(
                f"{API}/payments/{payment_id}/confirm", json={}, headers={**stranger, **_key()}
            )
            assert confirmed.status_code == 404, confirmed.text
        assert (await client.get(f"{API}/payments", headers=guest)).status_code == 401

        read = await client.get(f"{API}/payments/{payment_id}", headers=guest)
        assert read.status_code == 200, read.text
        finished = await client.post(
            f"{API}/payments/{payment_id}/confirm", json={}, headers={**guest, **_key()}
        )
        assert finished.status_code == 200, finished.text
        assert finished.json()["status"] == "succeeded"

        async def order_is_paid() -> bool:
            response = await client.get(f"{API}/orders/{order['id']}", headers=guest)
            return bool(response.json()["status"] == "paid")

        await eventually(order_is_paid, timeout=60, what="the guest's order to be paid")
        invoices = await client.get(
            f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(admin)
        )
        [invoice] = invoices.json()["items"]
        assert invoice["total"] == order["total"]
        assert invoice["buyer"]["email"] == "walk-in@example.com"


async def test_guest_authorizes_through_the_gateway_but_cannot_capture(
    platform: Platform,
) -> None:
    async with platform.client() as client:
        _, sku = await _stocked(client)
        order = await place_guest_order(client, {sku: 1})
        guest = order["_headers"]
        body = {"order_id": order["id"], "capture_method": "manual", "payment_method": CARD}
        authorized = await client.post(f"{API}/payments", json=body, headers={**guest, **_key()})
        assert authorized.status_code == 201, authorized.text
        assert authorized.json()["status"] == "requires_capture"
        payment_id = authorized.json()["id"]
        captured = await client.post(
            f"{API}/payments/{payment_id}/capture", json={}, headers={**guest, **_key()}
        )
        assert captured.status_code == 401, captured.text
        canceled = await client.post(
            f"{API}/payments/{payment_id}/cancel", headers={**guest, **_key()}
        )
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
