"""A cart line whose SKU stopped being for sale (archived, back to draft, no price in the
cart's currency) cannot grow: raising its quantity is checked as adding units is. Lowering it
or removing it stays allowed, so the customer can always clean the line up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import app, guest_cart, seed_shop, settings, staff_tokens

__all__ = ["app", "settings"]


async def _product(client: httpx.AsyncClient, admin: dict[str, Any], product_id: str) -> Any:
    found = await client.get(f"{API}/products/{product_id}", headers=bearer(admin))
    assert found.status_code == 200, found.text
    return found.json()


async def _stop_selling(
    client: httpx.AsyncClient, admin: dict[str, Any], product_id: str, how: str
) -> None:
    url = f"{API}/products/{product_id}"
    if how == "archived":
        done = await client.delete(url, headers=bearer(admin))
    elif how == "draft":
        done = await client.patch(url, json={"status": "draft"}, headers=bearer(admin))
    else:  # only a USD price left: none in the cart's EUR
        variant = (await _product(client, admin, product_id))["variants"][0]
        done = await client.patch(
            f"{url}/variants/{variant['id']}",
            json={"prices": [{"currency": "USD", "amount": 2500}]},
            headers=bearer(admin),
        )
    assert done.status_code in (200, 204), done.text


@pytest.mark.parametrize("how", ["archived", "draft", "not_priced"])
async def test_a_line_no_longer_for_sale_cannot_grow_but_can_shrink_and_go(
    app: FastAPI, client: httpx.AsyncClient, how: str
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"KEEP-31": 10, "GONE-31": 10})
    cart_id, token = await guest_cart(client, {"KEEP-31": 1, "GONE-31": 2})
    url = f"{API}/carts/{cart_id}"
    cart = (await client.get(url, headers=token)).json()
    gone = next(line for line in cart["lines"] if line["sku"] == "GONE-31")
    await _stop_selling(client, admin, gone["product_id"], how)

    added = await client.post(f"{url}/items", json={"sku": "GONE-31", "quantity": 1}, headers=token)
    assert added.status_code == 422, added.text
    raised = await client.patch(f"{url}/items/GONE-31", json={"quantity": 5}, headers=token)
    assert raised.status_code == 422, raised.text
    assert raised.headers["content-type"].startswith("application/problem+json")
    # The same answer as adding the SKU: the field, the words and the code.
    assert raised.json()["errors"] == added.json()["errors"]
    [error] = raised.json()["errors"]
    # A guest is not told a SKU's product went back to draft: catalog hides drafts from them.
    assert error["field"] == "sku"
    assert error["code"] == ("unknown_sku" if how == "draft" else "not_purchasable")
    assert "GONE-31" in error["message"]
    lines = {
        x["sku"]: x["quantity"] for x in (await client.get(url, headers=token)).json()["lines"]
    }
    assert lines == {"KEEP-31": 1, "GONE-31": 2}

    # Setting the quantity it has, or less, is not growing it.
    same = await client.patch(f"{url}/items/GONE-31", json={"quantity": 2}, headers=token)
    assert same.status_code == 200, same.text
    [problem] = [p for p in same.json()["problems"] if "GONE-31" in p]
    if how == "draft":  # the cart's buyer is not told the product went back to draft
        assert problem == "GONE-31 is not for sale."
    lowered = await client.patch(f"{url}/items/GONE-31", json={"quantity": 1}, headers=token)
    assert lowered.status_code == 200, lowered.text
    assert {x["sku"]: x["quantity"] for x in lowered.json()["lines"]}["GONE-31"] == 1
    removed = await client.patch(f"{url}/items/GONE-31", json={"quantity": 0}, headers=token)
    assert removed.status_code == 200, removed.text
    assert [x["sku"] for x in removed.json()["lines"]] == ["KEEP-31"]


async def test_removing_an_unsellable_line_with_delete_is_allowed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"GONE-32": 10})
    cart_id, token = await guest_cart(client, {"GONE-32": 3})
    url = f"{API}/carts/{cart_id}"
    line = (await client.get(url, headers=token)).json()["lines"][0]
    await _stop_selling(client, admin, line["product_id"], "archived")
    removed = await client.delete(f"{url}/items/GONE-32", headers=token)
    assert removed.status_code == 200, removed.text
    assert removed.json()["lines"] == []


async def test_a_line_still_for_sale_grows_and_a_missing_line_is_not_found(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-33": 10})
    cart_id, token = await guest_cart(client, {"TEE-33": 1})
    url = f"{API}/carts/{cart_id}"
    raised = await client.patch(f"{url}/items/TEE-33", json={"quantity": 4}, headers=token)
    assert raised.status_code == 200, raised.text
    assert raised.json()["lines"][0]["quantity"] == 4
    missing = await client.patch(f"{url}/items/NOPE-33", json={"quantity": 4}, headers=token)
    assert missing.status_code == 404, missing.text
    stranger = await client.patch(f"{url}/items/TEE-33", json={"quantity": 5})
    assert stranger.status_code == 404, stranger.text
