"""The reason of a stock adjustment, a release and a restock follows the platform's note rule
on both shapes: blank text, control characters and bidi overrides are a 422 at ``reason``;
line breaks and tabs inside a reason are kept."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.inventory import adjust_stock, availability
from ecosistema.catalog.schemas import StockAdjustment
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    make_product,
    make_warehouse,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)


async def stocked(ctx: ServiceContext, sku: str, on_hand: int) -> None:
    await make_warehouse(ctx, "main", 0)
    await make_product(ctx, "Stocked thing", skus={sku: 1000})
    count = StockAdjustment(warehouse="main", on_hand=on_hand, reason="count")
    await adjust_stock(ctx, sku, count, actor="staff-user-1")


async def level(ctx: ServiceContext, sku: str) -> tuple[int, int, int]:
    a = await availability(ctx, sku)
    return a.on_hand, a.reserved, a.available


REFUSED_REASONS = ["   ", "\n", "bad\x00reason", "\u202egnp.exe", "a\u2028b"]


@pytest.mark.parametrize("reason", REFUSED_REASONS)
async def test_a_reason_the_note_rule_refuses_is_a_422_at_reason_and_changes_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient, reason: str
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, "A-1", 10)
    client = InProcessCatalogClient(ctx)
    await client.reserve("held", [("A-1", 1)], 600)
    await client.reserve("paid", [("A-1", 2)], 600)
    await client.commit_reservation("paid")
    restock: dict[str, Any] = {"order_id": "paid", "lines": [{"sku": "A-1", "quantity": 1}]}

    adjusted = await shop.post(
        f"{API}/inventory/A-1/adjustments",
        json={"warehouse": "main", "delta": 1, "reason": reason},
        headers=staff,
    )
    released = await shop.post(
        f"{API}/reservations/held/release", json={"reason": reason}, headers=staff
    )
    restocked = await shop.post(
        f"{API}/restocks", json={**restock, "reason": reason}, headers=staff
    )

    for response in (adjusted, released, restocked):
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == ["reason"]
    # on hand 10 - 2 committed; 1 still reserved for "held"
    assert await level(ctx, "A-1") == (8, 1, 7)


async def test_a_reason_over_several_lines_is_accepted_and_kept_as_written(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    ctx = ctx_of(shop_app)
    await stocked(ctx, "A-1", 10)
    client = InProcessCatalogClient(ctx)
    await client.reserve("held", [("A-1", 1)], 600)
    await client.reserve("paid", [("A-1", 2)], 600)
    await client.commit_reservation("paid")

    adjusted = await shop.post(
        f"{API}/inventory/A-1/adjustments",
        json={"warehouse": "main", "delta": 1, "reason": "delivery 4411\n\tpallet 2"},
        headers=staff,
    )
    released = await shop.post(
        f"{API}/reservations/held/release", json={"reason": "cancelled\nby phone"}, headers=staff
    )
    restocked = await shop.post(
        f"{API}/restocks",
        json={
            "order_id": "paid",
            "lines": [{"sku": "A-1", "quantity": 1}],
            "reason": "refund r-1\nbox opened",
        },
        headers=staff,
    )

    assert adjusted.status_code == 201, adjusted.text
    assert released.status_code == 204, released.text
    assert restocked.status_code == 204, restocked.text
    assert await level(ctx, "A-1") == (10, 0, 10)
