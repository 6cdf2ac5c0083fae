"""POST /carts needs no body: every field has a default. A body that is there must still be
JSON."""

from __future__ import annotations

import httpx

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import CART_TOKEN, app, customer, settings

__all__ = ["app", "settings"]


async def test_a_cart_is_created_without_a_body(client: httpx.AsyncClient) -> None:
    anonymous = await client.post(f"{API}/carts")
    assert anonymous.status_code == 201, anonymous.text
    assert anonymous.json()["currency"] == "EUR" and anonymous.json()["lines"] == []
    assert anonymous.headers[CART_TOKEN] == anonymous.json()["token"]
    empty = await client.post(f"{API}/carts", json={})
    assert empty.status_code == 201, empty.text

    buyer = await customer(client, "nobody")
    first = await client.post(f"{API}/carts", headers=bearer(buyer))
    again = await client.post(f"{API}/carts", headers=bearer(buyer))
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == first.json()["id"]


async def test_a_cart_body_that_is_not_json_is_still_refused(client: httpx.AsyncClient) -> None:
    malformed = await client.post(
        f"{API}/carts", content=b'{"currency": ', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["type"].endswith("malformed-json")
    typed = await client.post(
        f"{API}/carts", content=b"currency=EUR", headers={"Content-Type": "text/plain"}
    )
    assert typed.status_code == 415, typed.text
    wrong = await client.post(f"{API}/carts", json={"currency": "XYZ"})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "currency"
    listed = await client.post(f"{API}/carts", json=[])
    assert listed.status_code == 422, listed.text


async def test_a_json_null_cart_body_is_refused_at_body(client: httpx.AsyncClient) -> None:
    for body in (b"null", b" null\n"):
        refused = await client.post(
            f"{API}/carts", content=body, headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        [error] = refused.json()["errors"]
        assert (error["field"], error["in"]) == ("body", "body")
        assert error["message"].startswith("Input should be a valid dictionary")
    # As a body that is no object, and as JSON null anywhere else.
    listed = await client.post(f"{API}/carts", json=[])
    orders = await client.post(
        f"{API}/orders", content=b"null", headers={"Content-Type": "application/json"}
    )
    assert refused.json()["errors"] == listed.json()["errors"] == orders.json()["errors"]
