"""Events: the envelope, the transactional outbox, the relay, idempotent consumers, bus backends."""

from ecosistema.platform.events.bus import EventBus, Handler, create_bus
from ecosistema.platform.events.consumer import IdempotentConsumer
from ecosistema.platform.events.envelope import EventEnvelope
from ecosistema.platform.events.outbox import Outbox, OutboxRelay

__all__ = [
    "EventBus",
    "EventEnvelope",
    "Handler",
    "IdempotentConsumer",
    "Outbox",
    "OutboxRelay",
    "create_bus",
]
