"""Incremental sync of orders on both shapes: ``updated_since`` and ``sort=updated_at`` list the
orders changed since a moment, least recently changed first, ties by id, page after page; every
change of an order (payment, note, fulfilment, refund, cancellation) moves its ``updated_at``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from ecosistema.orders.models import orders
from ecosistema.platform.db import utcnow
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    checkout,
    customer,
    eventually,
    orders_ctx,
    place_guest_order,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]

SKU = "SYNC-TEE"


async def changed(
    client: httpx.AsyncClient, who: dict[str, Any], **params: Any
) -> list[dict[str, Any]]:
    """Every order the sync lists, following the cursor one page of ``limit`` at a time."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"sort": "updated_at", **params}
        if cursor:
            query["cursor"] = cursor
        response = await client.get(f"{API}/orders", params=query, headers=bearer(who))
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def moment(order: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(order["updated_at"])


async def test_every_change_moves_an_order_to_the_end_of_the_sync(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 20})
    first, second, third = [await place_guest_order(client, {SKU: 1}) for _ in range(3)]
    ids = [first["id"], second["id"], third["id"]]
    listed = await changed(client, admin, limit=1)
    assert [o["id"] for o in listed] == ids
    assert [moment(o) for o in listed] == sorted(moment(o) for o in listed)

    async def last_changed() -> tuple[str, datetime]:
        items = await changed(client, admin, limit=2)
        return items[-1]["id"], moment(items[-1])

    before = moment(listed[-1])

    async def moved(order_id: str) -> datetime:
        nonlocal before
        last_id, at = await last_changed()
        assert last_id == order_id
        assert at > before
        before = at
        return at

    # A staff note.
    note = await client.post(
        f"{API}/orders/{first['id']}/notes", json={"text": "Gift wrap"}, headers=bearer(admin)
    )
    assert note.status_code == 201, note.text
    await moved(first["id"])

    # A payment.
    await publish(
        app,
        "PaymentSucceeded",
        {"payment_id": "p", "order_id": second["id"], "amount": second["total"], "currency": "EUR"},
    )

    async def second_paid() -> bool:
        return (await last_changed())[0] == second["id"]

    await eventually(second_paid, what="the paid order last")
    await moved(second["id"])

    # A failed payment is only history, and still a change.
    await publish(
        app, "PaymentFailed", {"payment_id": "p0", "order_id": third["id"], "reason": "declined"}
    )

    async def third_last() -> bool:
        return (await last_changed())[0] == third["id"]

    await eventually(third_last, what="the failed payment noted")
    await moved(third["id"])

    # A fulfilment.
    shipped = await client.post(
        f"{API}/orders/{second['id']}/fulfillments",
        json={
            "lines": [{"line_id": second["lines"][0]["line_id"], "quantity": 1}],
            "tracking_number": "TRK-S",
        },
        headers=bearer(admin),
    )
    assert shipped.status_code in (200, 201), shipped.text
    await moved(second["id"])

    # A cancellation.
    cancelled = await client.post(
        f"{API}/orders/{third['id']}/cancel", json={}, headers=third["_headers"]
    )
    assert cancelled.status_code == 200, cancelled.text
    await moved(third["id"])

    # A refund.
    since = before
    await publish(
        app,
        "PaymentRefunded",
        {
            "payment_id": "p",
            "order_id": second["id"],
            "refund_id": "r1",
            "amount": 500,
            "currency": "EUR",
            "lines": [],
            "restock": False,
            "restock_lines": [],
            "fully_refunded": False,
        },
    )

    async def second_again() -> bool:
        return (await last_changed())[0] == second["id"]

    await eventually(second_again, what="the refunded order last")
    await moved(second["id"])

    # Only what changed at or after a moment: the cancelled order (at ``since``) and the refund.
    recent = await changed(client, admin, updated_since=since.isoformat())
    assert [o["id"] for o in recent] == [third["id"], second["id"]]
    assert recent[-1]["status"] == "partially_refunded"
    shown = await client.get(f"{API}/orders/{second['id']}", headers=bearer(admin))
    assert shown.json()["updated_at"] == recent[-1]["updated_at"]
    future = await changed(client, admin, updated_since="2999-01-01T00:00:00Z")
    assert future == []


async def test_orders_changed_at_the_same_moment_come_by_id_across_pages(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 20})
    placed = [await place_guest_order(client, {SKU: 1}) for _ in range(5)]
    same = utcnow()
    async with orders_ctx(app).db.transaction() as session:
        await session.execute(update(orders).values(updated_at=same))
    for limit in (1, 2, 3, 100):
        listed = await changed(client, admin, limit=limit, updated_since=same.isoformat())
        assert [o["id"] for o in listed] == sorted(o["id"] for o in placed), limit


async def test_a_customer_syncs_their_own_orders_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 20})
    await place_guest_order(client, {SKU: 1})
    buyer = await customer(client, "sync")
    cart = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "items": [{"sku": SKU, "quantity": 1}]},
        headers=bearer(buyer),
    )
    assert cart.status_code in (200, 201), cart.text
    placed = await checkout(client, cart.json()["id"], bearer(buyer))
    assert placed.status_code == 201, placed.text
    own = await changed(client, buyer, updated_since="2000-01-01T00:00:00Z")
    assert [o["id"] for o in own] == [placed.json()["id"]]


async def test_a_bad_moment_sort_or_cursor_is_a_422_naming_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 20})
    for _ in range(2):
        await place_guest_order(client, {SKU: 1})

    async def refused(params: dict[str, str]) -> str:
        response = await client.get(f"{API}/orders", params=params, headers=bearer(admin))
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        return str(response.json()["errors"][0]["field"])

    for value in ("yesterday", "2026-13-01T00:00:00Z", "9999-12-31T23:00:00-05:00", ""):
        assert await refused({"updated_since": value}) == "updated_since", value
    assert await refused({"sort": "total"}) == "sort"

    newest = await client.get(f"{API}/orders", params={"limit": 1}, headers=bearer(admin))
    by_change = await client.get(
        f"{API}/orders", params={"limit": 1, "sort": "updated_at"}, headers=bearer(admin)
    )
    # A cursor goes on the listing it came from, not on the other order.
    assert await refused({"sort": "updated_at", "cursor": newest.json()["next_cursor"]}) == "cursor"
    assert await refused({"cursor": by_change.json()["next_cursor"]}) == "cursor"


async def test_updated_since_takes_the_same_rule_and_messages_as_products(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """One rule for every incremental sync: RFC 3339 with its offset, said precisely."""
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 20})
    await place_guest_order(client, {SKU: 1})
    for value, says in (
        ("2026-11-29T10:00:00", "give a timezone offset"),
        ("2026-11-29", "RFC 3339"),
        ("2026-02-30T10:00:00Z", "not a real date"),
    ):
        answer = await client.get(
            f"{API}/orders", params={"updated_since": value}, headers=bearer(admin)
        )
        assert answer.status_code == 422, (value, answer.text)
        [error] = answer.json()["errors"]
        assert error["field"] == "updated_since" and says in error["message"], (value, error)
        products = await client.get(f"{API}/products", params={"updated_since": value})
        assert products.json()["errors"][0]["message"] == error["message"], value
    plus = await client.get(
        f"{API}/orders?updated_since=2000-01-01T10:00:00+01:00", headers=bearer(admin)
    )
    assert plus.status_code == 422 and "%2B" in plus.json()["errors"][0]["message"]
    escaped = await client.get(
        f"{API}/orders?updated_since=2000-01-01T10:00:00%2B01:00", headers=bearer(admin)
    )
    assert escaped.status_code == 200 and escaped.json()["items"], escaped.text
