"""Shipping and billing addresses given at checkout: kept with the order, encrypted at rest (in
orders, in the idempotent answer, and in payments), shown to the buyer and staff, printed on
the invoice; the order's country (and so its tax) follows the shipping address; bad addresses
are refused field by field and place nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import reencrypt_columns, rotate_master_key
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    checkout,
    customer,
    eventually,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)
from tests.integration.test_payments_personal_data import CARD, app, ctx_of, dump

# Fixtures: identity, catalog, orders and payments in one app, on each shape.
__all__ = ["app", "settings"]

SHIPPING = {
    "name": "Lucía Fernández",
    "line1": "Calle Escondida 12",
    "line2": "3º B",
    "city": "Cuenca",
    "postal_code": "16001",
    "country": "es",
    "phone": "+34 600 000 000",
}
BILLING = {
    "name": "Lucía Fernández",
    "company": "Tintorería Oculta SL",
    "line1": "Avenida Reservada 7",
    "city": "Teruel",
    "postal_code": "44001",
    "country": "ES",
}
SECRETS = ("fernández", "escondida", "cuenca", "reservada", "teruel", "oculta", "600 000")


async def test_addresses_are_kept_encrypted_shown_and_printed_on_the_invoice(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"ADDR-TEE": 10})
    shopper = await customer(client, "addressed")
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    cart_id = cart.json()["id"]
    await client.post(
        f"{API}/carts/{cart_id}/items",
        json={"sku": "ADDR-TEE", "quantity": 1},
        headers=bearer(shopper),
    )
    key = uuid.uuid4().hex
    addresses = {"shipping_address": SHIPPING, "billing_address": BILLING}
    placed = await checkout(client, cart_id, bearer(shopper), key=key, **addresses)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    shipping = order["shipping_address"]
    assert shipping["line1"] == "Calle Escondida 12" and shipping["country"] == "ES"
    assert shipping["company"] is None and shipping["region"] is None
    assert order["billing_address"]["company"] == "Tintorería Oculta SL"
    assert order["country"] == "ES"

    replayed = await checkout(client, cart_id, bearer(shopper), key=key, **addresses)
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json() == order
    seen = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
    assert seen.json()["shipping_address"] == shipping
    assert seen.json()["billing_address"] == order["billing_address"]

    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201 and paid.json()["status"] == "succeeded", paid.text

    async def invoiced() -> bool:
        found = await client.get(
            f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(shopper)
        )
        return bool(found.json()["items"])

    await eventually(invoiced, what="the invoice")
    [invoice] = (
        await client.get(
            f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(shopper)
        )
    ).json()["items"]
    assert invoice["buyer"]["name"] == "Lucía Fernández"
    assert invoice["buyer"]["address"] == (
        "Tintorería Oculta SL, Avenida Reservada 7, 44001, Teruel, ES"
    )

    orders_dump = await dump(ctx_of(app, "orders"))
    payments_dump = await dump(ctx_of(app, "payments"))
    for secret in SECRETS:
        assert secret not in orders_dump, secret
        assert secret not in payments_dump, secret
    assert order["number"].lower() in orders_dump and order["number"].lower() in payments_dump

    # A new master key: the addresses are re-encrypted with the email, and still read back.
    rotate_master_key(settings)
    orders = ctx_of(app, "orders")
    cipher = app.state.runtime.cipher
    assert await reencrypt_columns(orders.db, cipher, orders.service.encrypted_columns) == 3
    seen = await client.get(f"{API}/orders/{order['id']}", headers=bearer(shopper))
    assert seen.json()["shipping_address"] == shipping
    assert seen.json()["billing_address"] == order["billing_address"]


async def test_billing_defaults_to_shipping_and_the_country_follows_the_shipping_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"ADDR-MUG": 10})
    cart_id, headers = await guest_cart(client, {"ADDR-MUG": 1}, country="ES")
    berlin = {"name": "Jonas", "line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}
    placed = await checkout(
        client, cart_id, headers, email="jonas@example.com", shipping_address=berlin
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["country"] == "DE" and order["tax_rate_bp"] == 1900
    assert order["billing_address"] == order["shipping_address"]
    assert order["shipping_address"]["city"] == "Berlin"

    # Text in scripts written with joiners is kept; a blank phone is dropped.
    tehran = {"name": "Mehr\u200cnaz", "line1": "Kh. Azadi 5", "city": "Tehran", "phone": " "}
    cart_id, headers = await guest_cart(client, {"ADDR-MUG": 1}, country="ES")
    placed = await checkout(
        client,
        cart_id,
        headers,
        email="m@example.com",
        shipping_address={**tehran, "country": "DE"},
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["shipping_address"]["name"] == "Mehr\u200cnaz"
    assert placed.json()["shipping_address"]["phone"] is None

    # A shipping address in a country the shop does not sell to is the field at fault.
    cart_id, headers = await guest_cart(client, {"ADDR-MUG": 1})
    japan = {**berlin, "city": "Tokyo", "country": "JP"}
    refused = await checkout(
        client, cart_id, headers, email="j@example.com", shipping_address=japan
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["shipping_address.country"]

    # A parcel needs an address: a shipping method without one is refused at the address.
    cart_id, headers = await guest_cart(client, {"ADDR-MUG": 1})
    bare = await checkout(client, cart_id, headers, email="bare@example.com", shipping_address=None)
    assert bare.status_code == 422, bare.text
    assert [e["field"] for e in bare.json()["errors"]] == ["shipping_address"]
    assert "parcel" in bare.json()["errors"][0]["message"]

    # Where no shipping method serves the cart (digital goods), no address is needed, and the
    # order is placed with none.
    for method in ("standard", "express"):
        switched_off = await client.patch(
            f"{API}/shipping-methods/{method}", json={"active": False}, headers=bearer(admin)
        )
        assert switched_off.status_code == 200, switched_off.text
    cart = (await client.get(f"{API}/carts/{cart_id}", headers=headers)).json()
    assert cart["problems"] == ["An email address is needed for the order."]
    digital = await checkout(
        client, cart_id, headers, email="bare@example.com", shipping_method=None
    )
    assert digital.status_code == 201, digital.text
    assert digital.json()["shipping_address"] is None and digital.json()["billing_address"] is None
    assert digital.json()["shipping_method"] is None and digital.json()["shipping_total"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"shipping_address": {**SHIPPING, "line1": "   "}}, "shipping_address.line1"),
        ({"shipping_address": {k: v for k, v in SHIPPING.items() if k != "city"}}, None),
        ({"shipping_address": {**SHIPPING, "country": "XX"}}, "shipping_address.country"),
        ({"shipping_address": {**SHIPPING, "name": "Ana\u202eevil"}}, "shipping_address.name"),
        ({"shipping_address": {**SHIPPING, "line2": "3\u2028B"}}, "shipping_address.line2"),
        ({"shipping_address": {**SHIPPING, "phone": "call me"}}, "shipping_address.phone"),
        ({"shipping_address": {**SHIPPING, "floor": 3}}, "shipping_address.floor"),
        ({"billing_address": {**BILLING, "postal_code": "1" * 21}}, "billing_address.postal_code"),
        ({"shipping_address": SHIPPING, "country": "FR"}, "shipping_address.country"),
        ({"shipping_address": "Calle 1, Madrid"}, "shipping_address"),
    ],
)
async def test_bad_addresses_are_refused_at_the_field_and_place_nothing(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"ADDR-CAP": 5})
    cart_id, headers = await guest_cart(client, {"ADDR-CAP": 1})
    refused = await checkout(client, cart_id, headers, email="cap@example.com", **body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    fields = {error["field"] for error in refused.json()["errors"]}
    assert (field or "shipping_address.city") in fields, refused.json()
    placed = await checkout(client, cart_id, headers, email="cap@example.com")
    assert placed.status_code == 201, placed.text
