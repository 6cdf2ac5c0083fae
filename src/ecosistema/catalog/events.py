"""The events catalog publishes, and its handlers for the orders events it reacts to.

Handlers run inside the consumer's driver transaction (the platform records the event id there,
so a redelivered event changes nothing) and the reservation use cases they call are idempotent
too.
"""

from __future__ import annotations

from typing import Any, Final

from ecosistema.catalog import inventory, service
from ecosistema.platform.cache import MemoryCache
from ecosistema.platform.db import DriverTransaction
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import ServiceContext, Subscription

PRODUCT_CREATED: Final = service.PRODUCT_CREATED
"""``{product_id, slug}``"""

PRODUCT_UPDATED: Final = service.PRODUCT_UPDATED
"""``{product_id, slug}``"""

PRODUCT_ARCHIVED: Final = service.PRODUCT_ARCHIVED
"""``{product_id, slug}``"""

CATEGORY_CREATED: Final = service.CATEGORY_CREATED
"""``{category_id, id, slug, parent_id}`` (``id`` repeats ``category_id``: caches purge by it)"""

CATEGORY_UPDATED: Final = service.CATEGORY_UPDATED
"""``{category_id, id, slug, parent_id}``: renamed or re-described."""

CATEGORY_DELETED: Final = service.CATEGORY_DELETED
"""``{category_id, id, slug, parent_id}``"""

STOCK_CHANGED: Final = inventory.STOCK_CHANGED
"""``{sku, available, delta, reason, reference}``: availability of a SKU across warehouses."""

STOCK_LOW: Final = inventory.STOCK_LOW
"""``{sku, available, threshold}``: availability just fell below the threshold."""

_CATEGORY_EVENTS: Final = (CATEGORY_CREATED, CATEGORY_UPDATED, CATEGORY_DELETED)

PUBLISHED: Final = (
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PRODUCT_ARCHIVED,
    *_CATEGORY_EVENTS,
    STOCK_CHANGED,
    STOCK_LOW,
)

# What changes a cached product or list.
_CACHED_READS_CHANGE: Final = (
    PRODUCT_CREATED,
    PRODUCT_UPDATED,
    PRODUCT_ARCHIVED,
    *_CATEGORY_EVENTS,
    STOCK_CHANGED,
)


async def follow_writes_of_other_processes(ctx: ServiceContext) -> None:
    """Start hook: with a cache of this process's own (the embedded shape), catalog's events
    also clear it, so writes another process makes on the same database (``ecosistema catalog
    import`` while the platform runs) are seen at once rather than when the cache expires. A
    shared cache (Redis) is cleared by the writing process itself."""
    if not isinstance(ctx.cache, MemoryCache):
        return

    async def forget(envelope: EventEnvelope) -> None:
        product_id = envelope.payload.get("product_id")
        await service.invalidate(ctx, [product_id] if isinstance(product_id, str) else ())

    await ctx.bus.subscribe_broadcast(_CACHED_READS_CHANGE, forget)


ORDER_PAID: Final = "OrderPaid"
ORDER_CANCELLED: Final = "OrderCancelled"
ORDER_REFUNDED: Final = "OrderRefunded"


async def on_order_paid(
    ctx: ServiceContext, tx: DriverTransaction, envelope: EventEnvelope
) -> None:
    """A paid order's reserved stock leaves on-hand for good."""
    order_id = str(envelope.payload["order_id"])
    await inventory.commit_reservation_in(ctx, tx, order_id, actor=envelope.source)
    _after_stock_change(ctx, tx)


async def on_order_cancelled(
    ctx: ServiceContext, tx: DriverTransaction, envelope: EventEnvelope
) -> None:
    """A cancelled order's reserved stock becomes available again."""
    order_id = str(envelope.payload["order_id"])
    reason = str(envelope.payload.get("reason") or "order cancelled")
    await inventory.release_reservation_in(ctx, tx, order_id, reason, actor=envelope.source)
    _after_stock_change(ctx, tx)


async def on_order_refunded(
    ctx: ServiceContext, tx: DriverTransaction, envelope: EventEnvelope
) -> None:
    """Units refunded with restock go back on hand."""
    payload = envelope.payload
    lines = _restock_lines(payload.get("restock_lines"))
    if lines:
        reason = f"refund {payload.get('refund_id') or ''}".strip()
        await inventory.restock_in(
            ctx,
            tx,
            str(payload["order_id"]),
            lines,
            reason,
            actor=envelope.source,
            strict=False,  # the refund has happened: restock what the order can take back
        )
        _after_stock_change(ctx, tx)


def _restock_lines(raw: Any) -> list[tuple[str, int]]:
    lines: list[tuple[str, int]] = []
    for item in raw or []:
        quantity = int(item.get("quantity") or 0)
        if item.get("sku") and quantity > 0:
            lines.append((str(item["sku"]), quantity))
    return lines


def _after_stock_change(ctx: ServiceContext, tx: DriverTransaction) -> None:
    # Cached search pages may filter on stock; their generation moves once this commits.
    service.invalidate_after_commit(ctx, tx)


SUBSCRIPTIONS: Final = (
    Subscription("commit-paid-reservations", (ORDER_PAID,), on_order_paid, driver=True),
    Subscription(
        "release-cancelled-reservations",
        (ORDER_CANCELLED,),
        on_order_cancelled,
        driver=True,
    ),
    Subscription("restock-refunds", (ORDER_REFUNDED,), on_order_refunded, driver=True),
)
