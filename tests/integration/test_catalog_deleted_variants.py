"""A deleted variant's stock goes with it, on both shapes: a refund restocking its SKU is
skipped and logged (never failing the event), and a variant made later with the same SKU starts
with no stock and no movements of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import bindparam, func, select, text, update
from structlog.testing import capture_logs

from ecosistema.catalog import inventory
from ecosistema.catalog import service as catalog_service
from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.events import on_order_refunded
from ecosistema.catalog.inventory import availability, movements
from ecosistema.catalog.models import stock, stock_movements, variants
from ecosistema.catalog.schemas import StockAdjustment, VariantCreate
from ecosistema.platform.db import DriverTransaction, utcnow
from ecosistema.platform.errors import Conflict, NotFound, Unprocessable
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
    with capture_logs() as logs:
        await refunds(_refund("order-x", "refund-1", "QA-X", 1))  # acknowledged: no exception

    assert await _stock_rows(catalog, "QA-X") == []
    assert await _restocks_announced(catalog, "QA-X") == []
    logged = [e for e in logs if e["event"] == "restock_of_deleted_variant_skipped"]
    assert len(logged) == 1
    assert (logged[0]["order_id"], logged[0]["sku"]) == ("order-x", "QA-X")
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


async def test_movements_without_a_variant_count_as_the_variant_that_has_the_sku_now(
    catalog: ServiceContext,
) -> None:
    """Movements written by a catalog older than the variant column (during an upgrade) have
    no variant: a refund of their order restocks, and they are listed as the SKU's."""
    await make_warehouse(catalog, "main")
    await make_product(catalog, "Lamp", skus={"QA-N": 500})
    await _receive(catalog, "QA-N", 2)
    client = InProcessCatalogClient(catalog)
    await client.reserve("order-n", [("QA-N", 2)], 600)
    await client.commit_reservation("order-n")
    async with catalog.db.transaction() as session:
        await session.execute(
            update(stock_movements).where(stock_movements.c.sku == "QA-N").values(variant_id=None)
        )

    await inventory.restock(catalog, "order-n", [("QA-N", 1)], "refund by hand")
    await _consumer(catalog)(_refund("order-n", "refund-n", "QA-N", 1))

    assert await level(catalog, "QA-N") == (2, 0, 2)
    assert [m.reason for m in (await movements(catalog, "QA-N")).items] == [
        "restock",
        "restock",
        "commit",
        "reserve",
        "receive",
    ]


# --- deleting a variant while its stock is written (PostgreSQL: writers run side by side) -----

_CHAIN = text(
    "WITH RECURSIVE chain(pid) AS (SELECT CAST(:root AS integer) UNION "
    "SELECT a.pid FROM pg_stat_activity a JOIN chain c ON c.pid = ANY(pg_blocking_pids(a.pid))) "
    "SELECT count(*) - 1 FROM chain"
)


_locked_stock = (
    select(stock)
    .where(stock.c.sku == bindparam("sku"), stock.c.warehouse_id == bindparam("warehouse_id"))
    .with_for_update()
)


class _Rollback(Exception):
    pass


async def _waiting_behind(
    ctx: ServiceContext, root: int, count: int, *also: asyncio.Task[Any]
) -> None:
    """Until ``count`` sessions wait (directly or in turn) on the session ``root``, or one of
    ``also`` has finished."""
    while not any(task.done() for task in also):
        async with ctx.db.read() as session:
            if (await session.scalar(_CHAIN, {"root": root})) >= count:
                return
        await asyncio.sleep(0.01)


async def _race(
    ctx: ServiceContext,
    hold: Callable[[DriverTransaction], Awaitable[Any]],
    first: Awaitable[Any],
    second: Awaitable[Any],
    *,
    commit: bool,
) -> list[Any]:
    """Run ``first`` then ``second`` while a transaction that ran ``hold`` holds
    its locks; once both wait (or one has finished), end it (commit or roll back) and return
    both outcomes, exceptions included."""
    locked = asyncio.Event()
    release = asyncio.Event()
    root: list[int] = []

    async def _holder() -> None:
        try:
            async with ctx.db.driver_write() as tx:
                root.append(int(await tx.scalar(select(func.pg_backend_pid()))))
                await hold(tx)
                locked.set()
                await release.wait()
                if not commit:
                    raise _Rollback
        except _Rollback:
            pass

    holder = asyncio.create_task(_holder())
    await locked.wait()
    one = asyncio.ensure_future(first)
    await _waiting_behind(ctx, root[0], 1, one)
    two = asyncio.ensure_future(second)
    await _waiting_behind(ctx, root[0], 2, one, two)
    release.set()
    await holder
    return list(await asyncio.gather(one, two, return_exceptions=True))


async def _orphan_stock(ctx: ServiceContext, sku: str) -> list[Any]:
    """Stock rows of ``sku`` when no variant has it."""
    async with ctx.db.read() as session:
        if await session.scalar(select(variants.c.id).where(variants.c.sku == sku)) is not None:
            return []
    return await _stock_rows(ctx, sku)


def _postgres_only(shape: str) -> None:
    if shape != "distributed":
        pytest.skip("SQLite serializes writers: there is no race to lose")


@pytest.mark.parametrize("attempt", range(3))
async def test_an_adjustment_waiting_on_a_variant_being_deleted_is_a_404(
    catalog: ServiceContext, shape: str, attempt: int
) -> None:
    _postgres_only(shape)
    main = await make_warehouse(catalog, "main")
    product = await make_product(catalog, "Two variants", skus={"QA-D": 500, "QA-E": 500})
    await _receive(catalog, "QA-D", 1)
    await _receive(catalog, "QA-D", -1)  # a stock row, empty: the variant can be deleted
    variant_id = next(v.id for v in product.variants if v.sku == "QA-D")

    deleted, adjusted = await _race(
        catalog,
        lambda tx: tx.rows(_locked_stock, sku="QA-D", warehouse_id=main.id),
        catalog_service.delete_variant(catalog, product.id, variant_id),
        _receive(catalog, "QA-D", 5),
        commit=True,
    )

    assert deleted is None
    assert isinstance(adjusted, NotFound), adjusted
    assert await _stock_rows(catalog, "QA-D") == []


@pytest.mark.parametrize("attempt", range(3))
async def test_a_variant_is_not_deleted_under_a_first_delivery_to_a_warehouse(
    catalog: ServiceContext, shape: str, attempt: int
) -> None:
    _postgres_only(shape)
    main = await make_warehouse(catalog, "main")
    product = await make_product(catalog, "Two variants", skus={"QA-F": 500, "QA-G": 500})
    variant_id = next(v.id for v in product.variants if v.sku == "QA-F")
    # Another transaction's uncommitted stock row for the SKU holds the delivery's insert.
    row = {"sku": "QA-F", "warehouse_id": main.id, "on_hand": 0, "reserved": 0}

    adjusted, deleted = await _race(
        catalog,
        lambda tx: tx.insert(stock, [{**row, "updated_at": utcnow()}]),
        _receive(catalog, "QA-F", 5),
        catalog_service.delete_variant(catalog, product.id, variant_id),
        commit=False,
    )

    assert adjusted is None
    assert isinstance(deleted, Conflict), deleted
    assert await _orphan_stock(catalog, "QA-F") == []
    assert await level(catalog, "QA-F") == (5, 0, 5)


async def test_a_restock_waiting_on_a_variant_being_deleted_is_refused(
    catalog: ServiceContext, shape: str
) -> None:
    _postgres_only(shape)
    main = await make_warehouse(catalog, "main")
    product = await make_product(catalog, "Two variants", skus={"QA-H": 500, "QA-I": 500})
    await _receive(catalog, "QA-H", 1)
    client = InProcessCatalogClient(catalog)
    await client.reserve("order-h", [("QA-H", 1)], 600)
    await client.commit_reservation("order-h")  # its stock row is left empty
    variant_id = next(v.id for v in product.variants if v.sku == "QA-H")

    deleted, restocked = await _race(
        catalog,
        lambda tx: tx.rows(_locked_stock, sku="QA-H", warehouse_id=main.id),
        catalog_service.delete_variant(catalog, product.id, variant_id),
        inventory.restock(catalog, "order-h", [("QA-H", 1)], "refund by hand"),
        commit=True,
    )

    assert deleted is None
    assert isinstance(restocked, Unprocessable), restocked
    assert await _stock_rows(catalog, "QA-H") == []
    async with catalog.db.read() as session:
        restocks = await session.scalar(
            select(func.count())
            .select_from(stock_movements)
            .where(stock_movements.c.sku == "QA-H", stock_movements.c.reason == "restock")
        )
    assert restocks == 0
