"""Inventory on both shapes: reservations all-or-nothing, idempotent, committed, released and
expired; no oversell under 200 concurrent reservations; adjustments, movements and events."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from ecosistema.catalog.client import HttpCatalogClient, InProcessCatalogClient
from ecosistema.catalog.domain import InsufficientStock
from ecosistema.catalog.events import on_order_cancelled, on_order_paid, on_order_refunded
from ecosistema.catalog.inventory import (
    adjust_stock,
    availability,
    movements,
    release_expired_reservations,
    reservation_status,
)
from ecosistema.catalog.models import reservations, stock
from ecosistema.catalog.schemas import StockAdjustment
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import Conflict, NotFound, Unprocessable
from ecosistema.platform.events import EventEnvelope, IdempotentConsumer
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    ctx_of,
    make_product,
    make_warehouse,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

STAFF = "staff-user-1"


async def stocked(ctx: ServiceContext, levels: dict[str, dict[str, int]]) -> None:
    """Products with the given SKUs and on-hand stock per warehouse code."""
    codes = sorted({code for per in levels.values() for code in per})
    for priority, code in enumerate(codes):
        await make_warehouse(ctx, code, priority)
    await make_product(ctx, "Stocked thing", skus={sku: 1000 for sku in levels})
    for sku, per in levels.items():
        for code, quantity in per.items():
            await adjust_stock(
                ctx,
                sku,
                StockAdjustment(warehouse=code, on_hand=quantity, reason="count"),
                actor=STAFF,
            )


async def level(ctx: ServiceContext, sku: str) -> tuple[int, int, int]:
    a = await availability(ctx, sku)
    return a.on_hand, a.reserved, a.available


async def test_reservation_is_all_or_nothing_and_reports_every_line(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 5}, "B-1": {"main": 2}})
    client = InProcessCatalogClient(catalog)

    with pytest.raises(InsufficientStock) as caught:
        await client.reserve("order-1", [("A-1", 3), ("B-1", 3)], 600)

    assert caught.value.status == 409 and caught.value.type == "insufficient-stock"
    assert caught.value.extra["lines"] == [
        {"sku": "A-1", "requested": 3, "available": 5},
        {"sku": "B-1", "requested": 3, "available": 2},
    ]
    # Nothing was held for the line that fitted either.
    assert await level(catalog, "A-1") == (5, 0, 5)
    assert await reservation_status(catalog, "order-1") is None


async def test_reservation_is_idempotent_per_order(catalog: ServiceContext) -> None:
    await stocked(catalog, {"A-1": {"main": 5}})
    client = InProcessCatalogClient(catalog)

    await client.reserve("order-1", [("A-1", 2)], 600)
    await client.reserve("order-1", [("A-1", 2)], 600)

    assert await level(catalog, "A-1") == (5, 2, 3)


async def test_lines_for_one_sku_are_merged_and_split_across_warehouses(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"east": 2, "west": 3}})
    client = InProcessCatalogClient(catalog)

    await client.reserve("order-1", [("A-1", 2), ("A-1", 2)], 600)

    per = {w.warehouse_code: w.reserved for w in (await availability(catalog, "A-1")).warehouses}
    assert per == {"east": 2, "west": 2}


async def test_commit_takes_stock_for_good_once(catalog: ServiceContext) -> None:
    await stocked(catalog, {"A-1": {"main": 5}})
    client = InProcessCatalogClient(catalog)
    await client.reserve("order-1", [("A-1", 2)], 600)

    await client.commit_reservation("order-1")
    await client.commit_reservation("order-1")
    await client.release_reservation("order-1", "too late to cancel")

    assert await level(catalog, "A-1") == (3, 0, 3)
    assert await reservation_status(catalog, "order-1") == "committed"


async def test_release_frees_stock_once_and_a_released_order_cannot_reserve_again(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 5}})
    client = InProcessCatalogClient(catalog)
    await client.reserve("order-1", [("A-1", 4)], 600)

    await client.release_reservation("order-1", "customer cancelled")
    await client.release_reservation("order-1", "customer cancelled")

    assert await level(catalog, "A-1") == (5, 0, 5)
    with pytest.raises(Conflict):
        await client.reserve("order-1", [("A-1", 1)], 600)


async def test_sweeper_releases_only_expired_reservations(catalog: ServiceContext) -> None:
    await stocked(catalog, {"A-1": {"main": 10}})
    client = InProcessCatalogClient(catalog)
    await client.reserve("old", [("A-1", 3)], 600)
    await client.reserve("new", [("A-1", 2)], 600)
    async with catalog.db.transaction() as session:
        await session.execute(
            update(reservations)
            .where(reservations.c.order_id == "old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    assert await release_expired_reservations(catalog) == 1
    assert await release_expired_reservations(catalog) == 0

    assert await reservation_status(catalog, "old") == "released"
    assert await reservation_status(catalog, "new") == "active"
    assert await level(catalog, "A-1") == (10, 2, 8)
    reasons = [m.reason for m in (await movements(catalog, "A-1")).items]
    assert reasons[0] == "expire"


@pytest.mark.parametrize("contenders", [200])
async def test_concurrent_reservations_never_oversell(
    catalog: ServiceContext, contenders: int
) -> None:
    await stocked(catalog, {"HOT-1": {"main": 50}})
    client = InProcessCatalogClient(catalog)

    async def attempt(n: int) -> str:
        try:
            await client.reserve(f"order-{n}", [("HOT-1", 1)], 600)
        except InsufficientStock:
            return "short"
        return "ok"

    outcomes = await asyncio.gather(*(attempt(n) for n in range(contenders)))

    assert outcomes.count("ok") == 50
    assert outcomes.count("short") == contenders - 50
    assert await level(catalog, "HOT-1") == (50, 50, 0)
    async with catalog.db.read() as session:
        row = (await session.execute(select(stock).where(stock.c.sku == "HOT-1"))).one()
    assert row.on_hand - row.reserved == 0


async def test_concurrent_multi_line_reservations_stay_consistent(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"X-1": {"main": 10}, "Y-1": {"main": 10}})
    client = InProcessCatalogClient(catalog)

    async def attempt(n: int) -> bool:
        # Half take the SKUs in one order, half in the other: fixed lock order avoids deadlock.
        lines = [("X-1", 1), ("Y-1", 1)] if n % 2 else [("Y-1", 1), ("X-1", 1)]
        try:
            await client.reserve(f"order-{n}", lines, 600)
        except InsufficientStock:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(n) for n in range(30)))

    assert sum(outcomes) == 10
    assert await level(catalog, "X-1") == (10, 10, 0)
    assert await level(catalog, "Y-1") == (10, 10, 0)


async def test_adjustments_are_recorded_and_never_go_below_reserved(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 5}})
    await InProcessCatalogClient(catalog).reserve("order-1", [("A-1", 4)], 600)

    with pytest.raises(Conflict):
        await adjust_stock(
            catalog,
            "A-1",
            StockAdjustment(warehouse="main", delta=-2, reason="broken"),
            actor=STAFF,
        )
    after = await adjust_stock(
        catalog, "A-1", StockAdjustment(warehouse="main", delta=-1, reason="broken"), actor=STAFF
    )

    assert (after.on_hand, after.reserved, after.available) == (4, 4, 0)
    latest = (await movements(catalog, "A-1")).items[0]
    assert (latest.on_hand_delta, latest.reason, latest.note, latest.actor) == (
        -1,
        "adjust",
        "broken",
        STAFF,
    )


async def test_movements_page_newest_first_with_a_cursor(catalog: ServiceContext) -> None:
    await stocked(catalog, {"A-1": {"main": 1}})
    for n in range(4):
        await adjust_stock(
            catalog,
            "A-1",
            StockAdjustment(warehouse="main", delta=1, reason=f"delivery {n}"),
            actor=STAFF,
        )

    first = await movements(catalog, "A-1", limit=3)
    second = await movements(catalog, "A-1", limit=3, cursor=first.next_cursor)

    notes = [m.note for m in first.items + second.items]
    assert notes == ["delivery 3", "delivery 2", "delivery 1", "delivery 0", "count"]
    assert second.next_cursor is None
    with pytest.raises(Unprocessable):
        await movements(catalog, "A-1", cursor="not-a-cursor")


async def test_a_movements_cursor_pages_on_through_its_own_sku_only(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 1}, "B-1": {"main": 1}})
    for sku in ("A-1", "B-1"):
        for n in range(3):
            await adjust_stock(
                catalog,
                sku,
                StockAdjustment(warehouse="main", delta=1, reason=f"delivery {n}"),
                actor=STAFF,
            )
    first = await movements(catalog, "A-1", limit=2)
    assert first.next_cursor is not None

    with pytest.raises(Unprocessable) as refused:
        await movements(catalog, "B-1", limit=2, cursor=first.next_cursor)
    # A cursor of the earlier form (the position alone) is not this SKU's either.
    bare = base64.urlsafe_b64encode(json.dumps([10**6]).encode()).decode().rstrip("=")
    with pytest.raises(Unprocessable):
        await movements(catalog, "A-1", cursor=bare)
    second = await movements(catalog, "A-1", limit=2, cursor=first.next_cursor)

    assert [e["field"] for e in refused.value.extra["errors"]] == ["cursor"]
    assert {m.sku for m in first.items + second.items} == {"A-1"}
    assert [m.note for m in second.items] == ["delivery 0", "count"]


async def test_a_sku_that_differs_only_in_case_is_named_when_the_one_asked_for_is_unknown(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"CASE-A1": {"main": 2}})

    with pytest.raises(NotFound) as missing:
        await availability(catalog, "case-a1")
    with pytest.raises(NotFound) as unrelated:
        await availability(catalog, "OTHER-1")

    assert missing.value.detail == (
        "No variant with this SKU. SKUs are case-sensitive: CASE-A1 exists."
    )
    assert unrelated.value.detail == "No variant with this SKU."


async def test_stock_low_is_emitted_when_availability_falls_below_the_threshold(
    catalog: ServiceContext,
) -> None:
    threshold = catalog.settings.catalog_low_stock_threshold
    await stocked(catalog, {"A-1": {"main": threshold + 1}})
    client = InProcessCatalogClient(catalog)

    await client.reserve("order-1", [("A-1", 1)], 600)
    await client.reserve("order-2", [("A-1", 1)], 600)

    low = [p for t, p in await outbox_types(catalog) if t == "StockLow"]
    assert low == [{"sku": "A-1", "available": threshold - 1, "threshold": threshold}]


async def test_stock_changed_is_sent_per_sku_for_every_movement_as_the_webhook_docs_say(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 6, "spare": 4}})
    client = InProcessCatalogClient(catalog)
    before = len(await outbox_types(catalog))

    await client.reserve("order-1", [("A-1", 7)], 600)  # both warehouses, one event
    await client.commit_reservation("order-1")
    await client.reserve("order-2", [("A-1", 2)], 600)
    await client.release_reservation("order-2", "cancelled")
    count = StockAdjustment(warehouse="main", on_hand=0, reason="count")
    await adjust_stock(catalog, "A-1", count, actor=STAFF)  # already 0: nothing moves
    delivery = StockAdjustment(warehouse="main", delta=5, reason="delivery")
    await adjust_stock(catalog, "A-1", delivery, actor=STAFF)

    changed = [
        (p["reason"], p["delta"], p["available"], p["reference"])
        for t, p in (await outbox_types(catalog))[before:]
        if t == "StockChanged"
    ]
    assert changed == [
        ("reserve", -7, 3, "order-1"),
        ("commit", 0, 3, "order-1"),
        ("reserve", -2, 1, "order-2"),
        ("release", 2, 3, "order-2"),
        ("receive", 5, 8, None),
    ]


def envelope(type_: str, payload: dict[str, Any]) -> EventEnvelope:
    return EventEnvelope(type=type_, version=1, source="orders", payload=payload)


async def test_order_events_commit_release_and_restock_once_each(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 10}})
    client = InProcessCatalogClient(catalog)
    await client.reserve("paid", [("A-1", 3)], 600)
    await client.reserve("cancelled", [("A-1", 2)], 600)

    def consumer(name: str, handler: Any) -> IdempotentConsumer:
        async def _run(tx: Any, env: EventEnvelope) -> None:
            await handler(catalog, tx, env)

        return IdempotentConsumer(name, catalog.db, catalog.outbox, _run, driver=True)

    paid = envelope("OrderPaid", {"order_id": "paid"})
    cancelled = envelope("OrderCancelled", {"order_id": "cancelled"})
    refunded = envelope(
        "OrderRefunded",
        {"order_id": "paid", "refund_id": "r1", "restock_lines": [{"sku": "A-1", "quantity": 1}]},
    )
    for event, handler in (
        (paid, on_order_paid),
        (cancelled, on_order_cancelled),
        (refunded, on_order_refunded),
    ):
        run = consumer(f"catalog.{event.type}", handler)
        await run(event)
        await run(event)  # delivered twice: applied once

    assert await level(catalog, "A-1") == (8, 0, 8)
    assert await reservation_status(catalog, "paid") == "committed"
    assert await reservation_status(catalog, "cancelled") == "released"
    recorded = [(m.reason, m.actor) for m in (await movements(catalog, "A-1")).items]
    assert recorded[:4] == [
        ("restock", "orders"),
        ("release", "orders"),
        ("commit", "orders"),
        ("reserve", "system"),
    ]


async def test_reserve_rejects_bad_lines(catalog: ServiceContext) -> None:
    await stocked(catalog, {"A-1": {"main": 1}})
    client = InProcessCatalogClient(catalog)
    with pytest.raises(Unprocessable):
        await client.reserve("o", [("A-1", 0)], 600)
    with pytest.raises(Unprocessable):
        await client.reserve("o", [], 600)
    with pytest.raises(Unprocessable) as unknown:
        await client.reserve("o", [("A-1", 1), ("NO-SUCH", 1)], 600)
    assert [e["field"] for e in unknown.value.extra["errors"]] == ["lines.1.sku"]
    assert await reservation_status(catalog, "o") is None
    assert await level(catalog, "A-1") == (1, 0, 1)


async def test_http_client_reserves_quotes_and_raises_insufficient_stock_like_in_process(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 5}})
    remote = HttpCatalogClient(
        "http://testserver",
        credential=staff["Authorization"].removeprefix("Bearer "),
        transport=httpx.ASGITransport(app=shop_app),
    )
    try:
        quotes = await remote.quote(["A-1", "NOPE"], currency="EUR", customer_id="buyer-9")
        await remote.reserve("order-1", [("A-1", 2)], 600)
        await remote.reserve("order-1", [("A-1", 2)], 600)
        with pytest.raises(InsufficientStock) as caught:
            await remote.reserve("order-2", [("A-1", 4)], 600)
        await remote.commit_reservation("order-1")
        await remote.restock("order-1", [("A-1", 1)], "refund r1")
        await remote.release_reservation("order-unknown", "nothing held")
    finally:
        await remote.aclose()

    assert list(quotes) == ["A-1"] and quotes["A-1"].unit_price == 1000
    assert caught.value.extra["lines"] == [{"sku": "A-1", "requested": 4, "available": 3}]
    assert await level(ctx, "A-1") == (4, 0, 4)


async def test_a_reservation_names_who_the_stock_is_held_for_in_process_and_over_http(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 5}})
    await InProcessCatalogClient(ctx).reserve("local", [("A-1", 1)], 600, actor="buyer-1")
    await InProcessCatalogClient(ctx).reserve("unnamed", [("A-1", 1)], 600)
    remote = HttpCatalogClient(
        "http://testserver",
        credential=staff["Authorization"].removeprefix("Bearer "),
        transport=httpx.ASGITransport(app=shop_app),
    )
    try:
        await remote.reserve("remote", [("A-1", 1)], 600, actor="guest:cart-7")
        await remote.reserve("caller", [("A-1", 1)], 600)
    finally:
        await remote.aclose()
    bad = await shop.post(
        f"{API}/reservations",
        json={"order_id": "o", "lines": [{"sku": "A-1", "quantity": 1}], "ttl_seconds": 60}
        | {"actor": "two words"},
        headers=staff,
    )
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["actor"]

    reserved = {
        m.reference: m.actor for m in (await movements(ctx, "A-1")).items if m.reason == "reserve"
    }
    # Without a name, in process it is the platform's own doing; over HTTP, the caller's.
    assert reserved == {
        "local": "buyer-1",
        "unnamed": "system",
        "remote": "guest:cart-7",
        "caller": _subject(staff),
    }


def _subject(headers: dict[str, str]) -> str:
    """The user id a bearer token names (its ``sub`` claim)."""
    payload = headers["Authorization"].removeprefix("Bearer ").split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return str(claims["sub"])


async def test_restock_is_refused_for_an_order_that_took_no_stock(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 5}})
    await InProcessCatalogClient(ctx).reserve("unpaid", [("A-1", 2)], 600)
    body = {"lines": [{"sku": "A-1", "quantity": 5}], "reason": "returned"}

    unknown = await shop.post(f"{API}/restocks", json={"order_id": "nope", **body}, headers=staff)
    unpaid = await shop.post(f"{API}/restocks", json={"order_id": "unpaid", **body}, headers=staff)

    assert unknown.status_code == 404, unknown.text
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in unknown.json()["errors"]] == ["order_id"]
    assert unpaid.status_code == 409, unpaid.text
    assert unpaid.json()["type"].endswith("order-not-committed")
    assert [e["field"] for e in unpaid.json()["errors"]] == ["order_id"]
    assert await level(ctx, "A-1") == (5, 2, 3)


async def test_restock_is_capped_at_what_the_order_took_and_records_the_staff_user(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 10}, "B-1": {"main": 10}})
    client = InProcessCatalogClient(ctx)
    await client.reserve("paid", [("A-1", 3), ("B-1", 1)], 600)
    await client.commit_reservation("paid")

    def body(quantity: int) -> dict[str, Any]:
        lines = [{"sku": "B-1", "quantity": 1}, {"sku": "A-1", "quantity": quantity}]
        return {"order_id": "paid", "lines": lines, "reason": "returned"}

    too_many = await shop.post(f"{API}/restocks", json=body(50), headers=staff)
    first = await shop.post(f"{API}/restocks", json=body(2), headers=staff)
    again = await shop.post(f"{API}/restocks", json=body(2), headers=staff)

    assert too_many.status_code == 409, too_many.text
    assert too_many.json()["lines"] == [{"sku": "A-1", "requested": 50, "restockable": 3}]
    assert [e["field"] for e in too_many.json()["errors"]] == ["lines.1.quantity"]
    assert first.status_code == 204, first.text
    assert again.status_code == 409, again.text
    assert again.json()["lines"] == [
        {"sku": "A-1", "requested": 2, "restockable": 1},
        {"sku": "B-1", "requested": 1, "restockable": 0},
    ]
    assert (await level(ctx, "A-1"), await level(ctx, "B-1")) == ((9, 0, 9), (10, 0, 10))
    latest = (await movements(ctx, "A-1")).items[0]
    assert (latest.reason, latest.on_hand_delta, latest.actor) == ("restock", 2, _subject(staff))


async def test_a_refund_event_restocks_no_more_than_the_order_took(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 10}})
    client = InProcessCatalogClient(catalog)
    await client.reserve("paid", [("A-1", 3)], 600)
    await client.commit_reservation("paid")
    async with catalog.db.driver_write() as tx:
        await on_order_refunded(
            catalog,
            tx,
            envelope(
                "OrderRefunded",
                {"order_id": "paid", "restock_lines": [{"sku": "A-1", "quantity": 5}]},
            ),
        )
        await on_order_refunded(
            catalog,
            tx,
            envelope(
                "OrderRefunded",
                {"order_id": "unknown", "restock_lines": [{"sku": "A-1", "quantity": 5}]},
            ),
        )

    assert await level(catalog, "A-1") == (10, 0, 10)


async def test_adjustment_and_sale_window_errors_name_the_field_at_fault(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 5}})
    await InProcessCatalogClient(ctx).reserve("order-1", [("A-1", 4)], 600)
    url = f"{API}/inventory/A-1/adjustments"
    cases = [
        ({"warehouse": "main", "reason": "count"}, 422, "on_hand"),
        ({"warehouse": "main", "delta": 1, "on_hand": 2, "reason": "x"}, 422, "on_hand"),
        ({"warehouse": "main", "delta": 0, "reason": "x"}, 422, "delta"),
        ({"warehouse": "main", "delta": -2, "reason": "broken"}, 409, "delta"),
        ({"warehouse": "main", "on_hand": 3, "reason": "count"}, 409, "on_hand"),
    ]
    for body, status, field in cases:
        response = await shop.post(url, json=body, headers=staff)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == [field], body

    product = await make_product(ctx, "On sale", skus={"S-1": 1000})
    product_id, variant_id = product.id, product.variants[0].id
    window = {
        "sale_prices": [
            {
                "currency": "EUR",
                "amount": 1,
                "starts_at": "2026-12-02T00:00:00Z",
                "ends_at": "2026-12-01T00:00:00Z",
            }
        ]
    }
    refused = await shop.patch(
        f"{API}/products/{product_id}/variants/{variant_id}", json=window, headers=staff
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["sale_prices.0.ends_at"]


async def test_a_count_is_recorded_as_an_adjustment_either_way_and_a_delivery_as_received(
    catalog: ServiceContext,
) -> None:
    await stocked(catalog, {"A-1": {"main": 5}})

    for change in ({"on_hand": 9}, {"on_hand": 7}, {"delta": 2}, {"delta": -1}):
        await adjust_stock(
            catalog,
            "A-1",
            StockAdjustment.model_validate({"warehouse": "main", "reason": "x", **change}),
            actor=STAFF,
        )

    recorded = [(m.on_hand_delta, m.reason) for m in (await movements(catalog, "A-1")).items]
    assert recorded[:4] == [(-1, "adjust"), (2, "receive"), (-2, "adjust"), (4, "adjust")]


async def test_a_restock_sent_again_with_its_idempotency_key_is_replayed_not_applied_twice(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"A-1": {"main": 10}})
    client = InProcessCatalogClient(ctx)
    await client.reserve("paid", [("A-1", 4)], 600)
    await client.commit_reservation("paid")
    body = {"order_id": "paid", "lines": [{"sku": "A-1", "quantity": 1}], "reason": "refund r1"}
    keyed = {**staff, "Idempotency-Key": "refund-r1"}

    first = await shop.post(f"{API}/restocks", json=body, headers=keyed)
    again = await shop.post(f"{API}/restocks", json=body, headers=keyed)
    remote = HttpCatalogClient(
        "http://testserver",
        credential=staff["Authorization"].removeprefix("Bearer "),
        transport=httpx.ASGITransport(app=shop_app),
    )
    try:
        await remote.restock("paid", [("A-1", 2)], "refund r2")
        await remote.restock("paid", [("A-1", 2)], "refund r2")  # a retry: replayed
    finally:
        await remote.aclose()

    assert (first.status_code, again.status_code) == (204, 204)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await level(ctx, "A-1") == (9, 0, 9)
    restocks = [m for m in (await movements(ctx, "A-1")).items if m.reason == "restock"]
    assert [m.on_hand_delta for m in restocks] == [2, 1]


async def test_anyone_sees_what_can_be_bought_of_active_products_only(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    ctx = ctx_of(shop_app)
    await stocked(ctx, {"AV-1": {"main": 5, "back": 2}, "AV-2": {"main": 1}})
    await make_product(ctx, "Secret", skus={"AV-DRAFT": 900}, status="draft")
    await make_product(ctx, "Never stocked", skus={"AV-EMPTY": 900})
    await InProcessCatalogClient(ctx).reserve("o-1", [("AV-1", 3), ("AV-2", 1)], 600)

    seen = await shop.get(
        f"{API}/availability",
        params=[("sku", s) for s in ("AV-2", "AV-1", "AV-DRAFT", "NOPE", "AV-EMPTY", "AV-1")],
    )

    assert seen.status_code == 200, seen.text
    assert seen.headers["cache-control"] == "no-store"
    assert seen.json()["items"] == [
        {"sku": "AV-2", "available": 0, "in_stock": False},
        {"sku": "AV-1", "available": 4, "in_stock": True},
        {"sku": "AV-EMPTY", "available": 0, "in_stock": False},
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ([], "sku"),
        ([("sku", "bad sku!")], "sku.0"),
        ([("sku", f"S-{n}") for n in range(101)], "sku"),
    ],
)
async def test_availability_refuses_what_is_not_a_list_of_skus(
    shop: httpx.AsyncClient, params: list[tuple[str, str]], field: str
) -> None:
    refused = await shop.get(f"{API}/availability", params=params)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == [field]
