"""Orders hold amounts up to their limit on both shapes: past 2^31 minor units (the range of a
32-bit column) up to 10^12, and a cart above that limit is refused naming it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    add_product,
    app,
    checkout,
    eventually,
    guest_cart,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_an_order_past_two_to_the_31_minor_units_is_placed_paid_and_refunded(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    await add_product(client, admin, "YACHT-1", 2, price=40_000_000_000)
    cart_id, token = await guest_cart(client, {"YACHT-1": 2})
    placed = await checkout(client, cart_id, token, email="rich@example.com")
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["total"] == 80_000_000_000 + 495
    assert order["lines"][0]["total"] == 80_000_000_000
    await publish(
        app,
        "PaymentSucceeded",
        {"payment_id": "p", "order_id": order["id"], "amount": order["total"]}
        | {"currency": "EUR", "captured_amount": order["total"]},
    )

    async def paid() -> bool:
        seen = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
        return bool(seen.json()["amount_paid"] == order["total"])

    await eventually(paid, what="the order paid")


async def test_a_cart_above_the_order_limit_is_refused_naming_the_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    # The most a price may be: with paid shipping on top, the order passes its own limit.
    await add_product(client, admin, "CASTLE-1", 1, price=10**12)
    cart_id, token = await guest_cart(client, {"CASTLE-1": 1})
    refused = await checkout(client, cart_id, token, email="rich@example.com")
    assert refused.status_code == 422, refused.text
    [error] = [e for e in refused.json()["errors"] if e["code"] == "too_large"]
    assert error["field"] == "lines"
    assert "1000000000495" in error["message"] and "1000000000000" in error["message"]
