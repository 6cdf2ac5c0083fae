"""The events payments publishes (payload keys as in the commerce contract), and its handler
for the orders events it reacts to."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import DriverTransaction
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import ServiceContext

PAYMENT_SUCCEEDED = "PaymentSucceeded"
PAYMENT_FAILED = "PaymentFailed"
PAYMENT_REFUNDED = "PaymentRefunded"
INVOICE_ISSUED = "InvoiceIssued"
CREDIT_NOTE_ISSUED = "CreditNoteIssued"

PUBLISHED: tuple[str, ...] = (
    PAYMENT_SUCCEEDED,
    PAYMENT_FAILED,
    PAYMENT_REFUNDED,
    INVOICE_ISSUED,
    CREDIT_NOTE_ISSUED,
)

ORDER_CANCELLED = "OrderCancelled"
ORDER_PAYMENT_REFUSED = "OrderPaymentRefused"


async def on_order_cancelled(
    ctx: ServiceContext, session: AsyncSession, envelope: EventEnvelope
) -> None:
    """An order was cancelled: release whatever its payments still hold."""
    from ecosistema.payments.service import cancel_payments_of_cancelled_order

    order_id = envelope.payload.get("order_id")
    if isinstance(order_id, str) and order_id:
        await cancel_payments_of_cancelled_order(ctx, session, order_id)


async def on_order_payment_refused(
    ctx: ServiceContext, tx: DriverTransaction, envelope: EventEnvelope
) -> None:
    """An order refused a payment that succeeded after it was cancelled: refund all of it."""
    from ecosistema.payments.service import refund_refused_payment

    payment_id = envelope.payload.get("payment_id")
    if isinstance(payment_id, str) and payment_id:
        await refund_refused_payment(ctx, tx, payment_id)
