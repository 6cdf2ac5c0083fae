"""Each of orders' refusals has a title of its own (docs/orders.md, Problems), on both shapes."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    checkout,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_orders_refusals_carry_their_own_titles(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TITLE-1": 5})
    cart_id, token = await guest_cart(client, {"TITLE-1": 1})
    assert (await checkout(client, cart_id, token, email="t@example.com")).status_code == 201

    changed = await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": "TITLE-1", "quantity": 1}, headers=token
    )
    merged = await client.post(f"{API}/carts/{cart_id}/merge", headers={**bearer(admin), **token})
    voucher = {"code": "TWICE", "kind": "percentage", "value": 500}
    method = {"code": "twice", "name": "Twice", "kind": "flat", "rates": {"EUR": [{"amount": 1}]}}
    for path, body in (("vouchers", voucher), ("shipping-methods", method)):
        first = await client.post(f"{API}/{path}", json=body, headers=bearer(admin))
        assert first.status_code == 201, first.text
    voucher_again = await client.post(f"{API}/vouchers", json=voucher, headers=bearer(admin))
    method_again = await client.post(f"{API}/shipping-methods", json=method, headers=bearer(admin))

    seen = {
        r.json()["type"].rsplit("/", 1)[1]: (r.status_code, r.json()["title"])
        for r in (changed, merged, voucher_again, method_again)
    }
    assert seen == {
        "cart-not-active": (409, "Cart no longer active"),
        "cart-merge-forbidden": (403, "Cart merge forbidden"),
        "voucher-exists": (409, "Voucher code exists"),
        "shipping-method-exists": (409, "Shipping method exists"),
    }
    # A code in use is named at its field, as catalog names a slug or SKU in use.
    for taken in (voucher_again, method_again):
        assert taken.json()["errors"] == [
            {"field": "code", "message": "code already in use", "code": "taken"}
        ]
