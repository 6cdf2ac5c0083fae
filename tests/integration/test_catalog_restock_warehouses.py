"""Restocks on both shapes put units back in the warehouses the order's reservation took them
from, split over them, never more into one than was taken from it, also over several partial
restocks, refund events and concurrent restocks."""

from __future__ import annotations

import asyncio

from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.events import on_order_refunded
from ecosistema.catalog.inventory import availability, movements, restock
from ecosistema.catalog.models import reservation_lines
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_inventory import envelope, stocked
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    settings_fixture,  # noqa: F401 - a fixture
)

SKU = "MWF-0098-RED"


async def on_hand(ctx: ServiceContext) -> dict[str, int]:
    levels = (await availability(ctx, SKU)).warehouses
    return {level.warehouse_code: level.on_hand for level in levels}


async def sold_across_two_warehouses(ctx: ServiceContext) -> dict[str, str]:
    """65 units sold: 8 from madrid (first by priority), 57 from rotterdam."""
    await stocked(ctx, {SKU: {"madrid": 8, "rotterdam": 60}})
    client = InProcessCatalogClient(ctx)
    await client.reserve("paid", [(SKU, 65)], 600)
    await client.commit_reservation("paid")
    assert await on_hand(ctx) == {"madrid": 0, "rotterdam": 3}
    levels = (await availability(ctx, SKU)).warehouses
    return {level.warehouse_id: level.warehouse_code for level in levels}


async def test_partial_restocks_go_back_to_the_warehouses_the_units_came_from(
    catalog: ServiceContext,
) -> None:
    codes = await sold_across_two_warehouses(catalog)

    await restock(catalog, "paid", [(SKU, 63)], "refund r1")
    assert await on_hand(catalog) == {"madrid": 8, "rotterdam": 58}
    await restock(catalog, "paid", [(SKU, 2)], "refund r2")

    assert await on_hand(catalog) == {"madrid": 8, "rotterdam": 60}
    restocks = [
        (codes[m.warehouse_id], m.on_hand_delta, m.note)
        for m in (await movements(catalog, SKU)).items
        if m.reason == "restock"
    ]
    assert sorted(restocks) == [
        ("madrid", 8, "refund r1"),
        ("rotterdam", 2, "refund r2"),
        ("rotterdam", 55, "refund r1"),
    ]


async def test_refund_events_restock_each_warehouse_at_most_what_it_gave(
    catalog: ServiceContext,
) -> None:
    await sold_across_two_warehouses(catalog)

    for refund_id, quantity in (("r1", 5), ("r2", 50), ("r3", 30)):
        async with catalog.db.driver_write() as tx:
            await on_order_refunded(
                catalog,
                tx,
                envelope(
                    "OrderRefunded",
                    {
                        "order_id": "paid",
                        "refund_id": refund_id,
                        "restock_lines": [{"sku": SKU, "quantity": quantity}],
                    },
                ),
            )

    # 85 asked for, 65 taken: madrid gets its 8 back, rotterdam its 57, nothing more.
    assert await on_hand(catalog) == {"madrid": 8, "rotterdam": 60}


async def test_concurrent_restocks_of_one_order_split_without_overfilling_a_warehouse(
    catalog: ServiceContext,
) -> None:
    await sold_across_two_warehouses(catalog)

    await asyncio.gather(
        restock(catalog, "paid", [(SKU, 33)], "refund r1"),
        restock(catalog, "paid", [(SKU, 32)], "refund r2"),
    )

    assert await on_hand(catalog) == {"madrid": 8, "rotterdam": 60}


async def test_units_with_no_reservation_record_of_their_warehouse_go_to_the_default(
    catalog: ServiceContext,
) -> None:
    await sold_across_two_warehouses(catalog)
    # Units the reservation holds against a warehouse catalog no longer knows.
    async with catalog.db.driver_write() as tx:
        await tx.insert(
            reservation_lines,
            [{"order_id": "paid", "sku": SKU, "warehouse_id": "gone", "quantity": 4}],
        )

    await restock(catalog, "paid", [(SKU, 69)], "refund r1")

    # madrid (first by priority) is where a unit with no known origin goes.
    assert await on_hand(catalog) == {"madrid": 12, "rotterdam": 60}
