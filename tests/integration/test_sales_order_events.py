"""Sales and orders' events, on both shapes: a cart or an order whose buyer is no lead is
declined before any write, and one by a lead's email still reaches the lead."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from ecosistema.sales.models import outbox
from tests.integration.test_orders_support import place_guest_order, seed_shop
from tests.integration.test_sales_leads import create
from tests.integration.test_sales_support import (
    API,
    app,
    bearer,
    eventually,
    sales_ctx,
    settings,
    users,
)

__all__ = ["app", "settings"]


async def test_an_order_by_a_buyer_who_is_no_lead_writes_nothing_in_sales(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    await seed_shop(app, client, people["admin"], {"LEADS-TEE": 5})
    lead = await create(client, people["sales"], email="known.buyer@example.com")
    await place_guest_order(client, {"LEADS-TEE": 1}, email="stranger@example.com")
    await place_guest_order(client, {"LEADS-TEE": 1}, email="known.buyer@example.com")
    path, auth = f"{API}/leads/{lead['id']}", bearer(people["sales"])

    async def shown() -> bool:
        await app.state.runtime.drain_outboxes()
        items = (await client.get(f"{path}/activities", headers=auth)).json()["items"]
        return any(a["kind"] == "order_placed" for a in items)

    # Events are delivered in order: once the second order is on the lead's timeline, the first
    # was handled.
    await eventually(shown, what="the lead's order on its timeline")
    processed = outbox.processed
    async with sales_ctx(app).db.read() as session:
        recorded = await session.scalar(
            select(func.count())
            .select_from(processed)
            .where(processed.c.consumer == "sales.orders")
        )
    assert recorded == 1
