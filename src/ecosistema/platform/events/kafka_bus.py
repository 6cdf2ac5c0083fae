"""Kafka backend (``kafka://host:9092[,host2:9092]``): one topic, a consumer group per consumer.

``?idempotence=false`` turns off the idempotent producer, for Kafka-compatible brokers without
producer ids. Needs the optional ``kafka`` extra (``pip install 'ecosistema[kafka]'``, which
brings aiokafka); aiokafka is imported only when a Kafka bus is created.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from pydantic import ValidationError

from ecosistema.platform.events.bus import (
    DeliveryLoops,
    Handler,
    retry_delay,
    run_broadcast_handler,
    wants,
)
from ecosistema.platform.events.envelope import EventEnvelope

log = structlog.get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def producer_idempotence(url: str) -> bool:
    """Whether the URL keeps the idempotent producer on (``?idempotence=false`` turns it off,
    for Kafka-compatible brokers that do not implement producer ids)."""
    values = parse_qs(urlsplit(url).query).get("idempotence", ["true"])
    return values[-1].strip().lower() not in ("false", "0", "no", "off")


def bootstrap_servers(url: str) -> str:
    """``kafka://a:9092,b:9092`` -> ``a:9092,b:9092`` (port 9092 when none is given)."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ValueError(f"a Kafka bus URL looks like kafka://host:9092, not {url!r}")
    hosts = []
    for host in parts.netloc.split(","):
        host = host.strip()
        if not host:
            continue
        hosts.append(host if host.rsplit(":", 1)[-1].isdigit() and ":" in host else f"{host}:9092")
    if not hosts:
        raise ValueError(f"no broker in {url!r}")
    return ",".join(hosts)


def kafka_name(name: str) -> str:
    """A topic or group name Kafka accepts (letters, digits, ``.``, ``_``, ``-``)."""
    return _UNSAFE.sub("_", name)[:249] or "_"


def _import_aiokafka() -> Any:
    try:
        import aiokafka
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError("the Kafka bus needs aiokafka: pip install 'ecosistema[kafka]'") from exc
    return aiokafka


class KafkaBus:
    """Publishes every event to the topic ``<stream>.events`` (keyed by event type, so events
    of one type keep their order) and delivers it to each consumer group.

    At least once: a group commits an event's offset only after the handler returned, so a
    process that dies mid-handling leaves the event to the group's next member. A handler that
    fails is retried in place, after a growing delay (``retry_base`` doubling up to
    ``retry_cap``), and the events behind it in the same partition wait: Kafka keeps one offset
    per partition, so an event cannot be skipped and redelivered later the way NATS and Redis
    Streams allow. Replicas that subscribe under the same consumer name share the partitions.
    The producer waits for ``acks=all`` and is idempotent unless the URL says otherwise.

    A broadcast subscriber joins no group: it is assigned every partition of the topic (those
    there are when it subscribes), starts at their ends, and commits nothing, so the broker
    keeps no trace of it.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "ecosistema",
        partitions: int = 6,
        replication_factor: int = 1,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        batch_size: int = 32,
        poll_timeout: float = 1.0,
        stop_grace: float = 10.0,
        session_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.bootstrap = bootstrap_servers(url)
        self.topic = kafka_name(f"{stream}.events")
        self.group_prefix = kafka_name(stream)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stop_grace = stop_grace
        self.session_timeout = session_timeout
        self._aiokafka = _import_aiokafka()
        self._producer: Any = None
        self._consumers: dict[str, Any] = {}
        self._broadcast_consumers: list[Any] = []
        self._loops = DeliveryLoops()

    def group(self, consumer: str) -> str:
        """The Kafka consumer group of a consumer name."""
        return kafka_name(f"{self.group_prefix}.{consumer}")

    async def start(self) -> None:
        """Create the topic when missing, and connect the producer."""
        if self._producer is not None:
            return
        self._loops = DeliveryLoops()
        await self._ensure_topic()
        producer = self._aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=producer_idempotence(self.url),
            client_id=f"ecosistema-{self.group_prefix}",
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _ensure_topic(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            if self.topic in await admin.list_topics():
                return
            try:
                await admin.create_topics(
                    [NewTopic(self.topic, self.partitions, self.replication_factor)]
                )
            except TopicAlreadyExistsError:
                return
        finally:
            await admin.close()

    async def stop(self) -> None:
        """Let running handlers finish, leave the groups (committed offsets stay), disconnect."""
        await self._loops.stop(self.stop_grace)
        consumers, self._consumers = list(self._consumers.values()), {}
        consumers += self._broadcast_consumers
        self._broadcast_consumers = []
        for consumer in consumers:
            try:
                await consumer.stop()
            except Exception as exc:  # the broker may already be gone
                log.debug("kafka_consumer_stop_failed", error=repr(exc))
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def producer(self) -> Any:
        """The producer; the bus must be started."""
        if self._producer is None:
            raise RuntimeError("KafkaBus is not started")
        return self._producer

    async def publish(self, envelope: EventEnvelope) -> None:
        """Append the envelope to the topic; returns once every in-sync replica has it."""
        await self.producer.send_and_wait(
            self.topic,
            value=envelope.to_bytes(),
            key=envelope.type.encode(),
            headers=[("id", envelope.id.encode()), ("type", envelope.type.encode())],
        )

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        """Join the consumer's group and start delivering to ``handler``; a new group starts
        from the oldest event still in the topic, like the other backends."""
        self.producer  # noqa: B018 - fails early when not started
        kafka_consumer = self._aiokafka.AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group(consumer),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            max_poll_records=self.batch_size,
            client_id=f"ecosistema-{self.group(consumer)}",
        )
        await kafka_consumer.start()
        self._consumers[consumer] = kafka_consumer
        self._loops.spawn(
            self._deliver(consumer, kafka_consumer, frozenset(types), handler),
            name=f"kafka-{self.group(consumer)}",
        )

    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None:
        """Start delivering every event of ``types`` published from now on to ``handler``."""
        from aiokafka.structs import TopicPartition

        numbers = await self.producer.partitions_for(self.topic)
        kafka_consumer = self._aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_poll_records=self.batch_size,
            client_id=f"ecosistema-{self.group_prefix}-broadcast",
        )
        await kafka_consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(numbers)]
            kafka_consumer.assign(partitions)
            await kafka_consumer.seek_to_end(*partitions)
            for tp in partitions:
                # Resolved now, so an event published once this returns is delivered.
                await kafka_consumer.position(tp)
        except BaseException:
            await kafka_consumer.stop()
            raise
        self._broadcast_consumers.append(kafka_consumer)
        self._loops.spawn(
            self._broadcast(kafka_consumer, frozenset(types), handler),
            name=f"kafka-{self.group_prefix}-broadcast",
        )

    async def _broadcast(
        self, kafka_consumer: Any, wanted: frozenset[str], handler: Handler
    ) -> None:
        from aiokafka.errors import KafkaError

        while not self._loops.closing:
            try:
                batches = await kafka_consumer.getmany(
                    timeout_ms=int(self.poll_timeout * 1000), max_records=self.batch_size
                )
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                log.warning("kafka_broadcast_fetch_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    with self._loops.handling():
                        try:
                            envelope = EventEnvelope.from_bytes(record.value)
                        except (ValidationError, TypeError) as exc:
                            log.error("event_unreadable", consumer="broadcast", error=repr(exc))
                            continue
                        if wants(wanted, envelope.type):
                            await run_broadcast_handler(handler, envelope)

    async def _deliver(
        self, consumer: str, kafka_consumer: Any, wanted: frozenset[str], handler: Handler
    ) -> None:
        from aiokafka.errors import KafkaError

        while not self._loops.closing:
            try:
                batches = await kafka_consumer.getmany(
                    timeout_ms=int(self.poll_timeout * 1000), max_records=self.batch_size
                )
                for partition, records in batches.items():
                    await self._handle_partition(
                        consumer, kafka_consumer, partition, records, wanted, handler
                    )
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # the client reconnects; uncommitted events come again
                log.warning("kafka_fetch_failed", consumer=consumer, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _handle_partition(
        self,
        consumer: str,
        kafka_consumer: Any,
        partition: Any,
        records: list[Any],
        wanted: frozenset[str],
        handler: Handler,
    ) -> None:
        from aiokafka.structs import OffsetAndMetadata

        for record in records:
            with self._loops.handling():
                if not await self._handle(consumer, record, wanted, handler):
                    # Come back to this event after the delay; later ones in this partition wait.
                    kafka_consumer.seek(partition, record.offset)
                    return
                await kafka_consumer.commit({partition: OffsetAndMetadata(record.offset + 1, "")})

    async def _handle(
        self, consumer: str, record: Any, wanted: frozenset[str], handler: Handler
    ) -> bool:
        """Run the handler; True when the event is done with (handled, skipped or unreadable)."""
        try:
            envelope = EventEnvelope.from_bytes(record.value)
        except (ValidationError, TypeError) as exc:
            log.error("event_unreadable", consumer=consumer, error=repr(exc))
            return True
        if not wants(wanted, envelope.type):
            return True
        attempts = 0
        while True:
            try:
                await handler(envelope)
                return True
            except Exception as exc:
                attempts += 1
                delay = retry_delay(attempts, base=self.retry_base, cap=self.retry_cap)
                log.warning(
                    "consumer_failed",
                    consumer=consumer,
                    event_type=envelope.type,
                    event_id=envelope.id,
                    deliveries=attempts,
                    retry_in=delay,
                    error=repr(exc),
                )
                if self._loops.closing:
                    return False
                await asyncio.sleep(delay)
                if self._loops.closing:
                    return False

    async def ping(self) -> None:
        """Raise unless a broker answers with the topic's metadata."""
        partitions = await self.producer.partitions_for(self.topic)
        if not partitions:
            raise ConnectionError(f"Kafka topic {self.topic} has no partitions")

    async def lag(self) -> dict[str, int]:
        """Per consumer group: events in the topic not yet committed by the group."""
        from aiokafka.structs import TopicPartition

        out: dict[str, int] = {}
        for name, kafka_consumer in self._consumers.items():
            partitions = [
                TopicPartition(self.topic, p)
                for p in (kafka_consumer.partitions_for_topic(self.topic) or ())
            ]
            if not partitions:
                out[name] = 0
                continue
            ends = await kafka_consumer.end_offsets(partitions)
            starts = await kafka_consumer.beginning_offsets(partitions)
            behind = 0
            for tp in partitions:
                committed = await kafka_consumer.committed(tp)
                behind += max(0, ends[tp] - (starts[tp] if committed is None else committed))
            out[name] = behind
        return out

    async def delete_stream(self) -> None:
        """Remove the topic (tests and resets); committed offsets go with it."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            if self.topic in await admin.list_topics():
                await admin.delete_topics([self.topic])
        finally:
            await admin.close()
