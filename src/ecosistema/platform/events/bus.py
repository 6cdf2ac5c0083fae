"""The bus interface and the factory that picks a backend by URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from typing import Any, Protocol

import structlog

from ecosistema.platform.events.envelope import EventEnvelope

Handler = Callable[[EventEnvelope], Awaitable[None]]

log = structlog.get_logger(__name__)


class EventBus(Protocol):
    """Publish envelopes; deliver them at least once to each durable consumer.

    ``subscribe`` is for work that must happen once per consumer name: a durable consumer that
    the broker keeps (with its position) across restarts, whose replicas share the deliveries.
    ``subscribe_broadcast`` is for state each process keeps for itself (a response cache): every
    subscriber receives every event published after it subscribed, and nothing of it remains on
    the broker once it stops, so events published while no process listens are not kept for it.
    """

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, envelope: EventEnvelope) -> None: ...
    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None: ...
    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None: ...
    async def ping(self) -> None: ...
    async def lag(self) -> dict[str, int]: ...


def wants(types: frozenset[str], event_type: str) -> bool:
    """Whether a subscription to ``types`` (empty or ``*`` meaning all) takes ``event_type``."""
    return not types or "*" in types or event_type in types


def retry_delay(deliveries: int, *, base: float, cap: float) -> float:
    """Exponential backoff before redelivering an event a handler failed on."""
    return float(min(cap, base * 2.0 ** max(0, deliveries - 1)))


async def run_broadcast_handler(handler: Handler, envelope: EventEnvelope) -> None:
    """Run a broadcast subscriber's handler; its failure is logged and the event dropped (the
    subscriber keeps per-process state that has its own expiry, e.g. a cache TTL)."""
    try:
        await handler(envelope)
    except Exception as exc:
        log.warning("broadcast_handler_failed", event_type=envelope.type, error=repr(exc))


class DeliveryLoops:
    """A backend's background delivery tasks.

    ``stop`` cancels a loop at once while it waits for messages, and gives one that is running a
    handler ``grace`` seconds to finish and acknowledge first; a handler cut short is simply
    redelivered later.
    """

    def __init__(self) -> None:
        self._busy: dict[asyncio.Task[None], bool] = {}
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run a delivery loop in the background."""
        task = asyncio.create_task(coro, name=name)
        self._busy[task] = False
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._busy.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery_loop_died", task=task.get_name(), error=repr(task.exception()))

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Mark the current loop as running a handler, so ``stop`` lets it finish."""
        task = asyncio.current_task()
        if task in self._busy:
            self._busy[task] = True  # type: ignore[index]
        try:
            yield
        finally:
            if task in self._busy:
                self._busy[task] = False  # type: ignore[index]

    async def stop(self, grace: float) -> None:
        """Stop every loop: idle ones now, busy ones after their handler or ``grace``."""
        self.closing = True
        tasks = list(self._busy)
        for task, busy in self._busy.items():
            if not busy:
                task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._busy)


class MemoryBus:
    """In-process dispatch for the embedded shape.

    ``publish`` returns only after every subscribed handler has run, so the relay marks an outbox
    row published only once it was handled: a crash in between leaves the row to be relayed
    again, and idempotent consumers make the second delivery a no-op.
    """

    def __init__(self) -> None:
        self._subs: list[tuple[str, frozenset[str], Handler]] = []
        self._broadcast: list[tuple[frozenset[str], Handler]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._subs.clear()
        self._broadcast.clear()

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        self._subs.append((consumer, frozenset(types), handler))

    async def subscribe_broadcast(self, types: Collection[str], handler: Handler) -> None:
        """Deliver every later event of ``types`` to ``handler``; a failure is logged, not
        retried (broadcast delivery is at most once on every backend)."""
        self._broadcast.append((frozenset(types), handler))

    async def publish(self, envelope: EventEnvelope) -> None:
        for types, handler in list(self._broadcast):
            if wants(types, envelope.type):
                await run_broadcast_handler(handler, envelope)
        errors: list[BaseException] = []
        for consumer, types, handler in list(self._subs):
            if not wants(types, envelope.type):
                continue
            try:
                await handler(envelope)
            except Exception as exc:  # each consumer fails alone; the relay retries the event
                log.warning(
                    "consumer_failed", consumer=consumer, event_type=envelope.type, error=repr(exc)
                )
                errors.append(exc)
        if errors:
            raise RuntimeError(f"{len(errors)} consumer(s) failed on {envelope.type}")

    async def ping(self) -> None:
        return None

    async def lag(self) -> dict[str, int]:
        """Always zero: delivery happens inside ``publish``; the backlog is the outbox's."""
        return {consumer: 0 for consumer, _, _ in self._subs}


# The URLs ``create_bus`` takes, by prefix; settings are checked against these at start.
BUS_URL_PREFIXES = ("memory://", "nats://", "tls://", "redis://", "rediss://", "kafka://")
BUS_URL_RULE = "must start with memory://, nats://, tls://, redis://, rediss:// or kafka://"


def create_bus(url: str, *, stream: str = "ecosistema") -> EventBus:
    """``memory://`` (embedded), ``nats://host:4222`` (JetStream), ``redis://`` (Streams) or
    ``kafka://host:9092`` (needs the ``kafka`` extra)."""
    if url.startswith("memory://"):
        return MemoryBus()
    if url.startswith(("nats://", "tls://")):
        from ecosistema.platform.events.nats_bus import NatsBus

        return NatsBus(url, stream=stream)
    if url.startswith(("redis://", "rediss://")):
        from ecosistema.platform.events.redis_bus import RedisStreamsBus

        return RedisStreamsBus(url, stream=stream)
    if url.startswith("kafka://"):
        from ecosistema.platform.events.kafka_bus import KafkaBus

        return KafkaBus(url, stream=stream)
    # The URL is not repeated: it may hold a password.
    raise ValueError(f"ECOSISTEMA_BUS_URL {BUS_URL_RULE}")
