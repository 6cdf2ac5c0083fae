"""Orders' migrations go back down with orders, their lines, history, fulfilments and voucher
uses in the database, on both shapes, and keep every row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select

from ecosistema.orders import descriptor as orders_service
from ecosistema.orders.models import (
    fulfillments,
    order_history,
    order_lines,
    orders,
    voucher_usages,
    vouchers,
)
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from tests.integration.migration_support import columns_of, downgrade, service_database

NOW = datetime(2026, 11, 1, tzinfo=UTC)


async def count(db: Database, table: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


def order(order_id: str) -> dict[str, Any]:
    amounts = ("subtotal", "discount_total", "shipping_total", "shipping_tax", "tax_total")
    return {
        "id": order_id,
        "number": f"ORD-{order_id}",
        "cart_id": order_id,
        "email_encrypted": "sealed",
        "email_index": "index",
        "status": "paid",
        "currency": "EUR",
        "country": "ES",
        "prices_include_tax": True,
        "tax_rate_bp": 2100,
        **dict.fromkeys(amounts, 0),
        "total": 1990,
        "refunded_total": 0,
        "weight_grams": 180,
        "created_at": NOW,
        "updated_at": NOW,
    }


def line(order_id: str, position: int) -> dict[str, Any]:
    money = ("unit_price", "subtotal", "discount", "tax", "total")
    counts = ("fulfilled_quantity", "returned_quantity", "refunded_quantity")
    return {
        "id": f"{order_id}-l{position}",
        "order_id": order_id,
        "position": position,
        "sku": f"TEE-{position}",
        "name": "Tee",
        "quantity": 1,
        **dict.fromkeys(money, 995),
        "weight_grams": 90,
        **dict.fromkeys(counts, 0),
    }


async def test_downgrades_keep_orders_and_every_row_that_refers_to_them(
    settings: Settings,
) -> None:
    db = service_database(settings, "orders")
    ids = ["o1", "o2", "o3"]
    try:
        await db.migrate(orders_service.migrations, "0005_orders_addresses")
        async with db.transaction() as session:
            await session.execute(
                insert(orders),
                [
                    order(i)
                    | {
                        "shipping_address_encrypted": f"sealed-{i}",
                        "billing_address_encrypted": None,
                    }
                    for i in ids
                ],
            )
            await session.execute(insert(order_lines), [line(i, n) for i in ids for n in (0, 1)])
            await session.execute(
                insert(order_history),
                [
                    {
                        "id": f"{i}-h",
                        "order_id": i,
                        "occurred_at": NOW,
                        "kind": "status",
                        "to_status": "paid",
                        "actor_kind": "system",
                        "details": {},
                    }
                    for i in ids
                ],
            )
            await session.execute(
                insert(fulfillments),
                {
                    "id": "f1",
                    "order_id": "o1",
                    "tracking_number": "TRACK-1",
                    "lines": [{"line_id": "o1-l0", "sku": "TEE-0", "quantity": 1}],
                    "created_at": NOW,
                },
            )
            await session.execute(
                insert(vouchers),
                {
                    "id": "v1",
                    "code": "TEN",
                    "kind": "percentage",
                    "value": 1000,
                    "minimum_spend": 0,
                    "times_used": 1,
                    "active": True,
                    "created_at": NOW,
                    "updated_at": NOW,
                },
            )
            await session.execute(
                insert(voucher_usages),
                {
                    "id": "u1",
                    "voucher_id": "v1",
                    "order_id": "o2",
                    "holder": "x",
                    "email_index": "index",
                    "created_at": NOW,
                },
            )
        tables = (orders, order_lines, order_history, fulfillments, vouchers, voucher_usages)
        before = {table.name: await count(db, table) for table in tables}

        await downgrade(db, orders_service.migrations, "0004_orders_voucher_use_email")
        after_0005 = {table.name: await count(db, table) for table in tables}
        order_columns = await columns_of(db, "orders")
        await downgrade(db, orders_service.migrations, "0003_orders_voucher_currency")
        after_0004 = {table.name: await count(db, table) for table in tables}
        usage_columns = await columns_of(db, "voucher_usages")
        async with db.read() as session:
            kept = (
                await session.execute(
                    select(order_lines.c.id, order_lines.c.order_id).order_by(order_lines.c.id)
                )
            ).all()
            totals = (await session.execute(select(orders.c.id, orders.c.total))).all()
        await db.migrate(orders_service.migrations, "0005_orders_addresses")

        assert before == {
            "orders": 3,
            "order_lines": 6,
            "order_history": 3,
            "fulfillments": 1,
            "vouchers": 1,
            "voucher_usages": 1,
        }
        assert after_0005 == before
        assert after_0004 == before
        assert {"shipping_address_encrypted", "billing_address_encrypted"}.isdisjoint(order_columns)
        assert "email_index" not in usage_columns
        assert [tuple(row) for row in kept] == [(f"{i}-l{n}", i) for i in ids for n in (0, 1)]
        assert sorted(tuple(row) for row in totals) == [(i, 1990) for i in ids]
        assert {"shipping_address_encrypted", "billing_address_encrypted"} <= await columns_of(
            db, "orders"
        )
        assert "email_index" in await columns_of(db, "voucher_usages")
    finally:
        await db.drop_schema()
        await db.dispose()
