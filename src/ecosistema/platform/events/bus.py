"""The bus interface and the factory that picks a backend by URL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import structlog

from ecosistema.platform.events.envelope import EventEnvelope

Handler = Callable[[EventEnvelope], Awaitable[None]]

log = structlog.get_logger(__name__)


class EventBus(Protocol):
    """Publish envelopes; deliver them at least once to each durable consumer."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, envelope: EventEnvelope) -> None: ...
    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None: ...
    async def ping(self) -> None: ...


class MemoryBus:
    """In-process dispatch for the embedded shape.

    ``publish`` returns only after every subscribed handler has run, so the relay marks an outbox
    row published only once it was handled: a crash in between leaves the row to be relayed
    again, and idempotent consumers make the second delivery a no-op.
    """

    def __init__(self) -> None:
        self._subs: list[tuple[str, frozenset[str], Handler]] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._subs.clear()

    async def subscribe(self, consumer: str, types: Collection[str], handler: Handler) -> None:
        self._subs.append((consumer, frozenset(types), handler))

    async def publish(self, envelope: EventEnvelope) -> None:
        errors: list[BaseException] = []
        for consumer, types, handler in list(self._subs):
            if types and envelope.type not in types and "*" not in types:
                continue
            try:
                await handler(envelope)
            except Exception as exc:  # each consumer fails alone; the relay retries the event
                log.warning("consumer_failed", consumer=consumer, event=envelope.type, error=repr(exc))
                errors.append(exc)
        if errors:
            raise RuntimeError(f"{len(errors)} consumer(s) failed on {envelope.type}")

    async def ping(self) -> None:
        return None


def create_bus(url: str, *, stream: str = "ecosistema") -> EventBus:
    """``memory://`` (embedded), ``nats://host:4222`` (JetStream) or ``redis://`` (Streams)."""
    if url.startswith("memory://"):
        return MemoryBus()
    if url.startswith(("nats://", "tls://")):
        from ecosistema.platform.events.nats_bus import NatsBus

        return NatsBus(url, stream=stream)
    if url.startswith(("redis://", "rediss://")):
        from ecosistema.platform.events.redis_bus import RedisStreamsBus

        return RedisStreamsBus(url, stream=stream)
    raise ValueError(f"unsupported bus URL {url!r}: use memory://, nats:// or redis://")
