"""Merging an anonymous cart at sign-in never carries the guest's email into the customer's
cart: on a shared device it may be someone else's, and the order's confirmation and invoice
would go there. The customer's order uses their account's email unless they give another."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    checkout,
    customer,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]

GUEST = "anon@example.com"


async def test_a_customer_adopting_a_guests_cart_orders_with_their_own_email(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-51": 5})
    anon_id, token = await guest_cart(client, {"TEE-51": 1}, email=GUEST)
    assert (await client.get(f"{API}/carts/{anon_id}", headers=token)).json()["email"] == GUEST
    ana = await customer(client, "ana")
    adopted = await client.post(f"{API}/carts/{anon_id}/merge", headers={**bearer(ana), **token})
    assert adopted.status_code == 200, adopted.text
    assert adopted.json()["id"] == anon_id and adopted.json()["email"] is None

    placed = await checkout(client, anon_id, bearer(ana))
    assert placed.status_code == 201, placed.text
    assert placed.json()["customer_id"] == ana["id"]
    assert placed.json()["email"] == ana["email"]


async def test_merging_into_a_customers_cart_leaves_its_email_to_the_account(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-52": 5, "MUG-52": 5})
    bea = await customer(client, "bea")
    own = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "items": [{"sku": "TEE-52", "quantity": 1}]},
        headers=bearer(bea),
    )
    assert own.status_code == 201, own.text
    anon_id, token = await guest_cart(client, {"MUG-52": 1}, email=GUEST)
    merged = await client.post(f"{API}/carts/{anon_id}/merge", headers={**bearer(bea), **token})
    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == own.json()["id"] and merged.json()["email"] is None
    assert len(merged.json()["lines"]) == 2

    placed = await checkout(client, own.json()["id"], bearer(bea))
    assert placed.status_code == 201, placed.text
    assert placed.json()["email"] == bea["email"]


async def test_an_email_the_customer_set_on_their_own_cart_is_kept(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-53": 5})
    cleo = await customer(client, "cleo")
    chosen = "cleo-work@example.com"
    own = await client.post(
        f"{API}/carts", json={"currency": "EUR", "email": chosen}, headers=bearer(cleo)
    )
    assert own.status_code == 201, own.text
    anon_id, token = await guest_cart(client, {"TEE-53": 1}, email=GUEST)
    merged = await client.post(f"{API}/carts/{anon_id}/merge", headers={**bearer(cleo), **token})
    assert merged.status_code == 200, merged.text
    assert merged.json()["email"] == chosen

    placed = await checkout(client, own.json()["id"], bearer(cleo))
    assert placed.status_code == 201, placed.text
    assert placed.json()["email"] == chosen
