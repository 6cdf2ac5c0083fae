"""The transactional outbox: events are rows written with the state change, then relayed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from pydantic_core import to_jsonable_python
from sqlalchemy import (
    JSON,
    Column,
    CursorResult,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import (
    CompiledRead,
    Database,
    Statements,
    UTCDateTime,
    as_utc_datetime,
    statements,
    utcnow,
)
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
        # Outboxes live at module level and outlast event loops, so each relay brings its own
        # loop-bound event and the outbox only keeps a weak reference to it.
        self._watchers: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()
        t = self.table
        # One INSERT, compiled once per dialect and run on the transaction's connection: an
        # event costs a statement, not a statement's construction, compilation and ORM execution.
        self._insert = t.insert().values(
            event_id=bindparam("event_id"),
            type=bindparam("type"),
            version=bindparam("version"),
            source=bindparam("source"),
            correlation_id=bindparam("correlation_id", type_=t.c.correlation_id.type),
            occurred_at=bindparam("occurred_at", type_=t.c.occurred_at.type),
            payload=bindparam("payload", type_=t.c.payload.type),
            attempts=bindparam("attempts"),
        )

    async def add(
        self,
        session: AsyncSession | Statements,
        type: str,
        payload: dict[str, Any],
        *,
        version: int = 1,
        correlation_id: str | None = None,
    ) -> EventEnvelope:
        """Record an event in the caller's transaction (an ORM session or a driver transaction);
        it is published only if that commits."""
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
        values = {
            "event_id": envelope.id,
            "type": envelope.type,
            "version": envelope.version,
            "source": envelope.source,
            "correlation_id": envelope.correlation_id,
            "occurred_at": envelope.occurred_at,
            "payload": to_jsonable_python(envelope.payload),
            "attempts": 0,
        }
        tx = statements(session)
        await tx.execute(self._insert, **values)
        # One wake-up per transaction, however many events it adds.
        tx.after_commit(self._wake_watchers)
        return envelope

    def watch(self, wakeup: asyncio.Event) -> None:
        """Have ``wakeup`` set whenever a transaction that added an event commits."""
        self._watchers.add(wakeup)

    def unwatch(self, wakeup: asyncio.Event) -> None:
        """Stop setting ``wakeup`` on commits."""
        self._watchers.discard(wakeup)

    def _wake_watchers(self) -> None:
        for wakeup in list(self._watchers):
            with contextlib.suppress(RuntimeError):  # its loop has closed
                wakeup.set()

    async def backlog(self, db: Database) -> int:
        """How many events are written but not yet published."""
        async with db.read() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(self.table)
                .where(self.table.c.published_at.is_(None))
            )
        return int(count or 0)

    async def purge_published(self, db: Database, older_than: timedelta) -> int:
        """Delete events published longer than ``older_than`` ago; returns how many."""
        t = self.table
        cutoff = utcnow() - older_than
        async with db.transaction() as session:
            result = await session.execute(
                delete(t).where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
            )
        return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _row_columns(t: Table) -> tuple[Any, ...]:
    c = t.c
    return (
        *(c.position, c.event_id, c.type, c.version),
        *(c.source, c.correlation_id, c.occurred_at, c.payload),
    )


def _row_mapping(row: Sequence[Any]) -> dict[str, Any]:
    """A row of the relay's driver read, with the values the columns' types would give."""
    position, event_id, type_, version, source, correlation_id, occurred_at, payload = row
    if isinstance(payload, str | bytes):
        payload = json.loads(payload)
    return {
        "position": position,
        "event_id": event_id,
        "type": type_,
        "version": version,
        "source": source,
        "correlation_id": correlation_id,
        "occurred_at": as_utc_datetime(occurred_at),
        "payload": payload,
    }


@dataclass(frozen=True)
class _RelayStatements:
    """The single-writer relay's statements, compiled once for its database."""

    pending: CompiledRead
    mark: CompiledRead
    attempt: CompiledRead


@dataclass(frozen=True)
class _Batch:
    published: int = 0
    failed: bool = False
    contended: bool = False


class OutboxRelay:
    """Publishes unpublished outbox rows in order; marks each one only after the bus took it.

    On PostgreSQL several replicas of a service may run a relay on the same outbox. Each batch is
    one transaction that takes a per-outbox advisory lock, so a single relay publishes at a time
    and events leave in position order, and locks its rows (``FOR UPDATE SKIP LOCKED``) while it
    publishes and marks them. A relay that dies mid-batch rolls back, and the next one publishes
    the batch again: at least once, never lost. A commit wakes only the relays of its own
    process, so a relay woken by one waits for the lock when another replica holds it (whose
    batch may have been read before that commit) instead of leaving the event to a poll.

    On SQLite one process writes, so a batch is read on the driver and published outside any
    write transaction (an in-process handler may then write to the same database while the relay
    runs), and the rows published are marked in one short write afterwards.
    """

    def __init__(
        self,
        outbox: Outbox,
        db: Database,
        bus: EventBus,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self._compiled: _RelayStatements | None = None
        # SQLite: rows published by this relay and not yet marked, and the last one published.
        self._unmarked: list[int] = []
        self._unmarked_since = 0.0
        self._published_through = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = False
        name = f"{db.schema or ''}.{self.outbox.table.name}"
        digest = hashlib.sha256(name.encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published."""
        return (await self._relay_batch()).published

    async def _relay_batch(self, *, defer_marks: bool = False, wait: bool = False) -> _Batch:
        if self.db.is_postgres:
            return await self._relay_locked(wait=wait)
        return await self._relay_single_writer(defer_marks=defer_marks)

    async def _relay_locked(self, *, wait: bool) -> _Batch:
        """One batch under the outbox's lock; with ``wait``, after the replica holding it (if
        any) commits its batch, else not at all when another replica holds it."""
        t = self.outbox.table
        async with self.db.transaction() as session:
            if wait:
                await session.execute(select(func.pg_advisory_xact_lock(self._lock_key)))
            elif not await session.scalar(select(func.pg_try_advisory_xact_lock(self._lock_key))):
                return _Batch(contended=True)
            rows = (
                (
                    await session.execute(
                        select(t)
                        .where(t.c.published_at.is_(None))
                        .order_by(t.c.position)
                        .limit(self.batch_size)
                        .with_for_update(skip_locked=True)
                    )
                )
                .mappings()
                .all()
            )
            published, failed = await self._publish(rows)
            if published:
                await session.execute(
                    update(t).where(t.c.position.in_(published)).values(published_at=utcnow())
                )
            if failed is not None:
                await session.execute(
                    update(t).where(t.c.position == failed).values(attempts=t.c.attempts + 1)
                )
        return _Batch(published=len(published), failed=failed is not None)

    async def _relay_single_writer(self, *, defer_marks: bool) -> _Batch:
        # Rows are read on the driver (no transaction) past the last one this relay published
        # and has not marked yet, published in order, and marked in one short write: at once, or
        # (the background relay) gathered over up to a poll interval. A crash before the marks
        # only publishes those rows again, which idempotent consumers absorb. Positions grow in
        # commit order here, since SQLite admits one writer at a time, so no row can appear
        # behind one published and not marked.
        statements = self._statements()
        found = await self.db.fetch(
            statements.pending, after=self._published_through, limit=self.batch_size
        )
        if not found:
            if not defer_marks:
                await self.flush_marks()
            return _Batch()
        rows = [_row_mapping(row) for row in found]
        published, failed = await self._publish(rows)
        if published:
            if not self._unmarked:
                self._unmarked_since = asyncio.get_running_loop().time()
            self._unmarked.extend(published)
            self._published_through = published[-1]
        if failed is not None:
            attempt = statements.attempt
            async with self.db.write() as conn:
                await conn.exec_driver_sql(attempt.sql, attempt.arguments({"p": failed}))
        if not defer_marks or len(self._unmarked) >= self.batch_size:
            await self.flush_marks()
        return _Batch(published=len(published), failed=failed is not None)

    async def flush_marks(self) -> None:
        """Mark published the rows this relay published and has not marked yet."""
        if not self._unmarked:
            return
        positions, self._unmarked = self._unmarked, []
        mark, now = self._statements().mark, utcnow()
        try:
            async with self.db.write() as conn:
                await conn.exec_driver_sql(
                    mark.sql, [mark.arguments({"at": now, "p": p}) for p in positions]
                )
        except BaseException:
            self._unmarked = positions + self._unmarked
            raise
        if not self._unmarked:
            # Every row published is marked: reading unmarked rows needs no lower bound. (SQLite
            # may reuse the positions of rows purged from the top of the table.)
            self._published_through = 0

    def _marks_due(self) -> float | None:
        """Seconds until the gathered marks must be written; ``None`` when there are none."""
        if not self._unmarked:
            return None
        elapsed = asyncio.get_running_loop().time() - self._unmarked_since
        return max(0.0, self.poll_interval - elapsed)

    def _statements(self) -> _RelayStatements:
        found = self._compiled
        if found is None:
            t = self.outbox.table
            pending = (
                select(*_row_columns(t))
                .where(t.c.published_at.is_(None), t.c.position > bindparam("after"))
                .order_by(t.c.position)
                .limit(bindparam("limit"))
            )
            mark = (
                update(t)
                .where(t.c.position == bindparam("p"))
                .values(published_at=bindparam("at", type_=t.c.published_at.type))
            )
            attempt = (
                update(t).where(t.c.position == bindparam("p")).values(attempts=t.c.attempts + 1)
            )
            found = self._compiled = _RelayStatements(
                self.db.compile_read(pending),
                self.db.compile_read(mark),
                self.db.compile_read(attempt),
            )
        return found

    async def _publish(self, rows: Sequence[Mapping[Any, Any]]) -> tuple[list[int], int | None]:
        """Publish rows in order until one fails: the positions published, and the failed one."""
        published: list[int] = []
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
                return published, row["position"]  # keep order: this row goes before any later
            published.append(row["position"])
        return published, None

    async def drain(self, timeout: float = 10.0) -> None:
        """Relay until the outbox is empty or publishing fails (tests and shutdown)."""
        async with asyncio.timeout(timeout):
            while True:
                # Behind any batch another replica is publishing, whose rows it marks.
                batch = await self._relay_batch(wait=True)
                if batch.failed or not batch.published:
                    return

    async def _run(self) -> None:
        assert self._wakeup is not None
        failures = 0
        while not self._stopping:
            # Cleared before reading, so a commit that lands while a batch is being published
            # wakes the next round at once instead of waiting for the poll interval.
            woken = self._wakeup.is_set()
            self._wakeup.clear()
            try:
                # Woken by a commit of this process: another replica's batch may have been read
                # before it, so wait for that batch rather than leave the event to a poll.
                batch = await self._relay_batch(defer_marks=True, wait=woken)
                if self._marks_due() == 0.0:
                    await self.flush_marks()
            except Exception as exc:
                log.warning("outbox_relay_error", service=self.outbox.source, error=repr(exc))
                batch = _Batch(failed=True)
            failures = failures + 1 if batch.failed else 0
            if batch.published >= self.batch_size:
                continue
            if failures:
                # The bus or database is in trouble: back off, and ignore new commits meanwhile.
                await asyncio.sleep(min(self.max_backoff, self.poll_interval * 2**failures))
                continue
            due = self._marks_due()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval if due is None else due):
                    await self._wakeup.wait()

    def start(self) -> None:
        """Relay in the background, woken by commits that add events and by a poll interval."""
        self._stopping = False
        self._wakeup = asyncio.Event()
        self.outbox.watch(self._wakeup)
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.outbox.source}")

    async def stop(self) -> None:
        """Stop relaying; unpublished rows stay for the next relay."""
        self._stopping = True
        if self._wakeup is not None:
            self.outbox.unwatch(self._wakeup)
            self._wakeup.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush_marks()
        except Exception as exc:  # the rows stay unmarked and are published again later
            log.warning("outbox_marks_not_written", service=self.outbox.source, error=repr(exc))
