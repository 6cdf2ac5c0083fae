"""The transactional outbox and its relay, on SQLite and PostgreSQL, with the in-process bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database, utcnow
from ecosistema.platform.events import EventEnvelope, IdempotentConsumer, OutboxRelay
from ecosistema.platform.events.bus import MemoryBus
from tests.conftest import PG_URL, requires_postgres
from tests.integration.test_events_support import (
    DATABASES,
    apply_credit,
    crediting,
    credits_for,
    eventually,
    grant_credit,
    grants,
    ledger_database,
    outbox,
    outbox_row,
)


@pytest.fixture(params=DATABASES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with ledger_database(request.param, tmp_path) as database:
        yield database


class RecordingBus(MemoryBus):
    """The in-process bus, remembering what it published and failing on chosen event ids."""

    def __init__(self, published: list[str] | None = None) -> None:
        super().__init__()
        self.published = published if published is not None else []
        self.refuse: set[str] = set()

    async def publish(self, envelope: EventEnvelope) -> None:
        if envelope.id in self.refuse:
            raise ConnectionError("broker unavailable")
        await super().publish(envelope)
        self.published.append(envelope.id)


async def test_rolled_back_state_change_leaves_no_event(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await session.execute(grants.insert().values(account="acme", amount=500))
            await outbox.add(session, "CreditGranted", {"account": "acme", "amount": 500})
            raise RuntimeError("the use case failed after writing its event")

    assert await outbox.backlog(db) == 0
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(grants)) == 0

    committed = await grant_credit(db, "acme", 500)
    assert await outbox.backlog(db) == 1
    row = await outbox_row(db, committed.id)
    assert row is not None
    assert row["published_at"] is None
    assert row["payload"] == {"account": "acme", "amount": 500}


async def test_failing_consumer_leaves_the_event_unpublished_until_it_succeeds(
    db: Database,
) -> None:
    failures = [RuntimeError("downstream unavailable")]

    async def flaky(session: AsyncSession, envelope: EventEnvelope) -> None:
        if failures:
            raise failures.pop()

    bus = MemoryBus()
    await bus.subscribe("ledger.flaky", ["CreditGranted"], crediting(db, flaky, "ledger.flaky"))
    relay = OutboxRelay(outbox, db, bus)
    event = await grant_credit(db, "acme", 500)

    assert await relay.relay_once() == 0
    row = await outbox_row(db, event.id)
    assert row is not None
    assert row["published_at"] is None
    assert row["attempts"] == 1

    assert await relay.relay_once() == 1
    row = await outbox_row(db, event.id)
    assert row is not None
    assert row["published_at"] is not None
    assert await outbox.backlog(db) == 0


async def test_relay_publishes_events_in_commit_order(db: Database) -> None:
    bus = RecordingBus()
    events = [await grant_credit(db, f"account-{i}", 100 + i) for i in range(7)]

    await OutboxRelay(outbox, db, bus, batch_size=3).drain()

    assert bus.published == [e.id for e in events]


async def test_relay_does_not_publish_past_an_event_it_could_not_publish(db: Database) -> None:
    bus = RecordingBus()
    first, second, third = [await grant_credit(db, "acme", n) for n in (1, 2, 3)]
    bus.refuse.add(second.id)
    relay = OutboxRelay(outbox, db, bus)

    await relay.drain()
    assert bus.published == [first.id]
    assert await outbox.backlog(db) == 2

    bus.refuse.clear()
    await relay.drain()
    assert bus.published == [first.id, second.id, third.id]


async def test_relay_running_in_background_publishes_what_a_transaction_commits(
    db: Database,
) -> None:
    bus = MemoryBus()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    relay = OutboxRelay(outbox, db, bus, poll_interval=0.2)
    relay.start()
    try:
        event = await grant_credit(db, "acme", 500)

        async def applied() -> bool:
            return await credits_for(db, event.id) == 1

        await eventually(applied, what="the background relay to deliver the event")
        await eventually(lambda: _empty(db), what="the outbox to be marked published")
    finally:
        await relay.stop()


async def test_commit_while_the_relay_publishes_wakes_it_again_without_the_poll(
    db: Database,
) -> None:
    bus = MemoryBus()
    delivered: list[str] = []

    async def chain(envelope: EventEnvelope) -> None:
        delivered.append(envelope.payload["account"])
        if envelope.payload["account"] == "first":
            # Commits a second event while the relay is still publishing the first one.
            await grant_credit(db, "second", 2)

    await bus.subscribe("ledger.chain", ["CreditGranted"], chain)
    # A poll interval no test waits out: only the commit signal can deliver the second event.
    relay = OutboxRelay(outbox, db, bus, poll_interval=3600)
    relay.start()
    try:
        await grant_credit(db, "first", 1)

        async def both() -> bool:
            return delivered == ["first", "second"]

        await eventually(both, what="the relay to be woken by the commit made during its batch")
    finally:
        await relay.stop()


async def test_background_relay_publishes_each_event_once_and_marks_them_by_its_stop(
    db: Database,
) -> None:
    bus = RecordingBus()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    relay = OutboxRelay(outbox, db, bus, poll_interval=3600)
    relay.start()
    try:
        events = []
        for amount in (1, 2, 3):
            events.append(await grant_credit(db, "acme", amount))

            async def delivered(count: int = len(events)) -> bool:
                return len(bus.published) == count

            await eventually(delivered, what="the relay to publish the new event")
    finally:
        await relay.stop()

    assert bus.published == [e.id for e in events]
    assert await outbox.backlog(db) == 0


async def test_rows_a_stopped_relay_published_without_marking_are_published_again_once(
    db: Database,
) -> None:
    bus = RecordingBus()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    crashed = OutboxRelay(outbox, db, bus, poll_interval=3600)
    crashed.start()
    event = await grant_credit(db, "acme", 500)

    async def delivered() -> bool:
        return bus.published == [event.id]

    await eventually(delivered, what="the relay to publish the event")
    assert crashed._task is not None
    crashed._task.cancel()  # dies before writing its marks
    with contextlib.suppress(asyncio.CancelledError):
        await crashed._task

    await OutboxRelay(outbox, db, bus).drain()

    assert await credits_for(db, event.id) == 1
    assert await outbox.backlog(db) == 0


async def test_consumer_skips_events_its_filter_declines_and_records_nothing(
    db: Database,
) -> None:
    small, large = await grant_credit(db, "acme", 5), await grant_credit(db, "acme", 5000)

    async def large_only(envelope: EventEnvelope) -> bool:
        return int(envelope.payload["amount"]) > 1000

    consumer = IdempotentConsumer("ledger.large", db, outbox, apply_credit, wanted=large_only)
    for event in (small, large, large):
        await consumer(event)

    assert await credits_for(db, small.id) == 0
    assert not await consumer.processed(small.id)
    assert await credits_for(db, large.id) == 1
    assert await consumer.processed(large.id)


async def _empty(db: Database) -> bool:
    return await outbox.backlog(db) == 0


async def test_new_relay_publishes_what_a_crashed_one_left_behind(db: Database) -> None:
    event = await grant_credit(db, "acme", 500)
    broken = RecordingBus()
    broken.refuse.add(event.id)
    assert await OutboxRelay(outbox, db, broken).relay_once() == 0

    restarted = MemoryBus()
    consumer = crediting(db)
    await restarted.subscribe(consumer.name, ["CreditGranted"], consumer)
    await OutboxRelay(outbox, db, restarted).drain()

    assert await credits_for(db, event.id) == 1
    assert await outbox.backlog(db) == 0


async def test_purge_removes_only_events_published_before_the_cutoff(db: Database) -> None:
    old, recent, pending = [await grant_credit(db, "acme", n) for n in (1, 2, 3)]
    bus = RecordingBus()
    bus.refuse.add(pending.id)
    await OutboxRelay(outbox, db, bus).drain()
    async with db.transaction() as session:
        t = outbox.table
        await session.execute(
            update(t)
            .where(t.c.event_id == old.id)
            .values(published_at=utcnow() - timedelta(days=8))
        )

    assert await outbox.purge_published(db, timedelta(days=7)) == 1

    assert await outbox_row(db, old.id) is None
    assert await outbox_row(db, recent.id) is not None
    assert await outbox_row(db, pending.id) is not None


async def test_same_event_delivered_twice_is_applied_once(db: Database) -> None:
    event = await grant_credit(db, "acme", 500)
    consumer = crediting(db)

    await consumer(event)
    await consumer(event)

    assert await credits_for(db, event.id) == 1
    assert await consumer.processed(event.id)


async def test_concurrent_deliveries_of_one_event_apply_it_once(db: Database) -> None:
    event = await grant_credit(db, "acme", 500)
    consumer = crediting(db)

    await asyncio.gather(*(consumer(event) for _ in range(4)))

    assert await credits_for(db, event.id) == 1


async def test_a_handlers_own_integrity_error_is_not_taken_for_a_duplicate(db: Database) -> None:
    async def clashing(session: AsyncSession, envelope: EventEnvelope) -> None:
        await session.execute(grants.insert().values(id=1, account="x", amount=1))
        await session.execute(grants.insert().values(id=1, account="x", amount=1))

    event = await grant_credit(db, "acme", 500)
    consumer = crediting(db, clashing, "ledger.clashing")

    with pytest.raises(IntegrityError):
        await consumer(event)
    assert not await consumer.processed(event.id)


@requires_postgres
async def test_two_relays_on_one_postgres_outbox_publish_each_event_once_in_order(
    tmp_path: Path,
) -> None:
    async with ledger_database("postgresql", tmp_path) as db:
        assert db.schema is not None
        replica = Database("ledger", PG_URL, schema_prefix=db.schema.removesuffix("ledger"))
        try:
            events = [await grant_credit(db, f"account-{i}", i) for i in range(40)]
            published: list[str] = []
            relays = [
                OutboxRelay(outbox, database, RecordingBus(published), batch_size=5)
                for database in (db, replica)
            ]

            await asyncio.gather(*(relay.drain() for relay in relays))

            assert published == [e.id for e in events]
            assert await outbox.backlog(db) == 0
        finally:
            await replica.dispose()
