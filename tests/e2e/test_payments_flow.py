"""End to end over HTTP with identity, catalog, orders and payments in one app: a customer pays
their own order and sees the invoice; staff refund a line with restock and read the sales
report."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    available,
    checkout,
    customer,
    eventually,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["settings"]

CARD = {"card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    names = ("identity", "catalog", "orders", "payments")
    application = create_app(load_services(names), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


async def placed_order(client: httpx.AsyncClient, shopper: dict[str, Any], sku: str) -> Any:
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    cart_id = cart.json()["id"]
    added = await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": sku, "quantity": 2}, headers=bearer(shopper)
    )
    assert added.status_code == 200, added.text
    response = await checkout(client, cart_id, bearer(shopper))
    assert response.status_code == 201, response.text
    return response.json()


async def pay(client: httpx.AsyncClient, who: dict[str, Any], order_id: str) -> httpx.Response:
    return await client.post(
        f"{API}/payments",
        json={"order_id": order_id, "payment_method": CARD},
        headers={**bearer(who), "Idempotency-Key": uuid.uuid4().hex},
    )


async def order_status(client: httpx.AsyncClient, who: dict[str, Any], order_id: str) -> str:
    response = await client.get(f"{API}/orders/{order_id}", headers=bearer(who))
    return str(response.json()["status"])


async def test_customer_pays_own_order_and_sees_the_invoice(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PAY-TEE": 10})
    shopper = await customer(client, "payer")
    stranger = await customer(client, "stranger")
    order = await placed_order(client, shopper, "PAY-TEE")

    assert (await pay(client, stranger, order["id"])).status_code == 404
    paid = await pay(client, shopper, order["id"])
    assert paid.status_code == 201, paid.text
    assert paid.json()["status"] == "succeeded"
    assert paid.json()["amount"] == order["total"]

    async def order_is_paid() -> bool:
        return await order_status(client, shopper, order["id"]) == "paid"

    await eventually(order_is_paid, what="the order to become paid")
    invoices = (await client.get(f"{API}/invoices", headers=bearer(shopper))).json()["items"]
    assert len(invoices) == 1
    assert invoices[0]["number"].startswith("INV-")
    assert invoices[0]["total"] == order["total"]
    assert invoices[0]["buyer"]["email"] == shopper["email"]
    assert (await client.get(f"{API}/invoices", headers=bearer(stranger))).json()["items"] == []


async def test_staff_refund_a_line_with_restock_and_see_the_sales_report(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PAY-MUG": 10})
    shopper = await customer(client, "refunded")
    order = await placed_order(client, shopper, "PAY-MUG")
    payment = (await pay(client, shopper, order["id"])).json()

    async def order_is_paid() -> bool:
        return await order_status(client, admin, order["id"]) == "paid"

    await eventually(order_is_paid, what="the order to become paid")
    stock_after_sale = await available(client, admin, "PAY-MUG")
    line = order["lines"][0]
    refund = await client.post(
        f"{API}/payments/{payment['id']}/refunds",
        json={
            "lines": [{"line_id": line["line_id"], "quantity": 1}],
            "reason": "broken",
            "restock": True,
        },
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert refund.status_code == 201, refund.text
    refunded = refund.json()["amount"]
    assert 0 < refunded < order["total"]

    async def partially_refunded() -> bool:
        return await order_status(client, admin, order["id"]) == "partially_refunded"

    await eventually(partially_refunded, what="the order to be partially refunded")

    async def restocked() -> bool:
        return await available(client, admin, "PAY-MUG") == stock_after_sale + 1

    await eventually(restocked, what="the refunded unit to be back in stock")

    report = await client.get(
        f"{API}/reports/sales",
        params={"group_by": "week", "currency": "EUR"},
        headers=bearer(admin),
    )
    assert report.status_code == 200, report.text
    [row] = report.json()["rows"]
    assert (row["revenue"], row["refunds"], row["orders"]) == (order["total"], refunded, 1)
    assert row["net"] == order["total"] - refunded
    exported = await client.get(
        f"{API}/reports/sales", params={"format": "csv"}, headers=bearer(admin)
    )
    [csv_row] = list(csv.DictReader(io.StringIO(exported.text)))
    assert int(csv_row["net"]) == order["total"] - refunded
    assert (await client.get(f"{API}/reports/sales", headers=bearer(shopper))).status_code == 403
