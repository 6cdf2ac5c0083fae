"""Carts on both shapes: anonymous carts and their token, lines priced by catalog's quotes,
country tax and shipping, vouchers, and merging an anonymous cart at sign-in."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    CART_TOKEN,
    DELIVERY,
    app,
    checkout,
    customer,
    guest_cart,
    outbox_payloads,
    place_guest_order,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_anonymous_cart_lifecycle_prices_lines_from_catalog(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-1": 10, "MUG-1": 10})
    created = await client.post(f"{API}/carts", json={"currency": "EUR", "country": "ES"})
    assert created.status_code == 201
    cart = created.json()
    token = {CART_TOKEN: created.headers[CART_TOKEN]}
    assert cart["token"] == created.headers[CART_TOKEN] and cart["lines"] == []
    url = f"{API}/carts/{cart['id']}"

    r = await client.get(url)
    assert r.status_code == 404, r.text
    assert (await client.get(url, headers={CART_TOKEN: "not-the-token"})).status_code == 404

    added = await client.post(f"{url}/items", json={"sku": "TEE-1", "quantity": 2}, headers=token)
    assert added.status_code == 200, added.text
    again = await client.post(f"{url}/items", json={"sku": "TEE-1", "quantity": 1}, headers=token)
    line = again.json()["lines"][0]
    assert (line["sku"], line["quantity"], line["unit_price"], line["available"]) == (
        "TEE-1",
        3,
        2000,
        10,
    )
    unknown = await client.post(
        f"{url}/items", json={"sku": "NOPE-9", "quantity": 1}, headers=token
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "sku"

    await client.post(f"{url}/items", json={"sku": "MUG-1", "quantity": 1}, headers=token)
    shipped = await client.patch(url, json={"shipping_method": "standard"}, headers=token)
    totals = shipped.json()["totals"]
    # Catalog's prices include tax by default: 4 x 20.00 with 21 % inside, plus 4.95 shipping.
    assert totals["subtotal"] == 8000 and totals["shipping_total"] == 495
    assert totals["total"] == 8495 and totals["tax_total"] == 1388 + 86
    # A guest's order needs an email, and a parcel an address: the cart says so before
    # checkout does.
    assert shipped.json()["problems"] == [
        "A shipping address is needed: the parcel is delivered to it.",
        "An email address is needed for the order.",
    ]
    with_email = await client.patch(url, json={"email": "g@example.com"}, headers=token)
    assert with_email.json()["problems"] == [
        "A shipping address is needed: the parcel is delivered to it."
    ]
    madrid = {**DELIVERY, "country": "ES"}
    addressed = await client.patch(url, json={"shipping_address": madrid}, headers=token)
    assert addressed.json()["problems"] == []

    berlin = {**DELIVERY, "city": "Berlin", "country": "DE"}
    germany = await client.patch(url, json={"shipping_address": berlin}, headers=token)
    assert germany.json()["country"] == "DE"
    assert germany.json()["totals"]["tax_rate_bp"] == 1900
    nowhere = await client.patch(url, json={"country": "ZZ"}, headers=token)
    assert nowhere.status_code == 422 and nowhere.json()["errors"][0]["field"] == "country"

    fewer = await client.patch(f"{url}/items/TEE-1", json={"quantity": 1}, headers=token)
    assert [(x["sku"], x["quantity"]) for x in fewer.json()["lines"]] == [
        ("TEE-1", 1),
        ("MUG-1", 1),
    ]
    removed = await client.delete(f"{url}/items/MUG-1", headers=token)
    assert [x["sku"] for x in removed.json()["lines"]] == ["TEE-1"]
    assert (await client.delete(f"{url}/items/MUG-1", headers=token)).status_code == 404


async def test_vouchers_apply_with_their_rules_and_come_off(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-2": 10})
    cart_id, token = await guest_cart(client, {"TEE-2": 1})
    url = f"{API}/carts/{cart_id}"

    unknown = await client.post(f"{url}/vouchers", json={"code": "NOPE"}, headers=token)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "code"
    # SPRING5 needs a minimum spend of EUR 30.00; the cart holds EUR 20.00.
    short = await client.post(f"{url}/vouchers", json={"code": "spring5"}, headers=token)
    assert short.status_code == 422 and "minimum spend" in short.json()["detail"]

    applied = await client.post(f"{url}/vouchers", json={"code": " welcome10 "}, headers=token)
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["voucher_code"] == "WELCOME10"
    assert body["totals"]["discount_total"] == 200 and body["lines"][0]["discount"] == 200

    removed = await client.delete(f"{url}/vouchers/WELCOME10", headers=token)
    assert removed.json()["voucher_code"] is None
    assert removed.json()["totals"]["discount_total"] == 0


async def test_merge_at_sign_in_folds_the_anonymous_cart_into_the_customers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-3": 20, "MUG-3": 20})
    ana = await customer(client, "ana")
    own = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(ana))
    assert own.status_code == 201 and own.json()["token"] is None
    own_id = own.json()["id"]
    await client.post(
        f"{API}/carts/{own_id}/items", json={"sku": "TEE-3", "quantity": 1}, headers=bearer(ana)
    )
    same = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(ana))
    assert same.status_code == 200 and same.json()["id"] == own_id

    anon_id, token = await guest_cart(client, {"TEE-3": 2, "MUG-3": 1})
    assert (
        await client.post(f"{API}/carts/{anon_id}/merge", headers=bearer(ana))
    ).status_code == 404
    merged = await client.post(f"{API}/carts/{anon_id}/merge", headers={**bearer(ana), **token})
    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == own_id
    assert {(x["sku"], x["quantity"]) for x in merged.json()["lines"]} == {
        ("TEE-3", 3),
        ("MUG-3", 1),
    }

    # The anonymous cart is spent: its token no longer opens anything that can change.
    assert (await client.get(f"{API}/carts/{anon_id}", headers=token)).status_code == 404
    bob = await customer(client, "bob")
    assert (await client.get(f"{API}/carts/{own_id}", headers=bearer(bob))).status_code == 404


async def test_a_customer_without_a_cart_adopts_the_anonymous_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-4": 5})
    anon_id, token = await guest_cart(client, {"TEE-4": 2})
    cleo = await customer(client, "cleo")
    adopted = await client.post(f"{API}/carts/{anon_id}/merge", headers={**bearer(cleo), **token})
    assert adopted.status_code == 200
    assert adopted.json()["id"] == anon_id and adopted.json()["customer_id"] == cleo["id"]
    mine = await client.get(f"{API}/carts/{anon_id}", headers=bearer(cleo))
    assert mine.status_code == 200 and mine.json()["lines"][0]["quantity"] == 2


async def test_quantities_must_be_json_integers_not_strings_or_booleans(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-1": 10})
    created = await client.post(f"{API}/carts", json={"currency": "EUR", "country": "ES"})
    token = {CART_TOKEN: created.headers[CART_TOKEN]}
    url = f"{API}/carts/{created.json()['id']}"
    for quantity in ("2", True, 2.0):
        refused = await client.post(
            f"{url}/items", json={"sku": "TEE-1", "quantity": quantity}, headers=token
        )
        assert refused.status_code == 422, (quantity, refused.text)
        assert refused.json()["errors"][0]["field"] == "quantity"
    assert (await client.get(url, headers=token)).json()["lines"] == []

    added = await client.post(f"{url}/items", json={"sku": "TEE-1", "quantity": 2}, headers=token)
    assert added.status_code == 200, added.text
    for quantity in ("1", False):
        refused = await client.patch(
            f"{url}/items/TEE-1", json={"quantity": quantity}, headers=token
        )
        assert refused.status_code == 422, (quantity, refused.text)
    assert (await client.get(url, headers=token)).json()["lines"][0]["quantity"] == 2


async def test_a_signed_in_customers_new_cart_publishes_cart_created_without_email(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-5": 5})
    await guest_cart(client, {"TEE-5": 1})  # anonymous: no event
    dana = await customer(client, "dana")
    body = {"currency": "EUR", "country": "ES"}
    created = await client.post(f"{API}/carts", json=body, headers=bearer(dana))
    assert created.status_code == 201, created.text
    again = await client.post(f"{API}/carts", json=body, headers=bearer(dana))
    assert again.json()["id"] == created.json()["id"]  # the active cart, not a new one

    events = await outbox_payloads(app, "CartCreated")
    assert len(events) == 1
    assert set(events[0]) == {"cart_id", "customer_id", "created_at"}
    assert events[0]["cart_id"] == created.json()["id"]
    assert events[0]["customer_id"] == dana["id"]
    assert dana["email"] not in str(events[0])


async def test_tax_rates_and_shipping_countries_take_only_iso_3166_codes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    for code in ("XX", "ZZ", "UK"):
        refused = await client.put(
            f"{API}/tax-rates/{code}", json={"name": "VAT", "rate_bp": 2000}, headers=bearer(admin)
        )
        assert refused.status_code == 422, (code, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["errors"][0]["field"] == "country"
    accepted = await client.put(
        f"{API}/tax-rates/gb", json={"name": "VAT", "rate_bp": 2000}, headers=bearer(admin)
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["country"] == "GB"
    assert "XX" not in {r["country"] for r in (await client.get(f"{API}/tax-rates")).json()}

    method = {
        "code": "iso-check",
        "name": "ISO check",
        "kind": "flat",
        "rates": {"EUR": [{"amount": 100}]},
    }
    refused = await client.post(
        f"{API}/shipping-methods", json={**method, "countries": ["ES", "QQ"]}, headers=bearer(admin)
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"].endswith("countries")
    created = await client.post(
        f"{API}/shipping-methods", json={**method, "countries": ["es"]}, headers=bearer(admin)
    )
    assert created.status_code == 201, created.text

    cart = await client.post(f"{API}/carts", json={"currency": "EUR", "country": "XX"})
    assert cart.status_code == 422, cart.text
    assert cart.json()["errors"][0]["field"] == "country"


async def test_problems_list_every_line_short_of_stock_with_what_is_available(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-20": 6, "MUG-20": 50})
    cart_id, token = await guest_cart(
        client, {"TEE-20": 10_000, "MUG-20": 1}, country="ES", email="g@example.com"
    )
    cart = await client.patch(
        f"{API}/carts/{cart_id}",
        json={"shipping_method": "standard", "shipping_address": {**DELIVERY, "country": "ES"}},
        headers=token,
    )

    assert cart.json()["problems"] == ["TEE-20: 10000 wanted, 6 available."]
    short = await client.post(
        f"{API}/orders",
        json={"cart_id": cart_id, "email": "g@example.com"},
        headers=token,
    )
    assert short.status_code == 409 and short.json()["type"].endswith("insufficient-stock")

    fixed = await client.patch(
        f"{API}/carts/{cart_id}/items/TEE-20", json={"quantity": 6}, headers=token
    )
    assert fixed.json()["problems"] == []


async def test_a_voucher_that_stopped_applying_is_a_problem_and_a_422_at_checkout(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-21": 10})
    cart_id, token = await guest_cart(client, {"TEE-21": 1}, email="g@example.com")
    await client.patch(
        f"{API}/carts/{cart_id}",
        json={"shipping_method": "standard", "shipping_address": {**DELIVERY, "country": "ES"}},
        headers=token,
    )
    applied = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": "WELCOME10"}, headers=token
    )
    assert applied.status_code == 200 and applied.json()["problems"] == []
    switched_off = await client.patch(
        f"{API}/vouchers/WELCOME10", json={"active": False}, headers=bearer(admin)
    )
    assert switched_off.status_code == 200, switched_off.text

    cart = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()
    assert cart["problems"] == ["The voucher is no longer active."]
    refused = await checkout(client, cart_id, token)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["voucher_code"]


async def test_an_archived_sku_is_refused_with_catalogs_reason_and_listed_in_problems(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-22": 10, "OLD-22": 10})
    cart_id, token = await guest_cart(client, {"TEE-22": 1, "OLD-22": 1})
    cart = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()
    old = next(line for line in cart["lines"] if line["sku"] == "OLD-22")
    archived = await client.delete(f"{API}/products/{old['product_id']}", headers=bearer(admin))
    assert archived.status_code == 204

    again = await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": "OLD-22", "quantity": 1}, headers=token
    )
    assert again.status_code == 422
    [error] = again.json()["errors"]
    assert error["field"] == "sku" and "archived" in error["message"]
    assert "EUR" not in error["message"]
    problems = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()["problems"]
    assert any("OLD-22" in problem and "archived" in problem for problem in problems), problems


async def test_staff_and_api_keys_cannot_merge_a_guests_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-23": 5})
    anon_id, token = await guest_cart(client, {"TEE-23": 1})
    key = await client.post(
        f"{API}/api-keys",
        json={"name": "shop front", "scopes": ["orders:write_own", "orders:read_own"]},
        headers=bearer(admin),
    )
    assert key.status_code == 201, key.text

    for who in (bearer(admin), {"X-API-Key": key.json()["key"]}):
        taken = await client.post(f"{API}/carts/{anon_id}/merge", headers={**who, **token})
        assert taken.status_code == 403, taken.text
        assert taken.json()["type"].endswith("cart-merge-forbidden")
    # The guest's cart is untouched and still theirs.
    still = await client.get(f"{API}/carts/{anon_id}", headers=token)
    assert still.status_code == 200 and still.json()["customer_id"] is None


async def test_a_deleted_tax_rate_stops_sales_to_its_country(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-24": 5})
    cart_id, token = await guest_cart(client, {"TEE-24": 1}, country="PT")
    url = f"{API}/tax-rates/PT"

    assert (await client.delete(url)).status_code == 401
    dana = await customer(client, "dana")
    assert (await client.delete(url, headers=bearer(dana))).status_code == 403
    assert (await client.delete(url, headers=bearer(admin))).status_code == 204
    assert (await client.delete(url, headers=bearer(admin))).status_code == 404
    invalid = await client.delete(f"{API}/tax-rates/X1", headers=bearer(admin))
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "country"
    rates = (await client.get(f"{API}/tax-rates")).json()
    assert "PT" not in {rate["country"] for rate in rates}

    cart = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()
    assert "The shop does not sell to PT." in cart["problems"]
    refused = await checkout(client, cart_id, token, email="g@example.com", country="PT")
    assert refused.status_code == 422
    assert "country" in {e["field"] for e in refused.json()["errors"]}
    # Given by the parcel's address, the country is named there.
    lisbon = {**DELIVERY, "city": "Lisboa", "country": "PT"}
    refused = await checkout(client, cart_id, token, email="g@example.com", shipping_address=lisbon)
    assert refused.status_code == 422
    assert "shipping_address.country" in {e["field"] for e in refused.json()["errors"]}
    moved = await client.patch(f"{API}/carts/{cart_id}", json={"country": "PT"}, headers=token)
    assert moved.status_code == 422 and moved.json()["errors"][0]["code"] == "not_served"

    put_back = await client.put(url, json={"name": "IVA", "rate_bp": 2300}, headers=bearer(admin))
    assert put_back.status_code == 200
    placed = await checkout(client, cart_id, token, email="g@example.com")
    assert placed.status_code == 201, placed.text


async def test_currency_codes_are_read_in_any_case_and_unknown_ones_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-25": 10})
    guest = await client.post(
        f"{API}/carts", json={"currency": "eur", "items": [{"sku": "TEE-25", "quantity": 1}]}
    )
    assert guest.status_code == 201, guest.text
    assert guest.json()["currency"] == guest.json()["totals"]["currency"] == "EUR"
    assert guest.json()["lines"][0]["unit_price"] == 2000

    buyer = await customer(client, "lower")
    first = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
    again = await client.post(f"{API}/carts", json={"currency": "eur"}, headers=bearer(buyer))
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == first.json()["id"]

    for body in ({"currency": "xyz"}, {"currency": "XYZ"}):
        refused = await client.post(f"{API}/carts", json=body)
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert error["field"].endswith("currency")
        assert "not an ISO 4217 currency code" in error["message"]

    method = await client.post(
        f"{API}/shipping-methods",
        json={"code": "lower", "name": "Lower", "kind": "flat", "rates": {"eur": [{"amount": 1}]}},
        headers=bearer(admin),
    )
    assert method.status_code == 201, method.text
    assert list(method.json()["rates"]) == ["EUR"]
    voucher = await client.post(
        f"{API}/vouchers",
        json={"code": "LOWER5", "kind": "fixed", "value": 500, "currency": "eur"},
        headers=bearer(admin),
    )
    assert voucher.status_code == 201, voucher.text
    assert voucher.json()["currency"] == "EUR"


async def test_a_key_holding_only_orders_read_all_lists_every_order(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # An integration's key (an ERP's export) is given orders:read_all and nothing else.
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-25": 5})
    placed = await place_guest_order(client, {"TEE-25": 1})
    made = await client.post(
        f"{API}/api-keys",
        json={"name": "erp", "scopes": ["orders:read_all"]},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    erp = {"X-API-Key": made.json()["key"]}

    listed = await client.get(f"{API}/orders", headers=erp)
    assert listed.status_code == 200, listed.text
    assert placed["id"] in {order["id"] for order in listed.json()["items"]}
    assert (await client.get(f"{API}/orders/{placed['id']}", headers=erp)).status_code == 200

    # A key with neither is told both ways in.
    made = await client.post(
        f"{API}/api-keys", json={"name": "audit", "scopes": ["audit:read"]}, headers=bearer(admin)
    )
    refused = await client.get(f"{API}/orders", headers={"X-API-Key": made.json()["key"]})
    assert refused.status_code == 403
    assert "'orders:read_own' or 'orders:read_all'" in refused.json()["detail"]
