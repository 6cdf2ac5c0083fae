"""The demo order history on both shapes: past orders placed through the live use cases, dated
over the last weeks, in EUR and USD, in every life-cycle status, with their payments, invoices,
credit notes and balanced books; seeding again adds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ecosistema.catalog.demo import demo_skus
from ecosistema.orders import demo
from ecosistema.orders.models import order_history, orders
from ecosistema.orders.schemas import CartCreate
from ecosistema.payments.models import invoices, payments
from ecosistema.payments.service import journal_totals, reconcile, sales_report
from ecosistema.platform.auth import Principal
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.policy import permissions_for
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_orders_support import settings

__all__ = ["settings"]

STAFF = Principal.for_api_key("staff-reader", "staff", permissions_for("staff"), "test")


@pytest.fixture
async def runtime(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    monkeypatch.setattr(demo, "ORDER_COUNT", 40)  # the shape of the history, not its volume
    hosted = Runtime(settings, load_services(["identity", "catalog", "orders", "payments"]))
    await hosted.start(background=False)
    try:
        yield hosted
    finally:
        await hosted.stop()
        await drop_test_schemas(settings)


async def seed(runtime: Runtime) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, ctx in runtime.contexts.items():
        if ctx.service.seed_demo is not None:
            out[name] = await ctx.service.seed_demo(ctx)
    await runtime.drain_outboxes()
    return out


async def test_demo_seeds_weeks_of_past_orders_through_the_real_use_cases(
    runtime: Runtime,
) -> None:
    seeded = await seed(runtime)
    history = seeded["orders"]["history"]  # type: ignore[index]
    assert 30 <= history["orders"] <= 40, history
    assert set(history["by_currency"]) == {"EUR", "USD"}
    assert {"delivered", "cancelled"} <= set(history["by_status"]), history
    assert {"refunded", "partially_refunded"} & set(history["by_status"]), history

    orders_db = runtime.contexts["orders"].db
    async with orders_db.read() as session:
        oldest, newest = (
            await session.execute(
                select(func.min(orders.c.created_at), func.max(orders.c.created_at))
            )
        ).one()
        stamped_now = await session.scalar(
            select(func.count())
            .select_from(order_history)
            .where(order_history.c.occurred_at > utcnow() - timedelta(minutes=5))
        )
    assert utcnow() - oldest > timedelta(days=21) and newest < utcnow()
    # Every step was recorded at its moment in the past, the payment events' included.
    assert stamped_now == 0

    pay = runtime.contexts["payments"]
    async with pay.db.read() as session:
        captured = await session.scalar(
            select(func.count()).select_from(payments).where(payments.c.captured_amount > 0)
        )
        kinds: dict[str, int] = dict(
            (
                await session.execute(
                    select(invoices.c.kind, func.count()).group_by(invoices.c.kind)
                )
            ).all()
        )
    assert captured == history["orders"] - history["by_status"]["cancelled"]
    assert kinds["invoice"] == captured and kinds.get("credit_note", 0) >= 1
    assert all(sum(accounts.values()) == 0 for accounts in (await journal_totals(pay)).values())
    assert (await reconcile(pay, provider="sandbox")).clean

    report = await sales_report(pay, principal=STAFF)
    assert len({row.period for row in report.rows}) > 7
    assert {row.currency for row in report.rows} == {"EUR", "USD"}
    assert sum(row.refunds for row in report.rows) > 0 and report.top_products

    again = await seed(runtime)
    assert again["orders"]["history"] == history  # type: ignore[index]
    async with orders_db.read() as session:
        assert await session.scalar(select(func.count()).select_from(orders)) == history["orders"]


async def test_demo_customer_account_has_past_orders_of_its_own(runtime: Runtime) -> None:
    from ecosistema.identity import service as identity
    from ecosistema.orders import service as orders_service

    await seed(runtime)
    user = await identity.find_user_by_email(
        runtime.contexts["identity"], email="customer@demo.ecosistema.dev"
    )
    assert user is not None
    customer = Principal.for_user(user.id, str(user.role))
    ctx = runtime.contexts["orders"]
    async with ctx.db.read() as session:
        own = await session.scalar(
            select(func.count()).select_from(orders).where(orders.c.customer_id == user.id)
        )
        guests = await session.scalar(
            select(func.count()).select_from(orders).where(orders.c.customer_id.is_(None))
        )
    assert own == demo.CUSTOMER_ORDERS and int(guests or 0) > own
    # The customer sees them, with the account's email, when signed in.
    listed = await orders_service.list_orders(ctx, principal=customer)
    assert len(listed.items) == own
    assert all(o.customer_id == user.id and o.email == user.email for o in listed.items)
    # Signing in, the customer starts a cart of their own: nothing is left over from the demo.
    for currency in ("EUR", "USD"):
        cart, new = await orders_service.create_cart(
            ctx, principal=customer, data=CartCreate(currency=currency)
        )
        assert new and cart.lines == [] and cart.voucher_code is None

    # A demo order that cannot be placed leaves no cart behind for the next one to fill.
    plan = demo._Plan(
        at=utcnow() - timedelta(days=1),
        buyer=demo.CUSTOMER,
        currency="EUR",
        country="ES",
        shipping="standard",
        lines=[(demo_skus()[0], 10_000)],  # more than the demo keeps of anything
        fate="paid",
        customer=customer,
    )
    assert await demo._place(ctx, plan) is None
    cart, new = await orders_service.create_cart(
        ctx, principal=customer, data=CartCreate(currency="EUR")
    )
    assert new and cart.lines == []


async def test_demo_orders_mail_no_one(runtime: Runtime, settings: Settings) -> None:
    """Weeks of past orders, paid, shipped, cancelled and refunded: their buyers are not
    mailed, so starting the demo does not fill the mail folder (or a real mailbox)."""
    from ecosistema.orders.emails import send_due_emails
    from ecosistema.orders.models import order_emails

    seeded = await seed(runtime)
    assert seeded["orders"]["history"]["orders"] >= 30  # type: ignore[index]
    ctx = runtime.contexts["orders"]
    assert await send_due_emails(ctx, now=utcnow() + timedelta(days=1)) == 0
    async with ctx.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(order_emails)) == 0
        flagged = await session.scalar(
            select(func.count()).select_from(orders).where(orders.c.notify_buyer.is_(True))
        )
    assert flagged == 0
    mail = settings.data_dir / "mail"
    orders_mail = list(mail.glob("*.eml")) if mail.exists() else []
    assert all(b"demo.ecosistema.dev" not in p.read_bytes() for p in orders_mail)
