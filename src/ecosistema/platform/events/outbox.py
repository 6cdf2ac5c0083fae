"""The transactional outbox: events are rows written with the state change, then relayed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from sqlalchemy import JSON, Column, Index, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database, UTCDateTime, utcnow
from ecosistema.platform.events.bus import EventBus
from ecosistema.platform.events.envelope import EventEnvelope

log = structlog.get_logger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("position", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(32), nullable=False, unique=True),
        Column("type", String(100), nullable=False),
        Column("version", Integer, nullable=False),
        Column("source", String(50), nullable=False),
        Column("correlation_id", String(64)),
        Column("occurred_at", UTCDateTime(), nullable=False),
        Column("payload", JSON, nullable=False),
        Column("published_at", UTCDateTime()),
        Column("attempts", Integer, nullable=False, default=0),
        Index("ix_outbox_unpublished", "published_at", "position"),
    )


def processed_events_table(metadata: MetaData) -> Table:
    return Table(
        "processed_events",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(32), primary_key=True),
        Column("processed_at", UTCDateTime(), nullable=False),
    )


class Outbox:
    """A service's outbox: ``add`` inside the use case's transaction, the relay does the rest."""

    def __init__(self, source: str, metadata: MetaData) -> None:
        self.source = source
        self.table = outbox_table(metadata)
        self.processed = processed_events_table(metadata)
        self.wakeup = asyncio.Event()

    async def add(
        self,
        session: AsyncSession,
        type: str,
        payload: dict[str, Any],
        *,
        version: int = 1,
        correlation_id: str | None = None,
    ) -> EventEnvelope:
        """Record an event in the caller's transaction; it is published only if that commits."""
        if correlation_id is None:
            from ecosistema.platform.telemetry import current_request_id

            correlation_id = current_request_id()
        envelope = EventEnvelope(
            type=type,
            version=version,
            source=self.source,
            correlation_id=correlation_id,
            payload=payload,
        )
        await session.execute(
            self.table.insert().values(
                event_id=envelope.id,
                type=envelope.type,
                version=envelope.version,
                source=envelope.source,
                correlation_id=envelope.correlation_id,
                occurred_at=envelope.occurred_at,
                payload=envelope.model_dump(mode="json")["payload"],
                attempts=0,
            )
        )
        from sqlalchemy import event as sa_event

        sa_event.listen(session.sync_session, "after_commit", self._wake, once=True)
        return envelope

    def _wake(self, _session: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.wakeup.set()

    async def backlog(self, db: Database) -> int:
        """How many events are written but not yet published."""
        async with db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(self.table).where(self.table.c.published_at.is_(None))
            )
        return int(count or 0)


class OutboxRelay:
    """Publishes unpublished outbox rows in order; marks each one only after the bus took it."""

    def __init__(
        self,
        outbox: Outbox,
        db: Database,
        bus: EventBus,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
    ) -> None:
        self.outbox = outbox
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published."""
        t = self.outbox.table
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(t)
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.position)
                    .limit(self.batch_size)
                )
            ).mappings().all()
        published = 0
        for row in rows:
            envelope = EventEnvelope(
                id=row["event_id"],
                type=row["type"],
                version=row["version"],
                source=row["source"],
                correlation_id=row["correlation_id"],
                occurred_at=row["occurred_at"],
                payload=row["payload"],
            )
            try:
                await self.bus.publish(envelope)
            except Exception as exc:
                log.warning("outbox_publish_failed", event_id=envelope.id, error=repr(exc))
                async with self.db.transaction() as session:
                    await session.execute(
                        update(t).where(t.c.position == row["position"]).values(attempts=t.c.attempts + 1)
                    )
                break  # keep order: retry this row before any later one
            async with self.db.transaction() as session:
                await session.execute(
                    update(t).where(t.c.position == row["position"]).values(published_at=utcnow())
                )
            published += 1
        return published

    async def drain(self, timeout: float = 10.0) -> None:
        """Relay until the outbox is empty (tests and shutdown)."""
        async with asyncio.timeout(timeout):
            while await self.relay_once():
                pass

    async def _run(self) -> None:
        while not self._stopping:
            try:
                n = await self.relay_once()
            except Exception as exc:
                log.warning("outbox_relay_error", service=self.outbox.source, error=repr(exc))
                n = 0
            if n >= self.batch_size:
                continue
            self.outbox.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self.outbox.wakeup.wait()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.outbox.source}")

    async def stop(self) -> None:
        self._stopping = True
        self.outbox.wakeup.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
