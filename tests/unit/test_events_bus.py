"""The envelope, the in-process bus and backend selection: no network, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ecosistema.platform.events import EventEnvelope, create_bus
from ecosistema.platform.events.bus import MemoryBus, retry_delay
from ecosistema.platform.events.nats_bus import NatsBus, nats_name
from ecosistema.platform.events.redis_bus import RedisStreamsBus


def test_envelope_survives_a_round_trip_through_bytes() -> None:
    envelope = EventEnvelope(
        type="OrderPlaced",
        version=2,
        occurred_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        source="orders",
        correlation_id="req-42",
        payload={"order_id": "o1", "total": {"amount": 1999, "currency": "EUR"}},
    )

    assert EventEnvelope.from_bytes(envelope.to_bytes()) == envelope


def test_envelope_gets_a_fresh_id_and_an_aware_timestamp_by_default() -> None:
    first = EventEnvelope(type="OrderPlaced", source="orders")
    second = EventEnvelope(type="OrderPlaced", source="orders")

    assert first.id != second.id
    assert first.occurred_at.tzinfo is not None
    assert first.version == 1
    assert first.payload == {}


async def test_memory_bus_delivers_each_event_to_the_consumers_of_its_type() -> None:
    bus = MemoryBus()
    seen: dict[str, list[str]] = {"orders": [], "payments": [], "audit": [], "all": []}

    async def record_orders(e: EventEnvelope) -> None:
        seen["orders"].append(e.type)

    async def record_payments(e: EventEnvelope) -> None:
        seen["payments"].append(e.type)

    async def record_audit(e: EventEnvelope) -> None:
        seen["audit"].append(e.type)

    async def record_all(e: EventEnvelope) -> None:
        seen["all"].append(e.type)

    await bus.subscribe("orders.on_payment", ["PaymentSucceeded", "PaymentFailed"], record_orders)
    await bus.subscribe("payments.on_order", ["OrderPlaced"], record_payments)
    await bus.subscribe("analytics.audit", ["*"], record_audit)
    await bus.subscribe("analytics.lake", [], record_all)

    await bus.publish(EventEnvelope(type="OrderPlaced", source="orders"))
    await bus.publish(EventEnvelope(type="PaymentSucceeded", source="payments"))

    assert seen == {
        "orders": ["PaymentSucceeded"],
        "payments": ["OrderPlaced"],
        "audit": ["OrderPlaced", "PaymentSucceeded"],
        "all": ["OrderPlaced", "PaymentSucceeded"],
    }


async def test_memory_bus_reports_a_failing_consumer_after_delivering_to_the_others() -> None:
    bus = MemoryBus()
    delivered: list[str] = []

    async def fails(e: EventEnvelope) -> None:
        raise RuntimeError("handler broke")

    async def works(e: EventEnvelope) -> None:
        delivered.append(e.id)

    await bus.subscribe("first", ["OrderPlaced"], fails)
    await bus.subscribe("second", ["OrderPlaced"], works)
    event = EventEnvelope(type="OrderPlaced", source="orders")

    with pytest.raises(RuntimeError, match="1 consumer"):
        await bus.publish(event)
    assert delivered == [event.id]


async def test_memory_bus_lag_is_zero_for_every_consumer() -> None:
    bus = MemoryBus()

    async def ignore(e: EventEnvelope) -> None:
        return None

    await bus.subscribe("orders.on_payment", ["PaymentSucceeded"], ignore)
    await bus.publish(EventEnvelope(type="PaymentSucceeded", source="payments"))

    assert await bus.lag() == {"orders.on_payment": 0}


def test_bus_backend_is_chosen_by_url_without_connecting() -> None:
    assert isinstance(create_bus("memory://"), MemoryBus)
    nats_bus = create_bus("nats://127.0.0.1:4222", stream="shop")
    assert isinstance(nats_bus, NatsBus)
    assert nats_bus.stream == "shop"
    redis_bus = create_bus("redis://127.0.0.1:6379/0", stream="shop")
    assert isinstance(redis_bus, RedisStreamsBus)
    assert redis_bus.key == "shop:events"


def test_unsupported_bus_url_is_refused_with_the_supported_schemes() -> None:
    with pytest.raises(
        ValueError, match=r"memory://, nats://, tls://, redis://, rediss:// or kafka://"
    ):
        create_bus("amqp://broker:5672")


def test_nats_names_keep_safe_names_and_keep_unsafe_ones_apart() -> None:
    assert nats_name("ecosistema") == "ecosistema"
    assert nats_name("orders-relay_1") == "orders-relay_1"
    dotted, underscored = nats_name("orders.on_payment"), nats_name("orders_on_payment")
    assert dotted != underscored
    assert all(c.isalnum() or c in "_-" for c in dotted)
    assert nats_name("a b*>") != nats_name("a_b__")


def test_nats_subjects_are_one_token_per_event_type_under_the_stream() -> None:
    bus = NatsBus("nats://127.0.0.1:4222", stream="shop")

    assert bus.subject("OrderPlaced") == "shop.events.OrderPlaced"
    assert bus.subject("order.placed").count(".") == 2


def test_retry_delay_doubles_per_delivery_up_to_the_cap() -> None:
    delays = [retry_delay(n, base=1.0, cap=10.0) for n in range(1, 7)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
