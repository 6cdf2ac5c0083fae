"""Addresses on the cart before checkout: kept encrypted at rest (and re-encrypted with a new
master key), shown in the cart (billing defaulting to shipping), the cart's country and tax
following the shipping address, used by checkout unless the request gives its own, moved at
merge; a parcel without an address is refused; a checkout that loses the cart at the last
write learns which order won."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from ecosistema.orders import service
from ecosistema.orders.schemas import CheckoutRequest
from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import reencrypt_columns, rotate_master_key
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    CART_TOKEN,
    available,
    checkout,
    customer,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)
from tests.integration.test_payments_personal_data import app, ctx_of, dump

# Fixtures: identity, catalog, orders and payments in one app, on each shape.
__all__ = ["app", "settings"]

BERLIN = {
    "name": "Jonas Verborgen",
    "line1": "Heimlichstraße 9",
    "city": "Berlin",
    "postal_code": "10117",
    "country": "de",
    "phone": "+49 30 000000",
}
OFFICE = {
    "name": "Jonas Verborgen",
    "company": "Stille Post GmbH",
    "line1": "Geheimweg 4",
    "city": "Potsdam",
    "country": "DE",
}
PARIS = {"name": "Zoé Cachée", "line1": "Rue Discrète 3", "city": "Paris", "country": "FR"}
MADRID = {"name": "Ana Oculta", "line1": "Calle Sigilo 5", "city": "Madrid", "country": "ES"}
SECRETS = ("verborgen", "heimlich", "geheimweg", "stille post", "000000")
ADDRESS_NEEDED = "A shipping address is needed: the parcel is delivered to it."


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [error["field"] for error in response.json()["errors"]]


async def test_cart_addresses_are_encrypted_shown_and_used_by_checkout(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-TEE": 10})
    created = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "email": "jonas@example.com",
            "shipping_address": BERLIN,
            "billing_address": OFFICE,
            "items": [{"sku": "CA-TEE", "quantity": 1}],
        },
    )
    assert created.status_code == 201, created.text
    cart = created.json()
    token = {CART_TOKEN: created.headers[CART_TOKEN]}
    # The country (and so the tax) follows the shipping address.
    assert cart["country"] == "DE" and cart["totals"]["tax_rate_bp"] == 1900
    assert cart["shipping_address"]["country"] == "DE"
    assert cart["shipping_address"]["line1"] == "Heimlichstraße 9"
    assert cart["billing_address"]["company"] == "Stille Post GmbH"
    chosen = await client.patch(
        f"{API}/carts/{cart['id']}", json={"shipping_method": "standard"}, headers=token
    )
    assert chosen.json()["problems"] == [], chosen.text

    orders = ctx_of(app, "orders")
    stored = await dump(orders)
    for secret in SECRETS:
        assert secret not in stored, secret

    # A new master key: the cart's addresses are re-encrypted too, and still read back.
    rotate_master_key(settings)
    rewritten = await reencrypt_columns(
        orders.db, app.state.runtime.cipher, orders.service.encrypted_columns
    )
    assert rewritten == 3  # the cart's email and both its addresses
    seen = (await client.get(f"{API}/carts/{cart['id']}", headers=token)).json()
    assert seen["shipping_address"] == cart["shipping_address"]
    assert seen["billing_address"] == cart["billing_address"]

    # Checkout without addresses uses the cart's; the order keeps them.
    placed = await checkout(client, cart["id"], token, shipping_address=None)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["shipping_address"] == cart["shipping_address"]
    assert order["billing_address"] == cart["billing_address"]
    assert order["country"] == "DE" and order["tax_rate_bp"] == 1900
    again = await client.get(f"{API}/orders/{order['id']}", headers=token)
    assert again.json()["shipping_address"] == cart["shipping_address"]
    for secret in SECRETS:
        assert secret not in await dump(orders), secret


async def test_the_carts_country_and_totals_follow_its_shipping_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-MUG": 10})
    cart_id, token = await guest_cart(client, {"CA-MUG": 1}, country="ES")
    url = f"{API}/carts/{cart_id}"
    before = (await client.get(url, headers=token)).json()
    assert before["totals"]["tax_rate_bp"] == 2100
    assert before["shipping_address"] is None and before["billing_address"] is None

    paris = await client.patch(url, json={"shipping_address": PARIS}, headers=token)
    assert paris.status_code == 200, paris.text
    cart = paris.json()
    assert cart["country"] == "FR" and cart["totals"]["tax_rate_bp"] == 2000
    # 20.00 with 20 % inside: 3.33 of tax, where Spain's 21 % was 3.47.
    assert cart["totals"]["tax_total"] == 333 and before["totals"]["tax_total"] == 347
    assert cart["billing_address"] == cart["shipping_address"]

    # The same rules and messages as checkout: a country the shop does not sell to, and a
    # country that disagrees with the address in the same request, are faults of the address.
    tokyo = {**PARIS, "city": "Tokyo", "country": "JP"}
    refused = await client.patch(url, json={"shipping_address": tokyo}, headers=token)
    assert fields(refused) == ["shipping_address.country"]
    assert refused.json()["errors"][0]["code"] == "not_served"
    both = await client.patch(
        url, json={"shipping_address": MADRID, "country": "DE"}, headers=token
    )
    assert fields(both) == ["shipping_address.country"]
    assert "taxes follow where the order is delivered" in both.json()["errors"][0]["message"]
    # While the address stays, the country is its own: another one alone is refused.
    elsewhere = await client.patch(url, json={"country": "DE"}, headers=token)
    assert fields(elsewhere) == ["country"]
    assert "shipping address is in FR" in elsewhere.json()["errors"][0]["message"]
    kept = (await client.get(url, headers=token)).json()
    assert kept["country"] == "FR" and kept["shipping_address"]["city"] == "Paris"

    # The billing address on its own; null clears an address and the cart keeps its country.
    billed = await client.patch(url, json={"billing_address": MADRID}, headers=token)
    assert billed.json()["billing_address"]["city"] == "Madrid"
    assert billed.json()["shipping_address"]["city"] == "Paris"
    cleared = await client.patch(url, json={"shipping_address": None}, headers=token)
    assert cleared.json()["shipping_address"] is None and cleared.json()["country"] == "FR"
    assert cleared.json()["billing_address"]["city"] == "Madrid"
    moved = await client.patch(url, json={"country": "DE"}, headers=token)
    assert moved.status_code == 200 and moved.json()["totals"]["tax_rate_bp"] == 1900

    # Creating a cart follows the same rules.
    created = await client.post(f"{API}/carts", json={"country": "FR", "shipping_address": MADRID})
    assert fields(created) == ["shipping_address.country"]
    created = await client.post(f"{API}/carts", json={"shipping_address": tokyo})
    assert fields(created) == ["shipping_address.country"]
    assert created.json()["errors"][0]["code"] == "not_served"


async def test_a_customers_existing_cart_takes_the_addresses_posted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-CAP": 10})
    buyer = await customer(client, "addressbook")
    first = await client.post(
        f"{API}/carts", json={"shipping_address": PARIS}, headers=bearer(buyer)
    )
    assert first.status_code == 201 and first.json()["country"] == "FR"
    cart_id = first.json()["id"]

    # POST /carts without a basket on the customer's active cart sets what it gives, as PATCH
    # does (with ``items`` it would be a new cart).
    again = await client.post(
        f"{API}/carts", json={"billing_address": MADRID}, headers=bearer(buyer)
    )
    assert again.status_code == 200 and again.json()["id"] == cart_id
    added = await client.post(
        f"{API}/carts/{cart_id}/items",
        json={"sku": "CA-CAP", "quantity": 1},
        headers=bearer(buyer),
    )
    assert added.status_code == 200, added.text
    assert again.json()["shipping_address"]["city"] == "Paris"
    assert again.json()["billing_address"]["city"] == "Madrid"
    elsewhere = await client.post(f"{API}/carts", json={"country": "DE"}, headers=bearer(buyer))
    assert fields(elsewhere) == ["country"]
    berlin = await client.post(
        f"{API}/carts", json={"shipping_address": BERLIN}, headers=bearer(buyer)
    )
    assert berlin.status_code == 200 and berlin.json()["country"] == "DE"
    assert berlin.json()["totals"]["tax_rate_bp"] == 1900
    assert berlin.json()["lines"][0]["sku"] == "CA-CAP"


async def test_checkout_addresses_replace_the_carts_and_must_agree_with_its_country(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-BAG": 10})
    cart_id, token = await guest_cart(client, {"CA-BAG": 1}, email="zoe@example.com")
    url = f"{API}/carts/{cart_id}"
    await client.patch(
        url, json={"shipping_address": MADRID, "billing_address": OFFICE}, headers=token
    )

    # A country other than the cart's address's, without an address of its own, is refused.
    conflicting = await checkout(client, cart_id, token, country="FR", shipping_address=None)
    assert fields(conflicting) == ["country"]
    assert "shipping address is in ES" in conflicting.json()["detail"]
    # The request's address replaces the cart's; the billing address it leaves out is the cart's.
    placed = await checkout(client, cart_id, token, shipping_address=PARIS)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["shipping_address"]["city"] == "Paris"
    assert order["billing_address"]["company"] == "Stille Post GmbH"
    assert order["country"] == "FR" and order["tax_rate_bp"] == 2000


async def test_merging_keeps_the_customers_addresses_or_takes_the_anonymous_ones(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-PEN": 20})

    async def anonymous_with(**addresses: Any) -> tuple[str, dict[str, str]]:
        return await guest_cart(client, {"CA-PEN": 1}, **addresses)

    async def merge(buyer: dict[str, Any], cart_id: str, token: dict[str, str]) -> Any:
        merged = await client.post(
            f"{API}/carts/{cart_id}/merge", headers={**bearer(buyer), **token}
        )
        assert merged.status_code == 200, merged.text
        return merged.json()

    # A customer's cart without addresses takes the anonymous cart's, and its country.
    taker = await customer(client, "taker")
    own = await client.post(f"{API}/carts", json={"country": "FR"}, headers=bearer(taker))
    cart_id, token = await anonymous_with(shipping_address=BERLIN, billing_address=OFFICE)
    merged = await merge(taker, cart_id, token)
    assert merged["id"] == own.json()["id"]
    assert merged["shipping_address"]["city"] == "Berlin"
    assert merged["billing_address"]["city"] == "Potsdam"
    assert merged["country"] == "DE" and merged["totals"]["tax_rate_bp"] == 1900

    # A customer's cart with an address keeps its own: the addresses go as a pair.
    keeper = await customer(client, "keeper")
    await client.post(f"{API}/carts", json={"billing_address": MADRID}, headers=bearer(keeper))
    cart_id, token = await anonymous_with(shipping_address=BERLIN)
    merged = await merge(keeper, cart_id, token)
    assert merged["shipping_address"] is None
    assert merged["billing_address"]["city"] == "Madrid"
    assert merged["country"] == "DE"  # the anonymous cart's country filled the missing one

    # Without a cart of its own, the customer adopts the anonymous cart, addresses and all.
    adopter = await customer(client, "adopter")
    cart_id, token = await anonymous_with(shipping_address=PARIS)
    merged = await merge(adopter, cart_id, token)
    assert merged["id"] == cart_id and merged["shipping_address"]["city"] == "Paris"


class _CheckedOutMeanwhile:
    """Catalog's client that, while a checkout's reservation is made, lets another checkout of
    the same cart complete: the first then loses the cart at its last write."""

    def __init__(self, inner: Any, rival: Any) -> None:
        self._inner = inner
        self._rival = rival
        self.winner: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def reserve(self, order_id: str, lines: Any, ttl_seconds: int, **kw: Any) -> None:
        await self._inner.reserve(order_id, lines, ttl_seconds, **kw)
        if self.winner is None:
            self.winner = "placing"
            self.winner = await self._rival()


async def test_a_checkout_losing_the_cart_at_the_last_write_names_the_winning_order(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-RACE": 5})
    cart_id, token = await guest_cart(
        client, {"CA-RACE": 2}, email="race@example.com", shipping_address=MADRID
    )
    orders = ctx_of(app, "orders")
    runtime = app.state.runtime
    catalog = runtime.client("catalog")

    async def rival() -> Any:
        return await service.place_order(
            orders,
            principal=None,
            token=token[CART_TOKEN],
            data=CheckoutRequest(cart_id=cart_id, shipping_method="standard"),
        )

    racing = _CheckedOutMeanwhile(catalog, rival)
    runtime.use_client("catalog", racing)
    try:
        lost = await checkout(client, cart_id, token, shipping_address=None)
    finally:
        runtime.use_client("catalog", catalog)

    assert lost.status_code == 409, lost.text
    problem = lost.json()
    assert problem["type"].endswith("cart-already-ordered")
    assert problem["title"] == "Cart already ordered"
    assert problem["order_id"] == racing.winner.id
    # The loser's reservation is released: only the winner's two units are held.
    assert await available(client, admin, "CA-RACE") == 3


async def test_a_parcel_needs_an_address_and_digital_goods_need_none(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"CA-BOX": 5})
    cart_id, token = await guest_cart(client, {"CA-BOX": 1}, email="box@example.com")
    url = f"{API}/carts/{cart_id}"
    chosen = await client.patch(url, json={"shipping_method": "express"}, headers=token)
    assert chosen.json()["problems"] == [ADDRESS_NEEDED]
    refused = await checkout(client, cart_id, token, shipping_method=None, shipping_address=None)
    assert fields(refused) == ["shipping_address"]
    assert refused.json()["errors"][0] == {
        "field": "shipping_address",
        "message": ADDRESS_NEEDED,
        "code": "missing",
    }

    # No shipping method serves the cart (the shop sells downloads): no address is needed.
    for method in ("standard", "express"):
        await client.patch(
            f"{API}/shipping-methods/{method}", json={"active": False}, headers=bearer(admin)
        )
    await client.patch(url, json={"shipping_method": None}, headers=token)
    assert (await client.get(url, headers=token)).json()["problems"] == []
    placed = await checkout(client, cart_id, token, shipping_method=None)
    assert placed.status_code == 201, placed.text
    assert placed.json()["shipping_address"] is None and placed.json()["shipping_total"] == 0
