"""End to end over HTTP with every commerce service and webhooks in one app: a customer places
and pays an order through the API, and the subscribed receiver gets a signed ``order.paid``
from the sender, never from inside the customer's requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.webhooks import dispatch_due, verify_signature
from tests.conftest import drop_test_schemas
from tests.e2e.test_payments_flow import order_status, pay, placed_order
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import customer, eventually, seed_shop, staff_tokens
from tests.integration.test_webhooks_support import (
    Receiver,
    deliveries,
    receiver,
    services,
    settings,
    subscribe,
    webhooks_ctx,
)

__all__ = ["receiver", "settings"]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    names = ("identity", "catalog", "orders", "payments", "webhooks")
    application = create_app(services(*names), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


async def test_a_paid_order_reaches_the_subscribed_receiver_as_a_signed_order_paid(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid", "payment.succeeded"])
    await seed_shop(app, client, admin, {"HOOK-TEE": 10})
    shopper = await customer(client, "hooked")
    order = await placed_order(client, shopper, "HOOK-TEE")
    paid = await pay(client, shopper, order["id"])
    assert paid.status_code == 201, paid.text

    async def order_is_paid() -> bool:
        return await order_status(client, shopper, order["id"]) == "paid"

    await eventually(order_is_paid, what="the order to become paid")
    found: list[dict[str, Any]] = []

    async def both_recorded() -> bool:
        found[:] = await deliveries(client, admin, subscription_id=sub["id"])
        return {d["event_type"] for d in found} == {"order.paid", "payment.succeeded"}

    await eventually(both_recorded, what="order.paid and payment.succeeded to be recorded")
    # Every request has returned and the events are recorded, yet nothing was sent: sending is
    # the sender's job, not the requests'.
    assert receiver.requests == []
    assert all(d["status"] == "pending" for d in found)

    assert await dispatch_due(webhooks_ctx(app)) == 2
    by_type = {r.json()["type"]: r for r in receiver.requests}
    request = by_type["order.paid"]
    verify_signature(request.body, request.headers["ecosistema-signature"], sub["secret"])
    event = request.json()
    assert event["data"]["order_id"] == order["id"]
    assert event["data"]["total"] == order["total"] and event["data"]["currency"] == "EUR"
    assert event["data"]["lines"][0]["sku"] == "HOOK-TEE"
    assert by_type["payment.succeeded"].json()["data"]["payment_id"] == paid.json()["id"]

    paid_delivery = next(d for d in found if d["event_type"] == "order.paid")
    detail = await client.get(
        f"{API}/webhook-deliveries/{paid_delivery['id']}", headers=bearer(admin)
    )
    assert detail.json()["status"] == "succeeded"
    assert detail.json()["attempts"][0]["status_code"] == 200
    refused = await client.get(f"{API}/webhook-deliveries", headers=bearer(shopper))
    assert refused.status_code == 403
