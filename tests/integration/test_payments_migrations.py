"""Payments' Alembic migrations build exactly the tables its models declare, on both shapes, and
the latest goes back down and up again keeping every payment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from ecosistema.payments import descriptor as payments_service
from ecosistema.payments.models import metadata, payments, refunds
from ecosistema.platform.config import Settings
from tests.integration.migration_support import (
    columns_of,
    downgrade,
    schema_drift,
    service_database,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _payment(payment_id: str) -> dict[str, Any]:
    return {
        "id": payment_id,
        "order_id": "order-" + payment_id,
        "created_by": "staff",
        "status": "canceled",
        "capture_method": "automatic",
        "amount": 1000,
        "currency": "EUR",
        "amount_capturable": 0,
        "captured_amount": 0,
        "refunded_amount": 0,
        "fee": 0,
        "provider": "sandbox",
        "attempt": 0,
        "order_snapshot": {},
        "created_at": NOW,
        "updated_at": NOW,
    }


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = service_database(settings, "payments")
    try:
        await db.migrate(payments_service.migrations)
        await db.migrate(payments_service.migrations)  # a second run is a no-op
        diff, tables = await schema_drift(db, metadata)
        assert diff == []
        assert set(metadata.tables) <= tables
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_cancellation_reason_goes_down_and_up_keeping_the_payments(
    settings: Settings,
) -> None:
    db = service_database(settings, "payments")
    try:
        await db.migrate(payments_service.migrations)
        async with db.transaction() as session:
            await session.execute(
                payments.insert().values({**_payment("p1"), "cancellation_reason": "twice"})
            )
        await downgrade(db, payments_service.migrations, "0003_payments_sandbox_expiry")
        assert "cancellation_reason" not in await columns_of(db, "payments")

        await db.migrate(payments_service.migrations)
        assert "cancellation_reason" in await columns_of(db, "payments")
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(payments)) == 1
            kept = await session.scalar(select(payments.c.cancellation_reason))
        # What the column held is gone with it; the payment itself is kept.
        assert kept is None
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_refund_restock_lines_go_down_and_up_keeping_the_refunds(settings: Settings) -> None:
    db = service_database(settings, "payments")
    try:
        await db.migrate(payments_service.migrations)
        async with db.transaction() as session:
            await session.execute(
                refunds.insert().values(
                    id="r1",
                    payment_id="p1",
                    order_id="order-p1",
                    status="succeeded",
                    amount=500,
                    currency="EUR",
                    reason="torn",
                    restock=True,
                    lines=[],
                    restock_lines=[{"sku": "MUG", "quantity": 1}],
                    created_by="staff",
                    created_at=NOW,
                    completed_at=NOW,
                )
            )
        await downgrade(db, payments_service.migrations, "0004_payments_cancel_reason")
        assert "restock_lines" not in await columns_of(db, "refunds")

        await db.migrate(payments_service.migrations)
        assert "restock_lines" in await columns_of(db, "refunds")
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(refunds)) == 1
            assert await session.scalar(select(refunds.c.restock_lines)) is None
    finally:
        await db.drop_schema()
        await db.dispose()
