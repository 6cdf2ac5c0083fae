"""The events orders publishes, and its handlers for payments' events.

Payloads always carry ``order_id, number, customer_id, currency, total``, never the buyer's email
(a consumer that must reach the buyer asks orders for the order). OrderPlaced and OrderPaid add
``lines`` [{sku, quantity, unit_price, total}]; OrderRefunded adds ``amount, refund_id,
restock_lines`` [{sku, quantity}], ``fully_refunded`` and ``refunded_total`` (what the order
had refunded in all once this refund was applied, this one included).

``OrderFulfillmentCreated`` adds ``fulfillment_id, tracking_number, carrier, lines``
[{line_id, sku, quantity}]: a parcel was sent (every fulfilment, not only the last). Internal:
the buyer's shipping confirmation is mailed from it. OrderRefunded also names the ``lines``
[{line_id, sku, quantity}] whose units this refund refunded.

``OrderPaymentRefused`` ``{order_id, number, payment_id, status}``: a payment succeeded for an
order that no longer awaits payment (cancelled before the money came); payments refunds it in
full. Internal, like ``CartCreated``.

``CartCreated`` ``{cart_id, customer_id, created_at}`` is published when a signed-in customer
opens a new cart (not for anonymous carts, nor when the customer's active cart is returned), for
the platform's own services only (no webhook). It carries no email either: a consumer asks
identity for the customer.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import DriverTransaction, statements
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import ServiceContext, Subscription

CART_CREATED: Final = "CartCreated"
ORDER_PLACED: Final = "OrderPlaced"
ORDER_PAID: Final = "OrderPaid"
ORDER_CANCELLED: Final = "OrderCancelled"
ORDER_FULFILLED: Final = "OrderFulfilled"
ORDER_REFUNDED: Final = "OrderRefunded"
ORDER_PAYMENT_REFUSED: Final = "OrderPaymentRefused"
ORDER_FULFILLMENT_CREATED: Final = "OrderFulfillmentCreated"

# Offered to the outside world too (webhooks give each a public name).
PUBLISHED: Final = (ORDER_PLACED, ORDER_PAID, ORDER_CANCELLED, ORDER_FULFILLED, ORDER_REFUNDED)
# For the platform's own services only: carts (sales' timeline; carts are many and most are
# abandoned), and a payment the order refuses (payments refunds it).
# A parcel sent (every fulfilment, partial or not) is for the buyer's shipping confirmation.
PUBLISHED_INTERNAL: Final = (CART_CREATED, ORDER_PAYMENT_REFUSED, ORDER_FULFILLMENT_CREATED)

PAYMENT_SUCCEEDED: Final = "PaymentSucceeded"
PAYMENT_FAILED: Final = "PaymentFailed"
PAYMENT_REFUNDED: Final = "PaymentRefunded"


async def on_payment_event(
    ctx: ServiceContext, tx: AsyncSession | DriverTransaction, envelope: EventEnvelope
) -> None:
    """Apply a payment's outcome to its order, in the consumer's (driver) transaction."""
    # Imported here: the service writes the event types above, so it imports this module.
    from ecosistema.orders.service import (
        event_time,
        record_payment_failed,
        record_payment_refunded,
        record_payment_succeeded,
        recorded_at,
    )

    payload = envelope.payload
    writing = statements(tx)
    # The order's history says when the payment changed, not when the event arrived.
    with recorded_at(event_time(payload)):
        if envelope.type == PAYMENT_SUCCEEDED:
            await record_payment_succeeded(ctx, writing, payload)
        elif envelope.type == PAYMENT_FAILED:
            await record_payment_failed(ctx, writing, payload)
        elif envelope.type == PAYMENT_REFUNDED:
            await record_payment_refunded(ctx, writing, payload)


async def on_order_event(
    ctx: ServiceContext, tx: AsyncSession | DriverTransaction, envelope: EventEnvelope
) -> None:
    """Queue the buyer's mail about an order event, in the consumer's (driver) transaction."""
    from ecosistema.orders.emails import queue_order_email

    await queue_order_email(ctx, tx, envelope)


async def _emails_wanted(ctx: ServiceContext, envelope: EventEnvelope) -> bool:
    from ecosistema.orders.emails import order_emails_wanted

    return await order_emails_wanted(ctx, envelope)


SUBSCRIPTIONS: Final = (
    # A paid order is on every checkout's path: its handler runs on a driver transaction.
    Subscription(
        "payments",
        (PAYMENT_SUCCEEDED, PAYMENT_FAILED, PAYMENT_REFUNDED),
        on_payment_event,
        driver=True,
    ),
    # Orders' own events, for the buyer's mail: queued with the event's record, so a crash
    # loses none and a redelivery queues none twice; sent by the ``send-order-emails`` job.
    Subscription(
        "emails",
        (ORDER_PAID, ORDER_FULFILLMENT_CREATED, ORDER_CANCELLED, ORDER_REFUNDED),
        on_order_event,
        wanted=_emails_wanted,
        driver=True,
    ),
)
