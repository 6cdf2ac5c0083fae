"""The events sales publishes, and its handlers for identity's and orders' events.

Published payloads carry ids, never contact data:

- ``LeadCreated``: ``{lead_id, owner_id, source, campaign, score, model_version}``
- ``LeadStatusChanged``: ``{lead_id, owner_id, from, to, reason}``; ``to`` won/lost is a label.

Consumed: ``UserRegistered`` and ``UserRoleChanged`` (identity), ``CartCreated``, ``OrderPlaced``
and ``OrderPaid`` (orders). None carries the email address, so the handlers ask identity's or
orders' client for it and match leads by the email's blind index. Handlers run in the
consumer's transaction, where the platform records the event id, so a redelivered event changes
nothing. A cart or an order whose buyer's email is no lead's is declined before that transaction
(most buyers are not leads): it writes nothing, as the handler would not have.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

import httpx
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.errors import NotFound
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import ServiceContext, Subscription

LEAD_CREATED: Final = "LeadCreated"
LEAD_STATUS_CHANGED: Final = "LeadStatusChanged"
PUBLISHED: Final = (LEAD_CREATED, LEAD_STATUS_CHANGED)

USER_REGISTERED: Final = "UserRegistered"
USER_ROLE_CHANGED: Final = "UserRoleChanged"
CART_CREATED: Final = "CartCreated"
ORDER_PLACED: Final = "OrderPlaced"
ORDER_PAID: Final = "OrderPaid"


async def on_user_event(
    ctx: ServiceContext, session: AsyncSession, envelope: EventEnvelope
) -> None:
    """A registration shows on the timeline of leads with that email; sales users are noted."""
    from ecosistema.sales.service import record_user

    await record_user(ctx, session, envelope)


async def on_order_event(
    ctx: ServiceContext, session: AsyncSession, envelope: EventEnvelope
) -> None:
    """A cart or an order by a lead's email shows on its timeline; a paid order (OrderPaid, not
    OrderPlaced) wins the lead (a training label)."""
    from ecosistema.sales.service import record_cart, record_order

    if envelope.type == CART_CREATED:
        await record_cart(ctx, session, envelope)
    else:
        await record_order(ctx, session, envelope)


_lead_by_email: Any = None


def _lead_by_email_statement() -> Any:
    """One lead with a given email index (a statement made once, so it is compiled once)."""
    global _lead_by_email
    if _lead_by_email is None:
        from ecosistema.sales.models import leads

        _lead_by_email = (
            select(leads.c.id).where(leads.c.email_index == bindparam("index")).limit(1)
        )
    return _lead_by_email


async def _buyer_email(ctx: ServiceContext, envelope: EventEnvelope) -> str | None:
    """The email of the customer who created the cart or placed the order; ``None`` when the
    event names none or the customer or order is gone."""
    payload = envelope.payload
    if envelope.type == CART_CREATED:
        customer_id = str(payload.get("customer_id") or "")
        if not customer_id or not payload.get("cart_id"):
            return None
        email: str | None = await ctx.client("identity").get_user_email(customer_id)
        return email
    order_id = str(payload.get("order_id") or "")
    if not order_id:
        return None
    email = payload.get("email")
    if email:
        return str(email)
    try:
        order = await ctx.client("orders").get_order(order_id)
    except NotFound:
        return None
    return None if order.email is None else str(order.email)


# An order's email is fixed when it is placed, so OrderPaid need not ask orders again for the
# email OrderPlaced asked for: the blind index (never the address) of the latest orders.
_ORDER_EMAIL_INDEXES: OrderedDict[str, str] = OrderedDict()
ORDER_EMAIL_INDEXES_KEPT: Final = 4096


async def order_event_concerns_a_lead(ctx: ServiceContext, envelope: EventEnvelope) -> bool:
    """Whether some lead has the email of the cart's or order's buyer: only then does
    ``on_order_event`` have anything to record."""
    from ecosistema.sales.service import email_index

    order_id = str(envelope.payload.get("order_id") or "") if envelope.type != CART_CREATED else ""
    index = _ORDER_EMAIL_INDEXES.get(order_id) if order_id else None
    if index is None:
        try:
            email = await _buyer_email(ctx, envelope)
        except (LookupError, httpx.HTTPStatusError):
            return True  # the handler meets the same failure and says so
        if email is None:
            return False
        index = email_index(ctx, email)
        if order_id:
            _ORDER_EMAIL_INDEXES[order_id] = index
            if len(_ORDER_EMAIL_INDEXES) > ORDER_EMAIL_INDEXES_KEPT:
                _ORDER_EMAIL_INDEXES.popitem(last=False)
    query = ctx.db.compile_read(_lead_by_email_statement())
    return bool(await ctx.db.fetch(query, index=index))


SUBSCRIPTIONS: Final = (
    Subscription("identity", (USER_REGISTERED, USER_ROLE_CHANGED), on_user_event),
    Subscription(
        "orders",
        (CART_CREATED, ORDER_PLACED, ORDER_PAID),
        on_order_event,
        wanted=order_event_concerns_a_lead,
    ),
)
