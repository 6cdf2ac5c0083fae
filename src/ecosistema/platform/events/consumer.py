"""Idempotent consumers: an event id is applied once per consumer, however often delivered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import CompiledRead, Database, utcnow
from ecosistema.platform.events.envelope import EventEnvelope
from ecosistema.platform.events.outbox import Outbox

SessionHandler = Callable[[Any, EventEnvelope], Awaitable[None]]
Wanted = Callable[[EventEnvelope], Awaitable[bool]]


class IdempotentConsumer:
    """Runs a handler and records the event id in the same transaction as its effects (an ORM
    session, or with ``driver`` a driver transaction).

    The record is written first (``INSERT ... ON CONFLICT DO NOTHING``): when the event was
    already processed nothing is inserted and the handler is skipped, in one statement; on
    PostgreSQL a concurrent delivery of the same event waits on the row until the first one
    commits or rolls back. ``wanted``, when given, is asked first, outside any transaction: an
    event it declines is one the handler would do nothing with, and is not recorded.
    """

    def __init__(
        self,
        name: str,
        db: Database,
        outbox: Outbox,
        handler: SessionHandler,
        *,
        wanted: Wanted | None = None,
        driver: bool = False,
    ) -> None:
        self.name = name
        self.driver = driver
        self.db = db
        self.table = outbox.processed
        self.handler = handler
        self.wanted = wanted
        insert = pg_insert if db.is_postgres else sqlite_insert
        self._statement = (
            insert(self.table)
            .values(
                consumer=bindparam("consumer"),
                event_id=bindparam("event_id"),
                processed_at=bindparam("at", type_=self.table.c.processed_at.type),
            )
            .on_conflict_do_nothing()
        )
        self._record: CompiledRead = db.compile_read(self._statement)

    async def __call__(self, envelope: EventEnvelope) -> None:
        if self.wanted is not None and not await self.wanted(envelope):
            return
        values = {"consumer": self.name, "event_id": envelope.id, "at": utcnow()}
        try:
            if self.driver:
                async with self.db.driver_write() as tx:
                    if await tx.execute(self._statement, **values) != 1:
                        return  # processed before: the transaction wrote nothing
                    await self.handler(tx, envelope)
                return
            record = self._record
            arguments = record.arguments(values)
            async with self.db.transaction() as session:
                conn = await session.connection()
                recorded = await conn.exec_driver_sql(record.sql, arguments)
                if recorded.rowcount != 1:
                    return  # processed before: the transaction wrote nothing
                await self.handler(session, envelope)
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
