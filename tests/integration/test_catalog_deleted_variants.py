"""A deleted variant's stock goes with it, on both shapes: a refund restocking its SKU is
skipped and logged (never failing the event), and a variant made later with the same SKU starts
with no stock and no movements of its own."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from ecosistema.catalog import inventory
from ecosistema.catalog import service as catalog_service
from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.events import on_order_refunded
from ecosistema.catalog.inventory import availability, movements
from ecosistema.catalog.models import stock
from ecosistema.catalog.schemas import StockAdjustment, VariantCreate
from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.events import EventEnvelope, IdempotentConsumer
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_inventory import level
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    make_product,
    make_warehouse,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
)


def _refund(order_id: str, refund_id: str, sku: str, quantity: int) -> EventEnvelope:
    return EventEnvelope(
        type="OrderRefunded",
        version=1,
        source="orders",
        payload={
            "order_id": order_id,
            "refund_id": refund_id,
            "restock_lines": [{"sku": sku, "quantity": quantity}],
        },
    )


def _consumer(ctx: ServiceContext) -> IdempotentConsumer:
    async def _run(tx: Any, env: EventEnvelope) -> None:
        await on_order_refunded(ctx, tx, env)

    return IdempotentConsumer("catalog.OrderRefunded", ctx.db, ctx.outbox, _run, driver=True)


async def _receive(ctx: ServiceContext, sku: str, units: int) -> None:
    await inventory.adjust_stock(
        ctx, sku, StockAdjustment(warehouse="main", delta=units, reason="delivery"), actor="staff"
    )


async def _stock_rows(ctx: ServiceContext, sku: str) -> list[Any]:
    async with ctx.db.read() as session:
        return list((await session.execute(select(stock).where(stock.c.sku == sku))).all())


async def _restocks_announced(ctx: ServiceContext, sku: str) -> list[dict[str, Any]]:
    return [
        payload
        for kind, payload in await outbox_types(ctx)
        if kind == "StockChanged" and payload["sku"] == sku and payload["reason"] == "restock"
    ]


async def test_a_refund_of_a_deleted_variant_is_skipped_and_a_new_variant_with_its_sku_starts_clean(
    catalog: ServiceContext,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_warehouse(catalog, "main")
    product = await make_product(catalog, "Two variants", skus={"QA-X": 500, "QA-Y": 500})
    await _receive(catalog, "QA-X", 1)
    client = InProcessCatalogClient(catalog)
    await client.reserve("order-x", [("QA-X", 1)], 600)
    await client.commit_reservation("order-x")
    old_variant = next(v for v in product.variants if v.sku == "QA-X")
    await catalog_service.delete_variant(catalog, product.id, old_variant.id)

    refunds = _consumer(catalog)
    await refunds(_refund("order-x", "refund-1", "QA-X", 1))  # acknowledged: no exception

    assert await _stock_rows(catalog, "QA-X") == []
    assert await _restocks_announced(catalog, "QA-X") == []
    captured = capsys.readouterr()
    logged = [
        line
        for line in (captured.out + captured.err + caplog.text).splitlines()
        if "restock_of_deleted_variant_skipped" in line
    ]
    assert len(logged) == 1 and "order-x" in logged[0] and "QA-X" in logged[0]
    with pytest.raises(Unprocessable) as refused:
        await inventory.restock(catalog, "order-x", [("QA-X", 1)], "refund by hand")
    assert [(e["field"], e["code"]) for e in refused.value.extra["errors"]] == [
        ("lines.0.sku", "not_found")
    ]

    remade = await catalog_service.add_variant(catalog, product.id, VariantCreate(sku="QA-X"))
    await refunds(_refund("order-x", "refund-2", "QA-X", 1))

    assert remade.id != old_variant.id
    assert await level(catalog, "QA-X") == (0, 0, 0)
    assert (await movements(catalog, "QA-X")).items == []
    assert await _stock_rows(catalog, "QA-X") == []
    assert await _restocks_announced(catalog, "QA-X") == []
    with pytest.raises(Unprocessable) as replaced:
        await inventory.restock(catalog, "order-x", [("QA-X", 1)], "refund by hand")
    assert [(e["field"], e["code"]) for e in replaced.value.extra["errors"]] == [
        ("lines.0.sku", "variant_replaced")
    ]
    # The new variant's own orders restock as ever.
    await _receive(catalog, "QA-X", 1)
    await client.reserve("order-new", [("QA-X", 1)], 600)
    await client.commit_reservation("order-new")
    await refunds(_refund("order-new", "refund-3", "QA-X", 1))
    assert await level(catalog, "QA-X") == (1, 0, 1)
    assert [m.reason for m in (await movements(catalog, "QA-X")).items] == [
        "restock",
        "commit",
        "reserve",
        "receive",
    ]


async def test_a_variant_with_units_reserved_cannot_be_deleted(catalog: ServiceContext) -> None:
    await make_warehouse(catalog, "main")
    product = await make_product(catalog, "Two variants", skus={"QA-R": 500, "QA-S": 500})
    await _receive(catalog, "QA-R", 2)
    await InProcessCatalogClient(catalog).reserve("order-r", [("QA-R", 2)], 600)
    variant_id = next(v.id for v in product.variants if v.sku == "QA-R")

    with pytest.raises(Conflict):
        await catalog_service.delete_variant(catalog, product.id, variant_id)
    await InProcessCatalogClient(catalog).release_reservation("order-r", "cancelled")

    assert await level(catalog, "QA-R") == (2, 0, 2)
    assert (await availability(catalog, "QA-R")).sku == "QA-R"
