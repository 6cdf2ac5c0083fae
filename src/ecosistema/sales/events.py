"""The events sales publishes, and its handlers for identity's and orders' events.

Published payloads carry ids, never contact data:

- ``LeadCreated``: ``{lead_id, owner_id, source, campaign, score, model_version}``
- ``LeadStatusChanged``: ``{lead_id, owner_id, from, to, reason}``; ``to`` won/lost is a label.

Consumed: ``UserRegistered`` and ``UserRoleChanged`` (identity), ``CartCreated``, ``OrderPlaced``
and ``OrderPaid`` (orders). None carries the email address, so the handlers ask identity's or
orders' client for it and match leads by the email's blind index. Handlers run in the
consumer's transaction, where the platform records the event id, so a redelivered event changes
nothing.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

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
    """A cart or an order by a lead's email shows on its timeline; an order wins the lead (a
    training label)."""
    from ecosistema.sales.service import record_cart, record_order

    if envelope.type == CART_CREATED:
        await record_cart(ctx, session, envelope)
    else:
        await record_order(ctx, session, envelope)


SUBSCRIPTIONS: Final = (
    Subscription("identity", (USER_REGISTERED, USER_ROLE_CHANGED), on_user_event),
    Subscription("orders", (CART_CREATED, ORDER_PLACED, ORDER_PAID), on_order_event),
)
