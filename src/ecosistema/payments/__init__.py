"""Payments: intents, providers, refunds, the journal, invoices and sales reports."""

from __future__ import annotations

from pathlib import Path

from ecosistema.payments import service as _service
from ecosistema.payments.api import router
from ecosistema.payments.client import InProcessPaymentsClient
from ecosistema.payments.events import (
    ORDER_CANCELLED,
    ORDER_PAYMENT_REFUSED,
    on_order_cancelled,
    on_order_payment_refused,
)
from ecosistema.payments.models import idempotency, metadata, outbox
from ecosistema.payments.schemas import ReconciliationReport
from ecosistema.platform.config import Settings
from ecosistema.platform.idempotency import idempotency_purge_job
from ecosistema.platform.service import (
    EncryptedColumn,
    Job,
    Service,
    ServiceContext,
    Subscription,
)


async def _resume_interrupted_payments(ctx: ServiceContext) -> None:
    await _service.resume_interrupted_payments(ctx)
    await _service.resume_pending_refunds(ctx)


descriptor = Service(
    name="payments",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    subscriptions=(
        Subscription("order-cancellations", (ORDER_CANCELLED,), on_order_cancelled),
        Subscription(
            "refused-payments", (ORDER_PAYMENT_REFUSED,), on_order_payment_refused, driver=True
        ),
    ),
    jobs=(
        idempotency_purge_job(idempotency),
        Job("resume-interrupted-payments", 60.0, _resume_interrupted_payments),
    ),
    encrypted_columns=(
        EncryptedColumn("payments", "buyer_encrypted"),
        EncryptedColumn("invoices", "buyer_encrypted"),
    ),
    make_client=InProcessPaymentsClient,
)

reconcile = _service.reconcile
sales_report_csv = _service.sales_report_csv


async def reconcile_with_provider(
    settings: Settings, *, provider: str | None = None
) -> ReconciliationReport:
    """Run a reconciliation outside the server (``ecosistema payments reconcile``): migrate,
    compare the journal with the provider's records, and stop."""
    from ecosistema.platform.runtime import Runtime

    runtime = Runtime(settings, [descriptor])
    await runtime.start(background=False)
    try:
        return await reconcile(runtime.contexts["payments"], provider=provider)
    finally:
        await runtime.stop()


__all__ = ["descriptor", "reconcile", "reconcile_with_provider", "sales_report_csv"]
