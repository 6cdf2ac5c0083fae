"""An event is pushed from commit to consumer; no step waits for a timer to run out.

Every waiting period here is far longer than the test waits for the event (NATS pull requests
live 60 s, relays poll once an hour), so an event that depends on one of them to expire fails
the test instead of merely arriving late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from ecosistema.platform.db import Database
from ecosistema.platform.events import EventEnvelope, Handler, OutboxRelay
from ecosistema.platform.events.nats_bus import NatsBus
from tests.conftest import NATS_URL, PG_URL, requires_nats, requires_postgres, unique
from tests.integration.test_events_outbox import RecordingBus
from tests.integration.test_events_support import (
    eventually,
    grant_credit,
    ledger_database,
    outbox,
)

# Longer than any wait below: a pull request that must expire first fails the test.
PULL_EXPIRY = 60.0
# How long an event may take here; far below PULL_EXPIRY and the relays' poll interval.
PROMPT = 15.0


class PullRequests:
    """Watches, on a connection of its own, the pull requests a bus sends for a stream's
    consumers, to learn the inbox a consumer's messages are delivered to."""

    def __init__(self, stream: str) -> None:
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*"
        self.seen: list[tuple[str, str]] = []
        self._nc: nats.NATS | None = None

    async def __aenter__(self) -> PullRequests:
        self._nc = await nats.connect(NATS_URL)

        async def record(msg: Msg) -> None:
            if msg.reply:
                self.seen.append((msg.subject, msg.reply))

        await self._nc.subscribe(self.subject, cb=record)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._nc is not None
        await self._nc.close()

    async def leave(self, request: dict[str, object]) -> None:
        """Send ``request`` for the consumer the bus last pulled from, answered to the bus's
        inbox, as an earlier fetch of the bus would have left it on the server."""
        assert self._nc is not None

        async def pulled() -> bool:
            return bool(self.seen)

        await eventually(pulled, what="the bus to send a pull request")
        subject, inbox = self.seen[-1]
        await self._nc.publish(subject, json.dumps(request).encode(), reply=inbox)
        await self._nc.flush()


@pytest.fixture
async def nats_bus() -> AsyncIterator[NatsBus]:
    bus = NatsBus(NATS_URL, stream=unique("lat_"), fetch_timeout=PULL_EXPIRY, stop_grace=0.5)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.delete_stream()
        await bus.stop()


# A pull request from an earlier fetch that the server still holds, waiting to fill a batch
# (a fetch that gave up on the client a moment before the server's expiry answer came), and a
# status answer from such an earlier request reaching the current one.
LEFTOVERS = [
    pytest.param({"batch": 32, "expires": int(PULL_EXPIRY * 1e9)}, id="open-request"),
    pytest.param({"batch": 1, "no_wait": True}, id="stray-status"),
]


async def _publish_one_by_one(bus: NatsBus, seen: list[int], count: int, *, first: int = 0) -> None:
    for n in range(first, first + count):
        await bus.publish(EventEnvelope(type="CreditGranted", source="ledger", payload={"n": n}))

        async def handled(n: int = n) -> bool:
            return n in seen

        await eventually(handled, timeout=PROMPT, what=f"event {n} to be handled")


def _recorder(seen: list[int]) -> Handler:
    async def record(envelope: EventEnvelope) -> None:
        seen.append(int(envelope.payload["n"]))

    return record


@requires_nats
@pytest.mark.parametrize("leftover", LEFTOVERS)
async def test_nats_consumer_handles_each_event_as_it_arrives_whatever_pull_requests_are_open(
    nats_bus: NatsBus, leftover: dict[str, object]
) -> None:
    seen: list[int] = []
    async with PullRequests(nats_bus.stream) as requests:
        await nats_bus.subscribe("ledger.crediting", ["CreditGranted"], _recorder(seen))
        await _publish_one_by_one(nats_bus, seen, 1)

        await requests.leave(leftover)
        await _publish_one_by_one(nats_bus, seen, 4, first=1)

    assert seen == [0, 1, 2, 3, 4]


@requires_nats
@pytest.mark.parametrize("leftover", LEFTOVERS)
async def test_nats_broadcast_gets_each_event_as_it_arrives_whatever_pull_requests_are_open(
    nats_bus: NatsBus, leftover: dict[str, object]
) -> None:
    seen: list[int] = []
    async with PullRequests(nats_bus.stream) as requests:
        await nats_bus.subscribe_broadcast(["CreditGranted"], _recorder(seen))
        await _publish_one_by_one(nats_bus, seen, 1)

        await requests.leave(leftover)
        await _publish_one_by_one(nats_bus, seen, 4, first=1)

    assert seen == [0, 1, 2, 3, 4]


class HeldBus(RecordingBus):
    """A bus whose publish stays in progress until released: a replica in the middle of a
    batch, holding the outbox's lock."""

    def __init__(self, published: list[str]) -> None:
        super().__init__(published)
        self.publishing = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, envelope: EventEnvelope) -> None:
        self.publishing.set()
        await self.release.wait()
        await super().publish(envelope)


@requires_postgres
async def test_event_committed_on_one_replica_while_another_relays_is_published_without_a_poll(
    tmp_path: Path,
) -> None:
    async with ledger_database("postgresql", tmp_path) as db:
        assert db.schema is not None
        other = Database("ledger", PG_URL, schema_prefix=db.schema.removesuffix("ledger"))
        published: list[str] = []
        # The other replica's relay, in the middle of a batch it read before the next commit.
        busy = HeldBus(published)
        first = await grant_credit(other, "acme", 1)
        batch = asyncio.create_task(OutboxRelay(outbox, other, busy).relay_once())
        # This replica's relay, polling once an hour: only the commit can get the event out.
        relay = OutboxRelay(outbox, db, RecordingBus(published), poll_interval=3600)
        try:
            async with asyncio.timeout(PROMPT):
                await busy.publishing.wait()
            relay.start()
            second = await grant_credit(db, "acme", 2)
            busy.release.set()
            assert await batch == 1

            async def both_published() -> bool:
                return len(published) == 2

            await eventually(both_published, timeout=PROMPT, what="the second event")
            assert published == [first.id, second.id]
            assert await outbox.backlog(db) == 0
        finally:
            busy.release.set()
            await relay.stop()
            with contextlib.suppress(Exception):
                await batch
            await other.dispose()
