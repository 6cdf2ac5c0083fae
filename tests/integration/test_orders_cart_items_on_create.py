"""Creating a cart with its lines (``items`` on POST /carts), on both shapes: each line checked as
adding it to a cart checks it, the whole request refused with the field at fault, and the basket
replacing a customer's active cart, so the cart has exactly the lines sent."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    CART_TOKEN,
    app,
    checkout,
    customer,
    guest_cart,
    outbox_payloads,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


def _lines(cart: dict[str, object]) -> list[tuple[object, ...]]:
    return [
        (line["sku"], line["quantity"], line["unit_price"], line["total"])
        for line in cart["lines"]  # type: ignore[attr-defined]
    ]


async def test_a_cart_created_with_items_is_the_cart_built_one_item_at_a_time(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-31": 10, "MUG-31": 10})
    created = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "country": "ES",
            "items": [
                {"sku": "TEE-31", "quantity": 2},
                {"sku": "MUG-31", "quantity": 1},
                {"sku": "TEE-31", "quantity": 1},
            ],
        },
    )
    assert created.status_code == 201, created.text
    cart = created.json()
    token = {CART_TOKEN: created.headers[CART_TOKEN]}
    assert [(x["sku"], x["quantity"]) for x in cart["lines"]] == [("MUG-31", 1), ("TEE-31", 3)]

    # The answer is what a read of the cart gives, and what adding the items one by one gives.
    read = (await client.get(f"{API}/carts/{cart['id']}", headers=token)).json()
    assert _lines(read) == _lines(cart) and read["totals"] == cart["totals"]
    assert read["problems"] == cart["problems"]
    one_by_one_id, one_by_one_token = await guest_cart(
        client, {"MUG-31": 1, "TEE-31": 3}, country="ES"
    )
    one_by_one = (await client.get(f"{API}/carts/{one_by_one_id}", headers=one_by_one_token)).json()
    assert _lines(one_by_one) == _lines(cart) and one_by_one["totals"] == cart["totals"]

    placed = await checkout(client, cart["id"], token, email="guest@example.com")
    assert placed.status_code == 201, placed.text
    assert [(x["sku"], x["quantity"]) for x in placed.json()["lines"]] == [
        ("MUG-31", 1),
        ("TEE-31", 3),
    ]


async def test_one_bad_line_refuses_the_whole_cart_naming_the_line_at_fault(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-32": 10, "OLD-32": 10})
    buyer = await customer(client, "items")

    async def create(items: list[object]) -> httpx.Response:
        return await client.post(
            f"{API}/carts", json={"currency": "EUR", "items": items}, headers=bearer(buyer)
        )

    unknown = await create([{"sku": "TEE-32", "quantity": 1}, {"sku": "NOPE-32", "quantity": 1}])
    assert unknown.status_code == 422, unknown.text
    assert unknown.headers["content-type"].startswith("application/problem+json")
    [error] = unknown.json()["errors"]
    assert (error["field"], error["code"]) == ("items.1.sku", "unknown_sku")

    zero = await create([{"sku": "TEE-32", "quantity": 0}])
    assert zero.status_code == 422 and zero.json()["errors"][0]["field"] == "items.0.quantity"
    text = await create([{"sku": "TEE-32", "quantity": "2"}])
    assert text.status_code == 422 and text.json()["errors"][0]["field"] == "items.0.quantity"
    extra = await create([{"sku": "TEE-32", "quantity": 1, "unit_price": 1}])
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "items.0.unit_price"
    too_many = await create(
        [{"sku": "TEE-32", "quantity": 6000}, {"sku": "TEE-32", "quantity": 5000}]
    )
    assert too_many.status_code == 422, too_many.text
    assert too_many.json()["errors"][0]["field"] == "items.1.quantity"
    # ``items`` may be left out, not given as null.
    null = await client.post(
        f"{API}/carts", json={"currency": "EUR", "items": None}, headers=bearer(buyer)
    )
    assert null.status_code == 422, null.text
    assert [e["field"] for e in null.json()["errors"]] == ["items"]

    # An archived SKU is refused with catalog's reason, as adding it to a cart is.
    cart_id, token = await guest_cart(client, {"OLD-32": 1})
    product_id = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()["lines"][0][
        "product_id"
    ]
    assert (
        await client.delete(f"{API}/products/{product_id}", headers=bearer(admin))
    ).status_code == 204
    archived = await create([{"sku": "TEE-32", "quantity": 1}, {"sku": "OLD-32", "quantity": 1}])
    assert archived.status_code == 422
    [error] = archived.json()["errors"]
    assert error["field"] == "items.1.sku" and "archived" in error["message"]

    # Nothing was written by the refused requests: the customer's first cart is new and empty.
    first = await create([])
    assert first.status_code == 201, first.text
    assert first.json()["lines"] == []
    assert len(await outbox_payloads(app, "CartCreated")) == 1
    left_out = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
    assert left_out.status_code == 200 and left_out.json()["id"] == first.json()["id"]


async def test_a_basket_sent_with_items_replaces_the_customers_active_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-33": 10, "MUG-33": 10})
    buyer = await customer(client, "again")

    async def create(items: list[object]) -> httpx.Response:
        return await client.post(
            f"{API}/carts", json={"currency": "EUR", "items": items}, headers=bearer(buyer)
        )

    first = await create([{"sku": "TEE-33", "quantity": 1}])
    assert first.status_code == 201, first.text
    old = first.json()["id"]
    voucher = await client.post(
        f"{API}/carts/{old}/vouchers", json={"code": "WELCOME10"}, headers=bearer(buyer)
    )
    assert voucher.status_code == 200, voucher.text
    second = await create([{"sku": "TEE-33", "quantity": 2}, {"sku": "MUG-33", "quantity": 1}])
    assert second.status_code == 201, second.text
    new = second.json()
    # Exactly the basket sent: nothing left over from the cart before, not even its voucher.
    assert new["id"] != old and new["voucher_code"] is None
    assert sorted((x["sku"], x["quantity"]) for x in new["lines"]) == [
        ("MUG-33", 1),
        ("TEE-33", 2),
    ]
    # The cart replaced can neither change nor be ordered any more; it is still readable.
    replaced = await client.get(f"{API}/carts/{old}", headers=bearer(buyer))
    assert replaced.json()["status"] == "replaced"
    changed = await client.post(
        f"{API}/carts/{old}/items", json={"sku": "MUG-33", "quantity": 1}, headers=bearer(buyer)
    )
    assert changed.status_code == 409 and changed.json()["type"].endswith("/cart-not-active")
    ordered = await checkout(client, old, bearer(buyer))
    assert ordered.status_code == 409, ordered.text
    # A cart asked for without a basket is the one the basket made.
    left_out = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
    assert left_out.status_code == 200 and left_out.json()["id"] == new["id"]
    # A refused basket replaces nothing: the cart made last stays, unchanged.
    over = await create([{"sku": "MUG-33", "quantity": 10_001}])
    assert over.status_code == 422 and over.json()["errors"][0]["field"] == "items.0.quantity"
    read = await client.get(f"{API}/carts/{new['id']}", headers=bearer(buyer))
    assert read.json()["status"] == "active"
    assert sorted((x["sku"], x["quantity"]) for x in read.json()["lines"]) == [
        ("MUG-33", 1),
        ("TEE-33", 2),
    ]
    events = await outbox_payloads(app, "CartCreated")
    assert [e["cart_id"] for e in events] == [old, new["id"]]
    placed = await checkout(client, new["id"], bearer(buyer))
    assert placed.status_code == 201, placed.text
    assert sorted((x["sku"], x["quantity"]) for x in placed.json()["lines"]) == [
        ("MUG-33", 1),
        ("TEE-33", 2),
    ]


async def test_a_basket_takes_the_country_email_and_shipping_method_given_with_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-34": 10})
    buyer = await customer(client, "moves")
    first = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "email": "me@example.com",
            "items": [{"sku": "TEE-34", "quantity": 1}],
        },
        headers=bearer(buyer),
    )
    assert first.status_code == 201, first.text
    cart_id = first.json()["id"]

    again = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "country": "fr",
            "email": "other@example.com",
            "items": [{"sku": "TEE-34", "quantity": 1}],
        },
        headers=bearer(buyer),
    )
    assert again.status_code == 201, again.text
    cart = again.json()
    assert cart["id"] != cart_id
    cart_id = cart["id"]
    assert (cart["country"], cart["email"]) == ("FR", "other@example.com")
    assert [(x["sku"], x["quantity"]) for x in cart["lines"]] == [("TEE-34", 1)]
    # Priced as a cart shipping to France, as PATCH /carts/{id} would leave it.
    guest_id, guest_token = await guest_cart(client, {"TEE-34": 1}, country="FR")
    french = (await client.get(f"{API}/carts/{guest_id}", headers=guest_token)).json()
    assert cart["totals"] == french["totals"]
    read = (await client.get(f"{API}/carts/{cart_id}", headers=bearer(buyer))).json()
    assert (read["country"], read["email"], read["totals"]) == (
        "FR",
        "other@example.com",
        french["totals"],
    )

    # A field left out is left as it is; one given as null is cleared, as PATCH does.
    kept = await client.post(
        f"{API}/carts", json={"currency": "EUR", "email": None}, headers=bearer(buyer)
    )
    assert kept.status_code == 200, kept.text
    assert (kept.json()["country"], kept.json()["email"]) == ("FR", None)

    # The same validation as PATCH: a country the shop does not sell to refuses the whole
    # request, and neither the lines nor the fields change.
    refused = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "country": "AQ",
            "email": "third@example.com",
            "items": [{"sku": "TEE-34", "quantity": 1}],
        },
        headers=bearer(buyer),
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "country"
    read = (await client.get(f"{API}/carts/{cart_id}", headers=bearer(buyer))).json()
    assert (read["country"], read["email"], read["status"]) == ("FR", None, "active")
    assert [(x["sku"], x["quantity"]) for x in read["lines"]] == [("TEE-34", 1)]

    # The shipping method too, checked as PATCH /carts/{id} checks it.
    unknown = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "shipping_method": "teleport", "items": []},
        headers=bearer(buyer),
    )
    assert unknown.status_code == 422, unknown.text
    assert [(e["field"], e["code"]) for e in unknown.json()["errors"]] == [
        ("shipping_method", "unknown")
    ]
    chosen = await client.post(
        f"{API}/carts",
        json={
            "currency": "EUR",
            "country": "ES",
            "shipping_method": "express",
            "items": [{"sku": "TEE-34", "quantity": 1}],
        },
        headers=bearer(buyer),
    )
    assert chosen.status_code == 201, chosen.text
    assert chosen.json()["shipping_method"] == "express"
    assert chosen.json()["totals"]["shipping_total"] == 995
    guest = await client.post(
        f"{API}/carts", json={"currency": "EUR", "shipping_method": "standard"}
    )
    assert guest.status_code == 201 and guest.json()["shipping_method"] == "standard"
