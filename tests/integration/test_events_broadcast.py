"""Broadcast subscriptions (``bus.subscribe_broadcast``) on every backend: each subscriber sees
every event published after it subscribed, none from before, and leaves nothing behind on the
broker (no NATS consumer, no Redis group) once it stops.

Each bus instance stands for one process (one gateway worker); all share one uniquely named
stream, deleted at the end.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from ecosistema.platform.events import EventBus, EventEnvelope, Handler
from ecosistema.platform.events.nats_bus import NatsBus, nats_name
from ecosistema.platform.events.redis_bus import RedisStreamsBus
from tests.conftest import NATS_URL, requires_nats
from tests.integration.test_events_support import BUSES, Buses, eventually

BROKERS = [p for p in BUSES if p.values[0] != "memory"]


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


def event(event_type: str, n: int) -> EventEnvelope:
    return EventEnvelope(type=event_type, source="catalog", payload={"n": n})


def recorder(seen: list[tuple[str, int]]) -> Handler:
    async def record(envelope: EventEnvelope) -> None:
        seen.append((envelope.type, int(envelope.payload["n"])))

    return record


async def consumers_on_broker(bus: EventBus) -> list[str]:
    """The consumers (NATS) or consumer groups (Redis) the broker keeps for the stream."""
    if isinstance(bus, NatsBus):
        infos = await bus.jetstream.consumers_info(bus.stream)
        return [str(info.name) for info in infos]
    assert isinstance(bus, RedisStreamsBus)
    if not await bus.redis.exists(bus.key):
        return []
    groups = await bus.redis.xinfo_groups(bus.key)  # type: ignore[no-untyped-call]
    return [str(g["name"]) for g in groups]


async def test_a_broadcast_subscriber_sees_only_events_published_after_it_subscribed(
    buses: Buses,
) -> None:
    publisher = await buses.new()
    await publisher.publish(event("ProductUpdated", 1))
    await publisher.publish(event("ProductUpdated", 2))

    # In process, the subscriber lives on the bus that publishes; elsewhere, in another process.
    listener = publisher if buses.kind == "memory" else await buses.new()
    seen: list[tuple[str, int]] = []
    await listener.subscribe_broadcast(["ProductUpdated"], recorder(seen))
    await publisher.publish(event("ProductUpdated", 3))
    await publisher.publish(event("ProductUpdated", 4))

    async def both_arrived() -> bool:
        return len(seen) >= 2

    await eventually(both_arrived, what="the events published after subscribing")
    assert seen == [("ProductUpdated", 3), ("ProductUpdated", 4)]


async def test_two_broadcast_subscribers_both_receive_every_event_of_their_types(
    buses: Buses,
) -> None:
    publisher = await buses.new()
    first, second = [], []  # type: list[tuple[str, int]], list[tuple[str, int]]
    if buses.kind == "memory":
        # In process, every subscriber lives on the one bus that publishes.
        await publisher.subscribe_broadcast(["ProductUpdated", "StockChanged"], recorder(first))
        await publisher.subscribe_broadcast(["*"], recorder(second))
    else:
        one, two = await buses.new(), await buses.new()
        await one.subscribe_broadcast(["ProductUpdated", "StockChanged"], recorder(first))
        await two.subscribe_broadcast(["*"], recorder(second))
    sent = [event("ProductUpdated", 1), event("OrderPlaced", 2), event("StockChanged", 3)]
    for envelope in sent:
        await publisher.publish(envelope)

    async def all_arrived() -> bool:
        return len(first) >= 2 and len(second) >= 3

    await eventually(all_arrived, what="every subscriber to receive every event")
    assert first == [("ProductUpdated", 1), ("StockChanged", 3)]
    assert second == [("ProductUpdated", 1), ("OrderPlaced", 2), ("StockChanged", 3)]


async def test_a_broadcast_handler_that_fails_does_not_fail_the_publish_or_stop_delivery(
    buses: Buses,
) -> None:
    publisher = await buses.new()
    listener = publisher if buses.kind == "memory" else await buses.new()
    seen: list[tuple[str, int]] = []

    async def flaky(envelope: EventEnvelope) -> None:
        if envelope.payload["n"] == 1:
            raise RuntimeError("purge failed")
        seen.append((envelope.type, int(envelope.payload["n"])))

    await listener.subscribe_broadcast(["ProductUpdated"], flaky)
    await publisher.publish(event("ProductUpdated", 1))
    await publisher.publish(event("ProductUpdated", 2))

    async def second_arrived() -> bool:
        return bool(seen)

    await eventually(second_arrived, what="the event after the failed one")
    assert seen == [("ProductUpdated", 2)]


async def test_broadcast_subscribers_leave_no_consumer_on_the_broker_after_stop(
    brokers: Buses,
) -> None:
    publisher = await brokers.new()
    durable = await brokers.new()
    await durable.subscribe("catalog.indexer", ["ProductUpdated"], recorder([]))
    before = await consumers_on_broker(publisher)
    assert len(before) == 1

    worker = await brokers.new()
    seen: list[tuple[str, int]] = []
    await worker.subscribe_broadcast(["ProductUpdated"], recorder(seen))
    await worker.subscribe_broadcast(["StockChanged"], recorder(seen))
    await publisher.publish(event("ProductUpdated", 1))

    async def arrived() -> bool:
        return bool(seen)

    await eventually(arrived, what="the broadcast delivery")
    during = await consumers_on_broker(publisher)
    if brokers.kind == "nats":
        # Two ephemeral consumers while it runs: server-named, none durable.
        infos = await publisher.jetstream.consumers_info(publisher.stream)  # type: ignore[attr-defined]
        durable_names = [i.config.durable_name for i in infos]
        assert sorted(d or "" for d in durable_names) == ["", "", nats_name("catalog.indexer")]
        assert len(during) == 3
    else:
        assert during == before  # XREAD without a group creates nothing

    await worker.stop()
    assert await consumers_on_broker(publisher) == before
    assert await durable.lag() == {"catalog.indexer": 0}


_DYING_WORKER = """
import asyncio, sys
from ecosistema.platform.events.nats_bus import NatsBus

async def main() -> None:
    bus = NatsBus(sys.argv[1], stream=sys.argv[2], inactive_threshold=1.0, fetch_timeout=0.5)
    await bus.start()
    async def purge(envelope): pass
    await bus.subscribe_broadcast(["ProductUpdated"], purge)
    print("subscribed", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@requires_nats
async def test_a_killed_broadcast_subscriber_leaves_no_nats_consumer_behind() -> None:
    made = Buses("nats")
    try:
        observer = await made.new()
        assert isinstance(observer, NatsBus)
        worker = subprocess.Popen(
            [sys.executable, "-c", _DYING_WORKER, NATS_URL, made.stream],
            stdout=subprocess.PIPE,
        )
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == b"subscribed"
            assert len(await consumers_on_broker(observer)) == 1
        finally:
            worker.kill()  # no stop(): the consumer is not deleted by its owner
            worker.wait()

        async def removed_by_the_server() -> bool:
            return await consumers_on_broker(observer) == []

        await eventually(removed_by_the_server, what="NATS to remove the inactive consumer")
    finally:
        await made.close()


@requires_nats
async def test_a_stream_create_the_server_fails_once_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server can fail a create that races another stream's deletion ("error creating
    store for stream"): starting the bus tries again instead of failing the process's start."""
    from nats.js import JetStreamContext
    from nats.js.errors import ServerError

    add_stream = JetStreamContext.add_stream
    failures = [ServerError(code=500, err_code=10049, description="error creating store")]

    async def flaky_add_stream(self: JetStreamContext, *args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return await add_stream(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(JetStreamContext, "add_stream", flaky_add_stream)
    made = Buses("nats")
    try:
        bus = await made.new()
        assert failures == []
        seen: list[tuple[str, int]] = []
        await bus.subscribe("observer", ("Tick",), recorder(seen))
        await bus.publish(event("Tick", 1))

        async def delivered() -> bool:
            return seen == [("Tick", 1)]

        await eventually(delivered, what="the event on the stream created on a second try")
    finally:
        await made.close()
