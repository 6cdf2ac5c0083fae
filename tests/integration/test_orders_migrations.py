"""Orders' Alembic migrations build exactly the tables its models declare, on both shapes, and
bring older data up to today's rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from ecosistema.orders import descriptor as orders_service
from ecosistema.orders.models import (
    carts,
    metadata,
    order_history,
    order_lines,
    order_numbers,
    orders,
    voucher_usages,
    vouchers,
)
from ecosistema.platform.config import Settings
from tests.integration.migration_support import schema_drift, service_database


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = service_database(settings, "orders")
    try:
        await db.migrate(orders_service.migrations)
        await db.migrate(orders_service.migrations)  # a second run is a no-op
        diff, tables = await schema_drift(db, metadata)
        assert diff == []
        assert set(metadata.tables) <= tables
        async with db.read() as session:
            assert await session.scalar(select(order_numbers.c.last_number)) == 100_000
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_vouchers_with_a_minimum_spend_get_the_currency_of_their_orders(
    settings: Settings,
) -> None:
    db = service_database(settings, "orders")
    now = datetime(2026, 11, 1, tzinfo=UTC)

    def voucher(code: str, currency: str | None, minimum_spend: int) -> dict[str, Any]:
        return {
            "id": code.lower(),
            "code": code,
            "kind": "percentage",
            "value": 1000,
            "currency": currency,
            "minimum_spend": minimum_spend,
            "times_used": 0,
            "active": True,
            "created_at": now,
            "updated_at": now,
        }

    def order(order_id: str, currency: str) -> dict[str, Any]:
        amounts = ("subtotal", "discount_total", "shipping_total", "shipping_tax", "tax_total")
        return {
            "id": order_id,
            "number": f"ORD-{order_id}",
            "cart_id": order_id,
            "email_encrypted": "sealed",
            "email_index": "index",
            "status": "paid",
            "currency": currency,
            "country": "US",
            "prices_include_tax": True,
            "tax_rate_bp": 0,
            **dict.fromkeys(amounts, 0),
            "total": 0,
            "refunded_total": 0,
            "weight_grams": 0,
            "created_at": now,
            "updated_at": now,
        }

    try:
        await db.migrate(orders_service.migrations, "0002_orders_encrypt_email")
        async with db.transaction() as session:
            await session.execute(
                insert(vouchers),
                [
                    voucher("USED", None, 10_000),
                    voucher("UNUSED", None, 5_000),
                    voucher("NOSPEND", None, 0),
                    voucher("GBP", "GBP", 5_000),
                ],
            )
            await session.execute(
                insert(orders), [order("o1", "USD"), order("o2", "USD"), order("o3", "EUR")]
            )
            await session.execute(
                insert(voucher_usages),
                [
                    {"id": f"u{n}", "voucher_id": "used", "order_id": f"o{n}", "holder": "x"}
                    | {"created_at": now}
                    for n in (1, 2, 3)
                ],
            )
        await db.migrate(orders_service.migrations)
        async with db.read() as session:
            rows = await session.execute(select(vouchers.c.code, vouchers.c.currency))
            currencies = {code: currency for code, currency in rows}
            used_by = (await session.execute(select(voucher_usages.c.email_index))).scalars()
            addresses = list(used_by)
        assert currencies == {"USED": "USD", "UNUSED": "EUR", "NOSPEND": None, "GBP": "GBP"}
        # Uses written before they carried their address take their order's.
        assert addresses == ["index"] * 3
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_orders_get_fulfilment_and_payment_statuses_from_their_lines_and_history(
    settings: Settings,
) -> None:
    db = service_database(settings, "orders")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    amounts = ("subtotal", "discount_total", "shipping_total", "shipping_tax", "tax_total")

    def order(order_id: str, status: str, total: int = 1990) -> dict[str, Any]:
        return {
            "id": order_id,
            "number": f"ORD-{order_id}",
            "cart_id": order_id,
            "email_encrypted": "sealed",
            "email_index": "index",
            "status": status,
            "currency": "EUR",
            "country": "ES",
            "prices_include_tax": True,
            "tax_rate_bp": 2100,
            **dict.fromkeys(amounts, 0),
            "total": total,
            "refunded_total": 0,
            "weight_grams": 0,
            "created_at": now,
            "updated_at": now,
        }

    def line(order_id: str, quantity: int, fulfilled: int = 0, refunded: int = 0) -> dict[str, Any]:
        return {
            "id": f"{order_id}-l",
            "order_id": order_id,
            "position": 0,
            "sku": "TEE-1",
            "name": "Tee",
            "quantity": quantity,
            **dict.fromkeys(("unit_price", "subtotal", "discount", "tax", "total"), 0),
            "weight_grams": 0,
            "fulfilled_quantity": fulfilled,
            "returned_quantity": 0,
            "refunded_quantity": refunded,
        }

    steps = 0

    def step(order_id: str, action: str, **details: Any) -> dict[str, Any]:
        nonlocal steps
        steps += 1
        return {
            "id": f"h{steps}",
            "order_id": order_id,
            "occurred_at": now,
            "kind": "transition",
            "action": action,
            "actor_kind": "system",
            "details": details,
        }

    paid = {"payment_id": "p", "amount": 1990, "captured_amount": 1990}
    try:
        await db.migrate(orders_service.migrations, "0006_orders_cart_addresses")
        async with db.transaction() as session:
            await session.execute(
                insert(orders),
                [
                    order("pending", "pending_payment"),
                    order("cancelled", "cancelled"),
                    order("short", "paid"),
                    order("delivered", "delivered"),
                    order("bogus", "partially_refunded"),
                    order("halfway", "partially_refunded"),
                    order("free", "paid", total=0),
                ],
            )
            await session.execute(
                insert(order_lines),
                [
                    line("pending", 1),
                    line("cancelled", 1),
                    line("short", 1),
                    line("delivered", 2, fulfilled=2),
                    line("bogus", 1),
                    line("halfway", 2, fulfilled=1),
                    line("free", 1),
                ],
            )
            await session.execute(
                insert(order_history),
                [
                    step("short", "pay", payment_id="p", amount=1990, captured_amount=1000),
                    step("delivered", "pay", **paid),
                    step("delivered", "fulfil"),
                    step("delivered", "ship"),
                    step("delivered", "deliver"),
                    # Shipped and delivered by the old machine with nothing fulfilled.
                    step("bogus", "pay", **paid),
                    step("bogus", "refund_partially"),
                    step("bogus", "ship"),
                    step("bogus", "deliver"),
                    step("halfway", "pay", **paid),
                    step("halfway", "fulfil_partially"),
                    step("free", "pay"),
                ],
            )
        await db.migrate(orders_service.migrations)
        async with db.read() as session:
            rows = await session.execute(
                select(
                    orders.c.id,
                    orders.c.fulfillment_status,
                    orders.c.payment_status,
                    orders.c.amount_paid,
                )
            )
            found = {row.id: tuple(row)[1:] for row in rows}
        assert found == {
            "pending": ("unfulfilled", "pending", 0),
            "cancelled": ("unfulfilled", "voided", 0),
            "short": ("unfulfilled", "partially_paid", 1000),
            "delivered": ("delivered", "paid", 1990),
            "bogus": ("unfulfilled", "partially_refunded", 1990),
            "halfway": ("partially_fulfilled", "partially_refunded", 1990),
            "free": ("unfulfilled", "paid", 0),
        }
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_a_customers_duplicate_active_carts_keep_the_last_changed_one_active(
    settings: Settings,
) -> None:
    db = service_database(settings, "orders")
    day = datetime(2026, 11, 1, tzinfo=UTC)

    def cart(cart_id: str, customer: str | None, currency: str, changed: int) -> dict[str, Any]:
        return {
            "id": cart_id,
            "customer_id": customer,
            "status": "active",
            "currency": currency,
            "created_at": day,
            "updated_at": day.replace(hour=changed),
        }

    try:
        await db.migrate(orders_service.migrations, "0010_orders_money_bigint")
        async with db.transaction() as session:
            await session.execute(
                insert(carts),
                [
                    cart("old", "ana", "EUR", 1),
                    cart("last-changed", "ana", "EUR", 9),
                    cart("middle", "ana", "EUR", 5),
                    cart("dollars", "ana", "USD", 1),
                    cart("bea", "bea", "EUR", 1),
                    cart("guest-1", None, "EUR", 1),
                    cart("guest-2", None, "EUR", 2),
                ],
            )
        await db.migrate(orders_service.migrations)
        async with db.read() as session:
            rows = await session.execute(select(carts.c.id, carts.c.status).order_by(carts.c.id))
            statuses = {cart_id: status for cart_id, status in rows}
        assert statuses == {
            "bea": "active",
            "dollars": "active",
            "guest-1": "active",
            "guest-2": "active",
            "last-changed": "active",
            "middle": "replaced",
            "old": "replaced",
        }
        # From now on the database refuses a second one.
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await session.execute(insert(carts), cart("another", "ana", "EUR", 10))
    finally:
        await db.drop_schema()
        await db.dispose()
