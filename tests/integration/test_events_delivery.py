"""Delivery guarantees on every bus backend (memory, NATS JetStream, Redis Streams).

Each test runs per backend, and those with effects per database (SQLite and PostgreSQL): events
reach the consumers that asked for their type, a crash between commit and publish loses nothing,
a failing or killed consumer gets the event again, and however often an event arrives its
effect happens once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database
from ecosistema.platform.events import EventBus, EventEnvelope, Handler, OutboxRelay
from tests.integration.test_events_support import (
    BUSES,
    DATABASES,
    Buses,
    apply_credit,
    crediting,
    credits_for,
    eventually,
    grant_credit,
    ledger_database,
    outbox,
)

BROKERS = [p for p in BUSES if p.values[0] != "memory"]


@pytest.fixture(params=DATABASES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with ledger_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture(params=BUSES)
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    made = Buses(request.param)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(params=BROKERS)
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    made = Buses(request.param)
    try:
        yield made
    finally:
        await made.close()


class BrokenBus:
    """A bus whose broker is unreachable, or that dies right after the broker took the event."""

    def __init__(self, inner: EventBus | None = None) -> None:
        self.inner = inner

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        return None

    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None:
        return None

    async def publish(self, envelope: EventEnvelope) -> None:
        if self.inner is not None:
            await self.inner.publish(envelope)
        raise ConnectionError("process lost before the relay marked the event")

    async def ping(self) -> None:
        return None

    async def lag(self) -> dict[str, int]:
        return {}


def drained(bus: EventBus, consumer: str) -> Callable[[], Awaitable[bool]]:
    """A condition: the bus has nothing left for ``consumer`` to finish."""

    async def check() -> bool:
        return (await bus.lag()).get(consumer) == 0

    return check


async def test_consumers_receive_only_the_types_they_subscribed_to(buses: Buses) -> None:
    bus = await buses.new()
    seen: dict[str, list[str]] = {"grants": [], "revocations": [], "audit": []}

    def recorder(name: str) -> Handler:
        async def record(envelope: EventEnvelope) -> None:
            seen[name].append(envelope.type)

        return record

    await bus.subscribe("grants", ["CreditGranted", "CreditExpired"], recorder("grants"))
    await bus.subscribe("revocations", ["CreditRevoked"], recorder("revocations"))
    await bus.subscribe("audit", ["*"], recorder("audit"))

    for event_type in ("CreditRevoked", "CreditGranted"):
        await bus.publish(EventEnvelope(type=event_type, source="ledger", payload={}))

    async def all_arrived() -> bool:
        return len(seen["audit"]) == 2 and bool(seen["grants"]) and bool(seen["revocations"])

    await eventually(all_arrived, what="every consumer to receive its events")
    assert seen == {
        "grants": ["CreditGranted"],
        "revocations": ["CreditRevoked"],
        "audit": ["CreditRevoked", "CreditGranted"],
    }


async def test_crash_between_commit_and_publish_loses_nothing(buses: Buses, db: Database) -> None:
    event = await grant_credit(db, "acme", 500)
    assert await OutboxRelay(outbox, db, BrokenBus()).relay_once() == 0

    bus = await buses.new()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    await OutboxRelay(outbox, db, bus).drain()

    async def applied() -> bool:
        return await credits_for(db, event.id) == 1

    await eventually(applied, what="the event to reach the consumer after the restart")
    await eventually(drained(bus, consumer.name), what="the consumer to catch up")
    assert await credits_for(db, event.id) == 1
    assert await outbox.backlog(db) == 0


async def test_crash_after_publish_before_marking_delivers_again_but_applies_once(
    buses: Buses, db: Database
) -> None:
    bus = await buses.new()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    event = await grant_credit(db, "acme", 500)

    assert await OutboxRelay(outbox, db, BrokenBus(inner=bus)).relay_once() == 0
    assert await outbox.backlog(db) == 1
    await OutboxRelay(outbox, db, bus).drain()

    assert await outbox.backlog(db) == 0
    await eventually(drained(bus, consumer.name), what="both deliveries to be consumed")
    assert await credits_for(db, event.id) == 1


async def test_failing_consumer_gets_the_event_again_and_applies_it_once(
    buses: Buses, db: Database
) -> None:
    attempts: list[str] = []

    async def fails_first_time(session: AsyncSession, envelope: EventEnvelope) -> None:
        attempts.append(envelope.id)
        await apply_credit(session, envelope)
        if len(attempts) == 1:
            raise RuntimeError("failed after writing part of its effect")

    bus = await buses.new()
    consumer = crediting(db, fails_first_time)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    relay = OutboxRelay(outbox, db, bus, poll_interval=0.05, max_backoff=0.2)
    relay.start()
    try:
        event = await grant_credit(db, "acme", 500)

        async def applied() -> bool:
            return await consumer.processed(event.id)

        await eventually(applied, what="the event to be redelivered and applied")
        await eventually(drained(bus, consumer.name), what="the consumer to catch up")
    finally:
        await relay.stop()

    assert attempts == [event.id, event.id]
    assert await credits_for(db, event.id) == 1


async def test_consumer_killed_mid_handling_gets_the_event_again(
    brokers: Buses, db: Database
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def hangs(session: AsyncSession, envelope: EventEnvelope) -> None:
        await apply_credit(session, envelope)
        started.set()
        await never.wait()

    first = await brokers.new()
    await first.subscribe("ledger.crediting", ["CreditGranted"], crediting(db, hangs))
    event = await grant_credit(db, "acme", 500)
    await first.publish(event)
    async with asyncio.timeout(20):
        await started.wait()

    await first.stop()  # the handler is cut short: its transaction rolls back, nothing is acked
    assert await credits_for(db, event.id) == 0

    second = await brokers.new()
    consumer = crediting(db)
    await second.subscribe(consumer.name, ["CreditGranted"], consumer)

    async def applied() -> bool:
        return await credits_for(db, event.id) == 1

    await eventually(applied, what="another instance to receive the unacknowledged event")
    await eventually(drained(second, consumer.name), what="the consumer to catch up")
    assert await credits_for(db, event.id) == 1


async def test_same_envelope_published_twice_changes_nothing(buses: Buses, db: Database) -> None:
    bus = await buses.new()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    event = await grant_credit(db, "acme", 500)

    await bus.publish(event)
    await bus.publish(event)

    async def applied() -> bool:
        return await consumer.processed(event.id)

    await eventually(applied, what="the event to be applied")
    await eventually(drained(bus, consumer.name), what="both copies to be consumed")
    assert await credits_for(db, event.id) == 1


async def test_lag_counts_events_a_consumer_has_not_finished(brokers: Buses) -> None:
    bus = await brokers.new()
    gate = asyncio.Event()
    handled: list[str] = []

    async def slow(envelope: EventEnvelope) -> None:
        await gate.wait()
        handled.append(envelope.id)

    await bus.subscribe("ledger.slow", ["CreditGranted"], slow)
    for n in range(3):
        await bus.publish(EventEnvelope(type="CreditGranted", source="ledger", payload={"n": n}))

    async def three_behind() -> bool:
        return (await bus.lag()).get("ledger.slow") == 3

    await eventually(three_behind, what="the lag to count the three unhandled events")
    gate.set()
    await eventually(drained(bus, "ledger.slow"), what="the lag to return to zero")
    assert len(set(handled)) == 3


async def test_bus_answers_ping_once_started(buses: Buses) -> None:
    bus = await buses.new()
    await bus.ping()
