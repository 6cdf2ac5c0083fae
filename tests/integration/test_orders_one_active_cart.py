"""A customer has one active cart per currency, also when their requests race (a storefront
open in two tabs, a double-submitted basket, a sign-in merging a guest cart meanwhile): on both
shapes, every request answers with a cart and exactly one stays active."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.orders.models import carts
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    customer,
    guest_cart,
    orders_ctx,
    outbox_payloads,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _active_carts(app: FastAPI, customer_id: str) -> list[str]:
    async with orders_ctx(app).db.read() as session:
        rows = await session.scalars(
            select(carts.c.id).where(carts.c.customer_id == customer_id, carts.c.status == "active")
        )
        return list(rows)


def _lines(cart: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((line["sku"], line["quantity"]) for line in cart["lines"])


async def test_simultaneous_baskets_leave_the_customer_exactly_one_active_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-91": 100})
    buyer = await customer(client, "tabs")
    baskets = [[{"sku": "TEE-91", "quantity": n}] for n in range(1, 21)]

    results = await asyncio.gather(
        *(
            client.post(
                f"{API}/carts", json={"currency": "EUR", "items": basket}, headers=bearer(buyer)
            )
            for basket in baskets
        )
    )

    assert [r.status_code for r in results] == [201] * 20, [
        r.text for r in results if r.status_code != 201
    ]
    # Each answer is the cart its own basket made, with exactly that basket's lines.
    for basket, result in zip(baskets, results, strict=True):
        assert _lines(result.json()) == [("TEE-91", basket[0]["quantity"])]
    assert len({r.json()["id"] for r in results}) == 20
    active = await _active_carts(app, buyer["id"])
    assert len(active) == 1, active
    # The one left active is one of the baskets, and is the cart the customer is given.
    assert active[0] in {r.json()["id"] for r in results}
    mine = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
    assert mine.status_code == 200 and mine.json()["id"] == active[0]


async def test_simultaneous_requests_for_the_customers_cart_all_get_the_same_new_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "twice")

    results = await asyncio.gather(
        *(
            client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer))
            for _ in range(20)
        )
    )

    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 19 + [201], [r.text for r in results if r.status_code >= 300]
    assert len({r.json()["id"] for r in results}) == 1
    assert await _active_carts(app, buyer["id"]) == [results[0].json()["id"]]
    assert len(await outbox_payloads(app, "CartCreated")) == 1


async def test_baskets_plain_requests_and_sign_in_merges_racing_leave_one_active_cart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-92": 100, "MUG-92": 100})
    buyer = await customer(client, "mixed")
    guests = [await guest_cart(client, {"MUG-92": 1}) for _ in range(6)]

    def basket(n: int) -> Any:
        return client.post(
            f"{API}/carts",
            json={"currency": "EUR", "items": [{"sku": "TEE-92", "quantity": n}]},
            headers=bearer(buyer),
        )

    def plain() -> Any:
        return client.post(
            f"{API}/carts", json={"currency": "EUR", "country": "ES"}, headers=bearer(buyer)
        )

    def merge(cart_id: str, token: dict[str, str]) -> Any:
        return client.post(f"{API}/carts/{cart_id}/merge", headers={**bearer(buyer), **token})

    requests = []
    for n in range(6):
        requests += [basket(n + 1), plain(), merge(*guests[n])]
    results = await asyncio.gather(*requests)

    assert all(r.status_code in (200, 201) for r in results), [
        r.text for r in results if r.status_code not in (200, 201)
    ]
    assert all(r.json()["customer_id"] == buyer["id"] for r in results)
    assert len(await _active_carts(app, buyer["id"])) == 1
    # Every guest cart was merged into a cart of the customer's, or adopted as theirs.
    async with orders_ctx(app).db.read() as session:
        guest_rows = (
            await session.execute(
                select(carts.c.status, carts.c.customer_id).where(
                    carts.c.id.in_([cart_id for cart_id, _ in guests])
                )
            )
        ).all()
    assert all(
        status == "merged" or customer_id == buyer["id"] for status, customer_id in guest_rows
    ), guest_rows


async def test_a_cart_merged_at_sign_in_adopted_while_another_request_made_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A guest cart adopted at sign-in and the customer's own cart made at the same moment: one
    of the two is the customer's active cart, and both answers name it or its predecessor."""
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"MUG-93": 100})
    for _ in range(5):
        buyer = await customer(client, "adopt")
        cart_id, token = await guest_cart(client, {"MUG-93": 2})
        merged, created = await asyncio.gather(
            client.post(f"{API}/carts/{cart_id}/merge", headers={**bearer(buyer), **token}),
            client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(buyer)),
        )
        assert merged.status_code == 200, merged.text
        assert created.status_code in (200, 201), created.text
        active = await _active_carts(app, buyer["id"])
        assert len(active) == 1, active
        assert merged.json()["id"] == active[0]
        assert ("MUG-93", 2) in _lines(merged.json())
