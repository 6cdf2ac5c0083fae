"""The events webhooks forwards to subscribers (it publishes none of its own), and its one
handler: record pending deliveries in the consumer's transaction, never send there."""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.service import ServiceContext, Subscription
from ecosistema.webhooks.domain import PUBLIC_NAMES
from ecosistema.webhooks.service import record_event, wants_event

PUBLISHED: Final[tuple[str, ...]] = ()

FORWARDED: Final[tuple[str, ...]] = tuple(sorted(PUBLIC_NAMES))
"""The bus event types offered to subscribers, by their internal names."""


async def on_forwarded_event(
    ctx: ServiceContext, session: AsyncSession, envelope: EventEnvelope
) -> None:
    """Record one pending delivery per subscription that wants this event."""
    await record_event(ctx, session, envelope)


async def wants_forwarded_event(ctx: ServiceContext, envelope: EventEnvelope) -> bool:
    """Whether some enabled subscription receives the event (else nothing is recorded)."""
    return await wants_event(ctx, envelope)


SUBSCRIPTIONS: Final = (
    Subscription("deliveries", FORWARDED, on_forwarded_event, wanted=wants_forwarded_event),
)
