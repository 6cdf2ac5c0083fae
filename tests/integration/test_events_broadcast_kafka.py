"""Broadcast subscriptions on Kafka, against a real broker (see ``test_kafka_bus`` for which):
every subscriber sees every event published after it subscribed, none from before, and joins
no consumer group, so the broker keeps nothing for it."""

from __future__ import annotations

from ecosistema.platform.events.kafka_bus import KafkaBus
from tests.integration.test_events_broadcast import event, recorder
from tests.integration.test_events_support import eventually
from tests.integration.test_kafka_bus import KafkaBuses, buses, kafka_url

__all__ = ["buses", "kafka_url"]  # fixtures


async def groups_on_broker(bus: KafkaBus) -> list[str]:
    """The consumer groups of this topic's buses the broker knows."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bus.bootstrap)
    await admin.start()
    try:
        listed = await admin.list_consumer_groups()
    finally:
        await admin.close()
    return sorted(str(g[0]) for g in listed if str(g[0]).startswith(bus.group_prefix))


async def test_kafka_broadcast_subscribers_see_only_later_events_and_each_sees_all(
    buses: KafkaBuses,
) -> None:
    publisher = await buses.new()
    await publisher.publish(event("ProductUpdated", 1))
    one, two = await buses.new(), await buses.new()
    first: list[tuple[str, int]] = []
    second: list[tuple[str, int]] = []
    await one.subscribe_broadcast(["ProductUpdated"], recorder(first))
    await two.subscribe_broadcast(["*"], recorder(second))
    for envelope in (event("ProductUpdated", 2), event("StockChanged", 3)):
        await publisher.publish(envelope)

    async def all_arrived() -> bool:
        return len(first) >= 1 and len(second) >= 2

    await eventually(all_arrived, timeout=30, what="every subscriber to receive later events")
    assert first == [("ProductUpdated", 2)]
    assert sorted(second) == [("ProductUpdated", 2), ("StockChanged", 3)]


async def test_kafka_broadcast_subscriber_joins_no_consumer_group(buses: KafkaBuses) -> None:
    publisher = await buses.new()
    durable, worker = await buses.new(), await buses.new()
    indexed: list[tuple[str, int]] = []
    purged: list[tuple[str, int]] = []
    await durable.subscribe("indexer", ["ProductUpdated"], recorder(indexed))
    await worker.subscribe_broadcast(["ProductUpdated"], recorder(purged))
    await publisher.publish(event("ProductUpdated", 1))

    async def both_delivered() -> bool:
        return bool(indexed) and bool(purged)

    await eventually(both_delivered, timeout=30, what="durable and broadcast deliveries")
    expected = [durable.group("indexer")]

    async def only_the_durable_group() -> bool:
        return await groups_on_broker(publisher) == expected

    # The broker lists the durable consumer's group, and no other for this topic's buses.
    await eventually(only_the_durable_group, timeout=30, what="the groups the broker keeps")
    assert await worker.lag() == {}
    await worker.stop()
    assert await groups_on_broker(publisher) == expected
