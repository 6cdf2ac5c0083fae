"""End to end over HTTP: a customer fills a cart, signs in, checks out and sees the order; a
storefront puts the address on the cart first and shows the tax of its country; staff list
orders, add a note, fulfil with a tracking number and ship."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    CART_TOKEN,
    DELIVERY,
    app,
    customer,
    eventually,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_customer_browses_fills_a_cart_signs_in_and_checks_out(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"E2E-TEE": 10, "E2E-MUG": 10})

    methods = (await client.get(f"{API}/shipping-methods")).json()
    assert {m["code"] for m in methods} >= {"standard", "express"}
    created = await client.post(f"{API}/carts", json={"currency": "EUR", "country": "FR"})
    cart_id, token = created.json()["id"], {CART_TOKEN: created.headers[CART_TOKEN]}
    for sku, quantity in (("E2E-TEE", 2), ("E2E-MUG", 1)):
        added = await client.post(
            f"{API}/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}, headers=token
        )
        assert added.status_code == 200, added.text

    shopper = await customer(client, "shopper")
    merged = await client.post(f"{API}/carts/{cart_id}/merge", headers={**bearer(shopper), **token})
    assert merged.status_code == 200 and merged.json()["customer_id"] == shopper["id"]
    lyon = {**DELIVERY, "city": "Lyon", "country": "FR"}
    await client.patch(
        f"{API}/carts/{cart_id}",
        json={"shipping_method": "express", "shipping_address": lyon},
        headers=bearer(shopper),
    )
    priced = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": "WELCOME10"}, headers=bearer(shopper)
    )
    totals = priced.json()["totals"]
    assert totals["discount_total"] == 600 and totals["shipping_total"] == 995
    assert totals["tax_rate_bp"] == 2000

    key = uuid.uuid4().hex
    placed = await client.post(
        f"{API}/orders",
        json={"cart_id": cart_id},
        headers={**bearer(shopper), "Idempotency-Key": key},
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["total"] == totals["total"] == 6000 - 600 + 995
    assert order["email"] == shopper["email"] and order["status"] == "pending_payment"
    assert order["shipping_address"]["city"] == "Lyon" and order["country"] == "FR"

    mine = await client.get(f"{API}/orders", headers=bearer(shopper))
    assert [o["number"] for o in mine.json()["items"]] == [order["number"]]
    history = await client.get(f"{API}/orders/{order['id']}/history", headers=bearer(shopper))
    assert [e["action"] for e in history.json()] == ["place"]


async def test_storefront_puts_the_address_on_the_cart_shows_its_tax_and_checks_out(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"E2E-LAMP": 10})
    created = await client.post(
        f"{API}/carts",
        json={"email": "nora@example.com", "items": [{"sku": "E2E-LAMP", "quantity": 2}]},
    )
    assert created.status_code == 201, created.text
    cart_id, token = created.json()["id"], {CART_TOKEN: created.headers[CART_TOKEN]}
    assert created.json()["totals"]["tax_rate_bp"] == 2100  # the shop's default country, ES
    url = f"{API}/carts/{cart_id}"

    shipping = await client.patch(url, json={"shipping_method": "standard"}, headers=token)
    assert shipping.json()["problems"] == [
        "A shipping address is needed: the parcel is delivered to it."
    ]
    no_address = await client.post(
        f"{API}/orders", json={"cart_id": cart_id}, headers={**token, "Idempotency-Key": "a1"}
    )
    assert no_address.status_code == 422, no_address.text
    assert [e["field"] for e in no_address.json()["errors"]] == ["shipping_address"]

    rome = {**DELIVERY, "name": "Nora Bianchi", "city": "Roma", "country": "it"}
    addressed = await client.patch(url, json={"shipping_address": rome}, headers=token)
    assert addressed.status_code == 200, addressed.text
    cart = addressed.json()
    assert cart["country"] == "IT" and cart["problems"] == []
    assert cart["totals"]["tax_rate_bp"] == 2200
    assert cart["billing_address"] == cart["shipping_address"]

    placed = await client.post(
        f"{API}/orders", json={"cart_id": cart_id}, headers={**token, "Idempotency-Key": "a2"}
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["total"] == cart["totals"]["total"] and order["tax_rate_bp"] == 2200
    assert order["shipping_address"] == cart["shipping_address"]
    seen = await client.get(f"{API}/orders/{order['id']}", headers=token)
    assert seen.json()["shipping_address"]["city"] == "Roma"


async def test_staff_list_note_fulfil_and_ship_a_paid_order(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"E2E-CAP": 10})
    buyer = await customer(client, "buyer")
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
    cart_id = cart.json()["id"]
    await client.post(
        f"{API}/carts/{cart_id}/items",
        json={"sku": "E2E-CAP", "quantity": 3},
        headers=bearer(buyer),
    )
    placed = await client.post(
        f"{API}/orders",
        json={
            "cart_id": cart_id,
            "shipping_method": "standard",
            "shipping_address": {**DELIVERY, "country": "ES"},
        },
        headers={**bearer(buyer), "Idempotency-Key": uuid.uuid4().hex},
    )
    order = placed.json()
    await publish(
        app,
        "PaymentSucceeded",
        {
            "payment_id": "pay_1",
            "order_id": order["id"],
            "amount": order["total"],
            "currency": "EUR",
        },
    )

    async def paid() -> bool:
        listed = await client.get(f"{API}/orders", params={"status": "paid"}, headers=bearer(admin))
        return [o["id"] for o in listed.json()["items"]] == [order["id"]]

    await eventually(paid, what="the order to be listed as paid")
    url = f"{API}/orders/{order['id']}"
    noted = await client.post(f"{url}/notes", json={"text": "VIP customer"}, headers=bearer(admin))
    assert noted.status_code == 201
    line_id = order["lines"][0]["line_id"]
    fulfilled = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": line_id, "quantity": 3}], "tracking_number": "1Z999"},
        headers=bearer(admin),
    )
    assert fulfilled.status_code == 201 and fulfilled.json()["status"] == "fulfilled"
    shipped = await client.post(f"{url}/ship", headers=bearer(admin))
    assert shipped.json()["status"] == "shipped"
    assert "deliver" in shipped.json()["allowed_actions"]

    seen = await client.get(url, headers=bearer(buyer))
    assert seen.json()["fulfillments"][0]["tracking_number"] == "1Z999"
    # Staff notes are internal: the customer's history leaves them out.
    history = (await client.get(f"{url}/history", headers=bearer(buyer))).json()
    # The buyer's mail, once the mail job has sent it, is on the history too.
    steps = [e["action"] for e in history if e["action"] != "email_sent"]
    assert steps == ["place", "pay", "fulfil", "ship"]
    staff_view = (await client.get(f"{url}/history", headers=bearer(admin))).json()
    assert [e["reason"] for e in staff_view if e["kind"] == "note"] == ["VIP customer"]
