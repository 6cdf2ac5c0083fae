"""Idempotent consumers: an event id is applied once per consumer, however often delivered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database, utcnow
from ecosistema.platform.events.envelope import EventEnvelope
from ecosistema.platform.events.outbox import Outbox

SessionHandler = Callable[[AsyncSession, EventEnvelope], Awaitable[None]]


class IdempotentConsumer:
    """Runs a handler and records the event id in the same transaction as its effects."""

    def __init__(self, name: str, db: Database, outbox: Outbox, handler: SessionHandler) -> None:
        self.name = name
        self.db = db
        self.table = outbox.processed
        self.handler = handler

    async def __call__(self, envelope: EventEnvelope) -> None:
        try:
            async with self.db.transaction() as session:
                if await self._seen(session, envelope.id):
                    return
                await self.handler(session, envelope)
                await session.execute(
                    self.table.insert().values(
                        consumer=self.name, event_id=envelope.id, processed_at=utcnow()
                    )
                )
        except IntegrityError:
            # A concurrent delivery of the same event committed first, and this one rolled back.
            # Any other integrity error is the handler's own and must not pass as processed.
            async with self.db.read() as session:
                if await self._seen(session, envelope.id):
                    return
            raise

    async def processed(self, event_id: str) -> bool:
        """Whether this consumer has applied the event."""
        async with self.db.read() as session:
            return await self._seen(session, event_id)

    async def _seen(self, session: AsyncSession, event_id: str) -> bool:
        t = self.table
        found = await session.scalar(
            select(t.c.event_id).where(t.c.consumer == self.name, t.c.event_id == event_id)
        )
        return found is not None
