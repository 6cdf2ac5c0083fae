"""Payments left half-way are finished on both shapes: a provider answer lost after the charge
is recovered without charging twice, and a cancelled order releases its authorization."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from ecosistema.payments.models import payments, refunds, sandbox_intents
from ecosistema.payments.providers.base import CardDetails
from ecosistema.payments.service import (
    provider_for,
    reconcile,
    resume_interrupted_payments,
    resume_pending_refunds,
    use_provider,
)
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.events import EventEnvelope
from tests.integration.test_payments_support import THREE_DS, VISA, Shop, eventually, open_shop


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def payment_row(shop: Shop, payment_id: str) -> dict[str, Any]:
    async with shop.ctx.db.read() as session:
        row = (
            (await session.execute(select(payments).where(payments.c.id == payment_id)))
            .mappings()
            .one()
        )
        return dict(row)


async def test_charge_whose_answer_was_lost_is_recorded_once_by_the_resume_job(
    shop: Shop,
) -> None:
    order = shop.orders.place()
    created = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"]},
        headers={**shop.as_("customer"), "Idempotency-Key": "create"},
    )
    payment_id = created.json()["id"]
    sandbox = provider_for(shop.ctx, "sandbox")
    token = await sandbox.tokenize(CardDetails(VISA, 12, 2099, "123"))
    # The process claimed the payment and the provider charged, then the process stopped.
    await sandbox.authorize(
        amount=3500,
        currency="EUR",
        token=token.token,
        capture=True,
        idempotency_key=f"{payment_id}:attempt:1",
        description="lost answer",
    )
    async with shop.ctx.db.transaction() as session:
        await session.execute(
            update(payments)
            .where(payments.c.id == payment_id)
            .values(
                status="processing",
                attempt=1,
                pending_operation="authorize",
                card={
                    "token": token.token,
                    "brand": "visa",
                    "last4": "4242",
                    "exp_month": 12,
                    "exp_year": 2099,
                },
                resume_after=utcnow() - timedelta(seconds=1),
            )
        )

    assert await resume_interrupted_payments(shop.ctx) == 1
    assert await resume_interrupted_payments(shop.ctx) == 0

    row = await payment_row(shop, payment_id)
    assert row["status"] == "succeeded"
    assert row["captured_amount"] == 3500
    assert row["pending_operation"] is None
    assert len(await shop.sandbox_charges()) == 1
    assert len(await shop.events("PaymentSucceeded")) == 1
    assert len(await shop.events("InvoiceIssued")) == 1


async def test_payment_created_with_a_method_is_claimed_before_the_provider_is_called(
    shop: Shop,
) -> None:
    # What a crash during the provider call would leave: the payment already written as
    # claimed for its authorization, so the resume job finishes it instead of losing it.
    sandbox = provider_for(shop.ctx, "sandbox")
    seen: list[dict[str, Any]] = []

    class Watching:
        name = "sandbox"

        def __getattr__(self, attribute: str) -> Any:
            return getattr(sandbox, attribute)

        async def authorize(self, **call: Any) -> Any:
            [row] = await shop.payment_rows()
            seen.append(row)
            return await sandbox.authorize(**call)

    use_provider(shop.ctx, Watching())  # type: ignore[arg-type]
    paid = await shop.pay(shop.orders.place()["id"], VISA)

    assert paid.status_code == 201, paid.text
    [row] = seen
    assert (row["status"], row["pending_operation"], row["attempt"]) == (
        "processing",
        "authorize",
        1,
    )
    assert row["card"]["last4"] == "4242"
    assert row["resume_after"] is not None
    assert paid.json()["status"] == "succeeded"


async def test_claim_that_is_not_yet_due_is_left_alone(shop: Shop) -> None:
    order = shop.orders.place()
    paid = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    async with shop.ctx.db.transaction() as session:
        await session.execute(
            update(payments)
            .where(payments.c.id == paid["id"])
            .values(
                status="processing",
                pending_operation="capture",
                pending_amount=100,
                resume_after=utcnow() + timedelta(minutes=1),
            )
        )
    assert await resume_interrupted_payments(shop.ctx) == 0
    assert (await payment_row(shop, paid["id"]))["status"] == "processing"


async def test_cancelled_order_voids_its_authorization_and_cancels_unpaid_intents(
    shop: Shop,
) -> None:
    authorized_order = shop.orders.place()
    authorized = (await shop.pay(authorized_order["id"], VISA, capture_method="manual")).json()
    action_order = shop.orders.place()
    waiting = (await shop.pay(action_order["id"], THREE_DS)).json()
    assert waiting["status"] == "requires_action" and waiting["next_action"]
    unpaid_order = shop.orders.place()
    unpaid = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": unpaid_order["id"]},
        headers={**shop.as_("customer"), "Idempotency-Key": "unpaid"},
    )
    for order in (authorized_order, action_order, unpaid_order):
        await shop.ctx.bus.publish(
            EventEnvelope(
                type="OrderCancelled",
                source="orders",
                payload={"order_id": order["id"], "number": order["number"]},
            )
        )
    ids = [authorized["id"], waiting["id"], unpaid.json()["id"]]

    async def all_canceled() -> bool:
        rows = [await payment_row(shop, payment_id) for payment_id in ids]
        return all(row["status"] == "canceled" for row in rows)

    # Voided at the provider as soon as the cancellation is handled, not at the job's next run.
    await eventually(all_canceled)
    assert await resume_interrupted_payments(shop.ctx) == 0
    for payment_id in ids:
        shown = await shop.http.get(f"/api/v1/payments/{payment_id}", headers=shop.as_("staff"))
        assert shown.json()["cancellation_reason"] == "The order was cancelled."
        assert shown.json()["next_action"] is None
    async with shop.ctx.db.read() as session:
        statuses = set((await session.execute(select(sandbox_intents.c.status))).scalars())
    assert statuses == {"canceled"}


async def test_refund_whose_answer_was_lost_is_settled_once(shop: Shop) -> None:
    order = shop.orders.place()
    paid = (await shop.pay(order["id"], VISA)).json()
    row = await payment_row(shop, paid["id"])
    # The refund was taken and sent to the provider, then the process stopped.
    async with shop.ctx.db.transaction() as session:
        await session.execute(
            update(payments).where(payments.c.id == paid["id"]).values(refunded_amount=1000)
        )
        await session.execute(
            refunds.insert().values(
                id="refund0000000000000000000000lost",
                payment_id=paid["id"],
                order_id=order["id"],
                status="pending",
                amount=1000,
                currency="EUR",
                reason="damaged",
                restock=False,
                lines=[],
                created_by="staff",
                created_at=utcnow() - timedelta(minutes=3),
            )
        )
    await provider_for(shop.ctx, "sandbox").refund(
        str(row["provider_ref"]), 1000, idempotency_key="refund0000000000000000000000lost:refund"
    )

    assert await resume_pending_refunds(shop.ctx) == 1
    assert await resume_pending_refunds(shop.ctx) == 0

    [event] = await shop.events("PaymentRefunded")
    assert (event["refund_id"], event["amount"]) == ("refund0000000000000000000000lost", 1000)
    assert [c["amount"] for c in await shop.sandbox_charges() if c["kind"] == "refund"] == [-1000]
    assert len(await shop.events("CreditNoteIssued")) == 1
    assert (await reconcile(shop.ctx, provider="sandbox")).clean
