"""NATS JetStream backend: one stream, a durable pull consumer per consumer name, and an
ephemeral one per broadcast subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Collection

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StatusCode,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServerError
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

# The JetStream API subjects' prefix (no domain or account import is configured).
JS_API_PREFIX = "$JS.API"
# How often a stream create the server fails (ServerError) is tried before the bus gives up.
STREAM_CREATE_ATTEMPTS = 3
# How long start keeps trying to reach a server before it gives up. Once connected, the client
# reconnects for as long as it takes: a running service waits for its bus to come back.
CONNECT_SECONDS = 10.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Status answers that end a pull request: no messages (no_wait), expired, or a conflict (too
# many waiting requests, the consumer deleted or moved).
_REQUEST_ENDED = frozenset(
    {StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT}
)


def nats_name(name: str) -> str:
    """A stream, consumer or subject-token name NATS accepts, distinct for distinct inputs."""
    safe = _UNSAFE.sub("_", name)
    if safe == name and name:
        return name
    return f"{safe}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class Puller:
    """A pull consumer's messages, each handed over the moment it arrives.

    One pull request for up to ``batch`` messages is kept open on the server, answered to an
    inbox of the puller's own, and renewed once it has delivered its batch, ended with a status
    answer, or outlived ``expires`` (its expiry answer lost with a connection).

    Unlike ``PullSubscription.fetch``, nothing waits for a batch to fill: a fetch that received
    one message waits for the rest until its request expires, so an event delivered to a
    request still open on the server (one from an earlier fetch that gave up a moment before the
    server's expiry answer came, which that late answer then leaves behind) waited for up to the
    whole fetch timeout. Here whichever request a message answers, it is returned at once.
    """

    def __init__(
        self, nc: Client, *, prefix: str, stream: str, consumer: str, batch: int, expires: float
    ) -> None:
        self.consumer = consumer
        self._nc = nc
        self._subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._request = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self._batch = batch
        self._expires = expires
        self._sub: Subscription | None = None
        self._owed = 0  # messages the open request may still deliver
        self._renew_at = 0.0

    async def open(self) -> None:
        """Subscribe to the puller's inbox."""
        self._sub = await self._nc.subscribe(self._nc.new_inbox())

    async def next(self) -> Msg | None:
        """The next message, or ``None`` once a request ended without one (ask again)."""
        if self._sub is None:
            raise RuntimeError("Puller is not open")
        loop = asyncio.get_running_loop()
        if self._owed <= 0 or loop.time() >= self._renew_at:
            await self._nc.publish(self._subject, self._request, reply=self._sub.subject)
            self._owed = self._batch
            # The server answers an expired request a little before this, so its answer is
            # normally read here and does not reach the next request.
            self._renew_at = loop.time() + self._expires + max(0.5, self._expires / 10)
        try:
            message = await self._sub.next_msg(timeout=max(0.001, self._renew_at - loop.time()))
        except TimeoutError:
            self._owed = 0
            return None
        status = message.headers.get("Status") if message.headers else None
        if status is None or message.data:
            self._owed -= 1
            return message
        if status == StatusCode.CONTROL_MESSAGE:
            return None
        if status in _REQUEST_ENDED:
            # This request's end, or the late one of a request already given up on: either
            # way a new request keeps one open; messages of any of them come here all the same.
            self._owed = 0
            return None
        raise APIError.from_msg(message)

    async def close(self) -> None:
        """Unsubscribe; an open request's messages return to the consumer after ``ack_wait``."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()


class NatsBus:
    """Publishes to ``<stream>.events.<type>`` and delivers through durable pull consumers.

    Publishing sets ``Nats-Msg-Id`` to the envelope id, so a relay that publishes the same row
    twice within ``duplicate_window`` stores it once. A delivery is acknowledged only after the
    handler returns; a failing handler's message is negatively acknowledged with a growing delay,
    and one whose process died is redelivered after ``ack_wait``. Replicas that subscribe under
    the same consumer name share its deliveries.

    A broadcast subscriber gets an ephemeral pull consumer of its own (no durable name, deliver
    policy ``new``): the server removes it after ``inactive_threshold`` without a pull (a
    process that died), and ``stop`` deletes it at once.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "ecosistema",
        ack_wait: float = 30.0,
        max_deliver: int = 1000,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        batch_size: int = 32,
        fetch_timeout: float = 5.0,
        max_age: float = 7 * 24 * 3600.0,
        duplicate_window: float = 120.0,
        stop_grace: float = 10.0,
        inactive_threshold: float = 60.0,
        connect_seconds: float = CONNECT_SECONDS,
    ) -> None:
        self.url = url
        self.connect_seconds = connect_seconds
        self.stream = nats_name(stream)
        self.subject_prefix = f"{self.stream}.events"
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.max_age = max_age
        self.duplicate_window = duplicate_window
        self.stop_grace = stop_grace
        self.inactive_threshold = inactive_threshold
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._durables: dict[str, str] = {}
        self._pullers: list[Puller] = []
        self._ephemeral: set[str] = set()
        self._loops = DeliveryLoops()

    def subject(self, event_type: str) -> str:
        """The subject an event type is published on."""
        return f"{self.subject_prefix}.{nats_name(event_type)}"

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context; the bus must be started."""
        if self._js is None:
            raise RuntimeError("NatsBus is not started")
        return self._js

    async def start(self) -> None:
        """Connect and create (or bring up to date) the stream."""
        if self._nc is not None:
            return
        self._loops = DeliveryLoops()
        self._nc = await self._connect()
        self._js = self._nc.jetstream()
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
        )
        for attempt in range(STREAM_CREATE_ATTEMPTS):
            try:
                try:
                    await self._js.update_stream(config)
                except NotFoundError:
                    await self._js.add_stream(config)
                return
            except ServerError as exc:
                # The server can fail a create that races the deletion of another stream (its
                # store directory removed under it); the next attempt succeeds.
                if attempt == STREAM_CREATE_ATTEMPTS - 1:
                    raise
                log.warning("nats_stream_create_retried", stream=self.stream, error=repr(exc))
                await asyncio.sleep(0.1 * (attempt + 1))

    async def _connect(self) -> Client:
        """A connected client; ``ConnectionError`` when no server answers within
        ``connect_seconds`` (the attempts in between are logged, one line each)."""
        last: list[BaseException] = []

        async def _error(exc: Exception) -> None:
            last[:] = [exc]
            log.warning("nats_error", error=repr(exc))

        nc = Client()
        try:
            await asyncio.wait_for(
                nc.connect(
                    self.url,
                    name=f"ecosistema-{self.stream}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=_error,
                ),
                self.connect_seconds,
            )
        except TimeoutError:
            with contextlib.suppress(Exception):
                await nc.close()
            why = f" (last: {type(last[0]).__name__}: {last[0]})" if last else ""
            raise ConnectionError(
                f"no NATS server answered within {self.connect_seconds:g} s{why}"
            ) from None
        return nc

    async def stop(self) -> None:
        """Let running handlers finish, then drain the connection."""
        await self._loops.stop(self.stop_grace)
        for puller in self._pullers:
            try:
                await puller.close()
            except Exception as exc:  # the connection may already be gone
                log.debug("nats_unsubscribe_failed", error=repr(exc))
        self._pullers.clear()
        self._durables.clear()
        for name in list(self._ephemeral):
            await self._delete_ephemeral(name)
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            try:
                await nc.drain()
            except Exception as exc:
                log.warning("nats_drain_failed", error=repr(exc))
                await nc.close()

    async def publish(self, envelope: EventEnvelope) -> None:
        """Store the envelope in the stream; returns once JetStream acknowledged it."""
        await self.jetstream.publish(
            self.subject(envelope.type),
            envelope.to_bytes(),
            stream=self.stream,
            headers={"Nats-Msg-Id": envelope.id},
        )

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        """Create or update the durable consumer and start delivering to ``handler``."""
        js = self.jetstream
        wanted = frozenset(types)
        durable = nats_name(consumer)
        filter_subject, filter_subjects = self._filter(wanted)
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            filter_subject=filter_subject,
            filter_subjects=filter_subjects,
        )
        await js.add_consumer(self.stream, config)
        puller = await self._puller(durable)
        self._durables[consumer] = durable
        self._loops.spawn(self._deliver(consumer, puller, wanted, handler), name=f"nats-{durable}")

    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None:
        """Start delivering every event of ``types`` published from now on to ``handler``,
        through an ephemeral consumer of this process alone."""
        wanted = frozenset(types)
        puller = await self._ephemeral_puller(wanted)
        self._loops.spawn(self._broadcast(puller, wanted, handler), name=f"nats-{puller.consumer}")

    async def _puller(self, consumer: str) -> Puller:
        assert self._nc is not None
        puller = Puller(
            self._nc,
            prefix=JS_API_PREFIX,
            stream=self.stream,
            consumer=consumer,
            batch=self.batch_size,
            expires=self.fetch_timeout,
        )
        await puller.open()
        self._pullers.append(puller)
        return puller

    async def _ephemeral_puller(self, wanted: frozenset[str]) -> Puller:
        js = self.jetstream
        filter_subject, filter_subjects = self._filter(wanted)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=1,
            inactive_threshold=self.inactive_threshold,
            filter_subject=filter_subject,
            filter_subjects=filter_subjects,
        )
        info = await js.add_consumer(self.stream, config)
        assert info.name is not None
        self._ephemeral.add(info.name)
        return await self._puller(info.name)

    async def _broadcast(self, puller: Puller, wanted: frozenset[str], handler: Handler) -> None:
        while not self._loops.closing:
            try:
                message = await puller.next()
            except Exception as exc:
                log.warning("nats_broadcast_fetch_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                puller = await self._resume_broadcast(puller, wanted)
                continue
            if message is not None:
                with self._loops.handling():
                    try:
                        envelope = EventEnvelope.from_bytes(message.data)
                    except ValidationError as exc:
                        log.error("event_unreadable", consumer="broadcast", error=str(exc))
                    else:
                        if wants(wanted, envelope.type):
                            await run_broadcast_handler(handler, envelope)
                    try:
                        await message.ack()
                    except Exception as exc:  # at most once: the consumer will not resend it
                        log.debug("nats_ack_failed", consumer="broadcast", error=repr(exc))

    async def _resume_broadcast(self, puller: Puller, wanted: frozenset[str]) -> Puller:
        """The same puller while its consumer exists, else (removed by the server after a long
        disconnection) a new one from the events published from now on."""
        name = puller.consumer
        try:
            await self.jetstream.consumer_info(self.stream, name)
            return puller
        except NotFoundError:
            log.warning("nats_broadcast_consumer_lost", consumer=name)
        except Exception as exc:  # still disconnected: try again on the next failure
            log.debug("nats_broadcast_check_failed", error=repr(exc))
            return puller
        self._ephemeral.discard(name)
        try:
            await puller.close()
        except Exception as exc:
            log.debug("nats_unsubscribe_failed", error=repr(exc))
        if puller in self._pullers:
            self._pullers.remove(puller)
        return await self._ephemeral_puller(wanted)

    async def _delete_ephemeral(self, name: str) -> None:
        self._ephemeral.discard(name)
        try:
            await self.jetstream.delete_consumer(self.stream, name)
        except NotFoundError:
            return
        except Exception as exc:  # the server removes it after inactive_threshold anyway
            log.debug("nats_ephemeral_delete_failed", consumer=name, error=repr(exc))

    def _filter(self, wanted: frozenset[str]) -> tuple[str | None, list[str] | None]:
        everything = f"{self.subject_prefix}.>"
        if not wanted or "*" in wanted:
            return everything, None
        subjects = sorted(self.subject(t) for t in wanted)
        if len(subjects) == 1:
            return subjects[0], None
        assert self._nc is not None
        version = self._nc.connected_server_version
        if (version.major, version.minor) >= (2, 10):
            return None, subjects
        # Servers before 2.10 take one filter subject: receive all, skip the others on arrival.
        return everything, None

    async def _deliver(
        self, consumer: str, puller: Puller, wanted: frozenset[str], handler: Handler
    ) -> None:
        while not self._loops.closing:
            try:
                message = await puller.next()
            except Exception as exc:  # disconnected: the client reconnects on its own
                log.warning("nats_fetch_failed", consumer=consumer, error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if message is not None:
                with self._loops.handling():
                    try:
                        await self._handle(consumer, message, wanted, handler)
                    except Exception as exc:  # an ack lost here means a redelivery, no loss
                        log.warning("nats_ack_failed", consumer=consumer, error=repr(exc))

    async def _handle(
        self, consumer: str, message: Msg, wanted: frozenset[str], handler: Handler
    ) -> None:
        try:
            envelope = EventEnvelope.from_bytes(message.data)
        except ValidationError as exc:
            log.error("event_unreadable", consumer=consumer, error=str(exc))
            await message.term()
            return
        if not wants(wanted, envelope.type):
            await message.ack()
            return
        try:
            await handler(envelope)
        except Exception as exc:
            deliveries = message.metadata.num_delivered or 1
            delay = retry_delay(deliveries, base=self.retry_base, cap=self.retry_cap)
            log.warning(
                "consumer_failed",
                consumer=consumer,
                event_type=envelope.type,
                event_id=envelope.id,
                deliveries=deliveries,
                retry_in=delay,
                error=repr(exc),
            )
            await message.nak(delay=delay)
            return
        await message.ack()

    async def ping(self) -> None:
        """Raise unless the server answers and the stream exists."""
        if self._nc is None or not self._nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await self.jetstream.stream_info(self.stream)

    async def lag(self) -> dict[str, int]:
        """Per consumer: events not yet delivered plus those delivered but not acknowledged."""
        out: dict[str, int] = {}
        for consumer, durable in self._durables.items():
            info = await self.jetstream.consumer_info(self.stream, durable)
            out[consumer] = (info.num_pending or 0) + (info.num_ack_pending or 0)
        return out

    async def delete_stream(self) -> None:
        """Remove the stream and every consumer on it (tests and resets)."""
        try:
            await self.jetstream.delete_stream(self.stream)
        except NotFoundError:
            return
