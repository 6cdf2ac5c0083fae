"""Addresses saved to a profile have a checkout address's shape and rules: one goes from an order
to the profile and back to a cart as it is; addresses saved in the older shape still read and are
still accepted; a bad field is named."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from ecosistema.identity.models import profiles
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import customer, seed_shop, settings, staff_tokens
from tests.integration.test_payments_personal_data import app, ctx_of

# Fixtures: identity, catalog, orders and payments in one app, on each shape.
__all__ = ["app", "settings"]

CHECKOUT_ADDRESS = {
    "name": "Nora Bianchi",
    "company": " Bianchi & Figli ",
    "line1": "Calle Mayor 1",
    "line2": "",
    "city": "Madrid",
    "region": "Madrid",
    "postal_code": "28013",
    "country": "es",
    "phone": "+34 600 123 456",
}
NORMALISED = {
    **CHECKOUT_ADDRESS,
    "label": None,
    "company": "Bianchi & Figli",
    "line2": None,
    "country": "ES",
}


async def save_addresses(
    client: httpx.AsyncClient, tokens: dict[str, Any], addresses: list[dict[str, Any]]
) -> httpx.Response:
    return await client.patch(
        f"{API}/users/me", json={"addresses": addresses}, headers=bearer(tokens)
    )


async def saved_addresses(client: httpx.AsyncClient, tokens: dict[str, Any]) -> Any:
    me = await client.get(f"{API}/users/me", headers=bearer(tokens))
    assert me.status_code == 200, me.text
    return me.json()["profile"]["addresses"]


async def test_a_checkout_address_is_saved_to_the_profile_and_copied_back_to_a_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"ADDR-BOOK": 5})
    shopper = await customer(client, "nora")

    minimal = {"name": "N", "line1": "L", "city": "C", "country": "ES"}
    saved = await save_addresses(client, shopper, [minimal, CHECKOUT_ADDRESS])
    assert saved.status_code == 200, saved.text
    book = await saved_addresses(client, shopper)
    assert book[1] == NORMALISED
    assert book[0]["name"] == "N" and book[0]["phone"] is None

    # The saved address, as read back (label and nulls included), is a valid cart address.
    labelled = {**book[1], "label": "Home"}
    assert (await save_addresses(client, shopper, [labelled])).status_code == 200
    home = (await saved_addresses(client, shopper))[0]
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    assert cart.status_code in (200, 201), cart.text
    patched = await client.patch(
        f"{API}/carts/{cart.json()['id']}",
        json={"shipping_address": home, "billing_address": home},
        headers=bearer(shopper),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["shipping_address"] == home
    assert patched.json()["billing_address"] == home

    # And the cart's address goes back to the profile as it is.
    copied = await save_addresses(client, shopper, [patched.json()["shipping_address"]])
    assert copied.status_code == 200, copied.text
    assert await saved_addresses(client, shopper) == [home]


async def test_addresses_in_the_older_profile_shape_still_read_and_are_still_accepted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    shopper = await customer(client, "older")
    # As profiles stored addresses before they took a name, a company or a phone.
    older = [
        {
            "label": "Home",
            "line1": "Calle Escondida 42",
            "line2": None,
            "city": "Sevilla",
            "region": None,
            "postal_code": "41001",
            "country": "ES",
        }
    ]
    identity = ctx_of(app, "identity")
    sealed = identity.cipher.encrypt(
        json.dumps(older), table="profiles", column="addresses_encrypted", row_id=shopper["id"]
    )
    async with identity.db.transaction() as session:
        await session.execute(
            update(profiles)
            .where(profiles.c.user_id == shopper["id"])
            .values(addresses_encrypted=sealed)
        )
    expected = {**older[0], "name": None, "company": None, "phone": None}
    assert await saved_addresses(client, shopper) == [expected]

    again = await save_addresses(client, shopper, older)
    assert again.status_code == 200, again.text
    assert await saved_addresses(client, shopper) == [expected]


@pytest.mark.parametrize(
    ("fault", "field"),
    [
        ({"name": ""}, "addresses.0.name"),
        ({"name": "a\u202eb"}, "addresses.0.name"),
        ({"company": "x" * 201}, "addresses.0.company"),
        ({"line1": "   "}, "addresses.0.line1"),
        ({"city": None}, "addresses.0.city"),
        ({"postal_code": "1" * 21}, "addresses.0.postal_code"),
        ({"country": "zz"}, "addresses.0.country"),
        ({"country": "ESP"}, "addresses.0.country"),
        ({"phone": "call me"}, "addresses.0.phone"),
        ({"label": "x" * 51}, "addresses.0.label"),
        ({"floor": "3"}, "addresses.0.floor"),
    ],
)
async def test_a_bad_address_field_is_named(
    app: FastAPI, client: httpx.AsyncClient, fault: dict[str, Any], field: str
) -> None:
    shopper = await customer(client, "careless")
    good = {"name": "N", "line1": "L", "city": "C", "country": "ES"}
    refused = await save_addresses(client, shopper, [{**CHECKOUT_ADDRESS, **fault}, good])
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == [field]
    assert await saved_addresses(client, shopper) == []


async def test_null_addresses_are_refused_and_an_empty_list_removes_them(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tokens = await customer(client, "nulls")
    assert (await save_addresses(client, tokens, [CHECKOUT_ADDRESS])).status_code == 200

    for field in ("addresses", "locale", "preferences"):
        refused = await client.patch(f"{API}/users/me", json={field: None}, headers=bearer(tokens))
        assert refused.status_code == 422, (field, refused.text)
        assert [(e["field"], e["message"]) for e in refused.json()["errors"]] == [
            (field, "must not be null")
        ]
    assert await saved_addresses(client, tokens) == [NORMALISED]

    assert (await save_addresses(client, tokens, [])).status_code == 200
    assert await saved_addresses(client, tokens) == []
