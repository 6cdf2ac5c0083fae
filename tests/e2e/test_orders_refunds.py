"""Refunds seen from the order, with identity, catalog, orders and payments in one app: after a
refund of the rest with restock, the order's lines count as refunded exactly the units put back
in stock."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.e2e.test_payments_flow import CARD, app
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

__all__ = ["app", "settings"]


async def _refund(
    client: httpx.AsyncClient, admin: dict[str, Any], payment_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"{API}/payments/{payment_id}/refunds",
        json=body,
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )


async def test_refunding_the_rest_with_restock_records_the_restocked_units_on_the_lines(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"RR-TEE": 10, "RR-MUG": 10})
    shopper = await customer(client, "rest")
    created = await client.post(
        f"{API}/carts",
        json={"items": [{"sku": "RR-TEE", "quantity": 3}, {"sku": "RR-MUG", "quantity": 2}]},
        headers=bearer(shopper),
    )
    assert created.status_code == 201, created.text
    placed = await checkout(client, created.json()["id"], bearer(shopper))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201, paid.text
    payment_id = paid.json()["id"]

    async def order_now() -> dict[str, Any]:
        response = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def status_is(status: str) -> bool:
        return bool((await order_now())["status"] == status)

    await eventually(lambda: status_is("paid"), what="the order to become paid")
    sold = {sku: await available(client, admin, sku) for sku in ("RR-TEE", "RR-MUG")}
    tee = next(line for line in order["lines"] if line["sku"] == "RR-TEE")
    by_line = await _refund(
        client,
        admin,
        payment_id,
        {"lines": [{"line_id": tee["line_id"], "quantity": 1}], "reason": "torn", "restock": True},
    )
    assert by_line.status_code == 201, by_line.text
    await eventually(lambda: status_is("partially_refunded"), what="the refund by line")

    rest = await _refund(client, admin, payment_id, {"reason": "rest", "restock": True})
    assert rest.status_code == 201, rest.text
    await eventually(lambda: status_is("refunded"), what="the refund of the rest")

    async def all_back() -> bool:
        return (
            await available(client, admin, "RR-TEE"),
            await available(client, admin, "RR-MUG"),
        ) == (
            sold["RR-TEE"] + 3,
            sold["RR-MUG"] + 2,
        )

    await eventually(all_back, what="every unit back in stock")
    lines = {line["sku"]: line for line in (await order_now())["lines"]}
    restocked = {sku: await available(client, admin, sku) - sold[sku] for sku in sold}
    assert {sku: line["refunded_quantity"] for sku, line in lines.items()} == restocked
    assert restocked == {"RR-TEE": 3, "RR-MUG": 2}
