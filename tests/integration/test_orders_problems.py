"""A cart's ``problems`` and checkout's 422 come from one check: an empty list means checkout
goes through, and a refused checkout names every field at fault at once."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    DELIVERY,
    app,
    checkout,
    customer,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_a_guest_cart_without_email_lists_it_and_checkout_refuses_on_email(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-P1": 5})
    cart_id, token = await guest_cart(client, {"TEE-P1": 1}, country="ES")
    url = f"{API}/carts/{cart_id}"
    madrid = {**DELIVERY, "country": "ES"}
    cart = await client.patch(
        url, json={"shipping_method": "standard", "shipping_address": madrid}, headers=token
    )
    assert cart.json()["problems"] == ["An email address is needed for the order."]

    refused = await checkout(client, cart_id, token)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["email"]

    ready = await client.patch(url, json={"email": "g@example.com"}, headers=token)
    assert ready.json()["problems"] == []
    placed = await checkout(client, cart_id, token)
    assert placed.status_code == 201, placed.text


async def test_a_refused_checkout_names_every_field_at_fault(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-P2": 5})
    cart_id, token = await guest_cart(client, {"TEE-P2": 1}, country="ES")
    await client.post(f"{API}/carts/{cart_id}/vouchers", json={"code": "WELCOME10"}, headers=token)
    await client.patch(f"{API}/vouchers/WELCOME10", json={"active": False}, headers=bearer(admin))
    cart = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()
    assert cart["problems"] == [
        "Choose a shipping method.",
        "A shipping address is needed: the parcel is delivered to it.",
        "An email address is needed for the order.",
        "The voucher is no longer active.",
    ]

    refused = await client.post(f"{API}/orders", json={"cart_id": cart_id}, headers=token)
    assert refused.status_code == 422, refused.text
    fields = [e["field"] for e in refused.json()["errors"]]
    assert sorted(fields) == ["email", "shipping_address", "shipping_method", "voucher_code"]
    for problem in cart["problems"]:
        assert problem in refused.json()["detail"]


async def test_a_country_the_shop_does_not_sell_to_is_named_with_the_other_faults(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-P4": 5})
    cart_id, token = await guest_cart(client, {"TEE-P4": 1}, country="ES")
    refused = await client.post(
        f"{API}/orders", json={"cart_id": cart_id, "country": "JP"}, headers=token
    )
    assert refused.status_code == 422, refused.text
    fields = [e["field"] for e in refused.json()["errors"]]
    assert fields[0] == "country" and {"shipping_method", "email"} <= set(fields)
    assert fields.count("country") == 1
    assert "does not sell to JP" in refused.json()["detail"]


async def test_a_customers_cart_needs_no_email_of_its_own(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-P3": 5})
    buyer = await customer(client, "noemail")
    created = await client.post(
        f"{API}/carts",
        json={"country": "ES", "items": [{"sku": "TEE-P3", "quantity": 1}]},
        headers=bearer(buyer),
    )
    assert created.status_code == 201, created.text
    cart_id = created.json()["id"]
    cart = await client.patch(
        f"{API}/carts/{cart_id}",
        json={"shipping_method": "standard", "shipping_address": {**DELIVERY, "country": "ES"}},
        headers=bearer(buyer),
    )
    assert cart.json()["problems"] == []
    placed = await checkout(client, cart_id, bearer(buyer))
    assert placed.status_code == 201, placed.text
    assert placed.json()["email"] == buyer["email"]
