"""A small ledger service of the tests' own, on a real database, to exercise the event system.

A grant of credit is the state change (table ``grants``) and writes ``CreditGranted`` to the
ledger's outbox in the same transaction; the ``crediting`` consumer applies each event as a row
in ``credits``. Counting ``credits`` rows per event id shows whether an effect happened once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.db import Database, new_metadata
from ecosistema.platform.events import EventBus, EventEnvelope, IdempotentConsumer, Outbox
from ecosistema.platform.events.bus import MemoryBus
from ecosistema.platform.events.nats_bus import NatsBus
from ecosistema.platform.events.redis_bus import RedisStreamsBus
from tests.conftest import (
    NATS_URL,
    PG_URL,
    REDIS_URL,
    requires_nats,
    requires_postgres,
    requires_redis,
    unique,
)

metadata = new_metadata()
outbox = Outbox("ledger", metadata)
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(50), nullable=False),
    Column("amount", Integer, nullable=False),
)
credits = Table(
    "credits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False),
    Column("account", String(50), nullable=False),
    Column("amount", Integer, nullable=False),
)

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=requires_postgres),
]
BUSES = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", id="nats", marks=requires_nats),
    pytest.param("redis", id="redis", marks=requires_redis),
]


@contextlib.asynccontextmanager
async def ledger_database(kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    """The ledger's tables on a SQLite file or in a PostgreSQL schema of its own."""
    if kind == "sqlite":
        db = Database("ledger", f"sqlite+aiosqlite:///{tmp_path.as_posix()}/ledger.db")
    else:
        db = Database("ledger", PG_URL, schema_prefix=f"{unique()}_")
    async with db.engine.begin() as conn:
        if db.schema:
            await conn.execute(text(f'CREATE SCHEMA "{db.schema}"'))
        await conn.run_sync(metadata.create_all)
    try:
        yield db
    finally:
        await db.drop_schema()
        await db.dispose()


class Buses:
    """Bus instances of one backend sharing a uniquely named stream, removed at the end.

    Each instance stands for one process: a second one on the same stream is what a restarted
    or replicated service would connect.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stream = unique("evt_")
        self._made: list[EventBus] = []

    async def new(self) -> EventBus:
        """A started bus, tuned so that redeliveries happen within a second."""
        bus: EventBus
        if self.kind == "memory":
            bus = MemoryBus()
        elif self.kind == "nats":
            bus = NatsBus(
                NATS_URL,
                stream=self.stream,
                ack_wait=1.0,
                retry_base=0.1,
                retry_cap=0.5,
                fetch_timeout=0.5,
                stop_grace=0.5,
            )
        else:
            bus = RedisStreamsBus(
                REDIS_URL, stream=self.stream, claim_idle=0.5, block=0.2, stop_grace=0.5
            )
        await bus.start()
        self._made.append(bus)
        return bus

    async def close(self) -> None:
        """Stop every instance and delete the stream."""
        for bus in self._made:
            await bus.stop()
        if self.kind == "memory":
            return
        cleaner = await self.new()
        assert isinstance(cleaner, NatsBus | RedisStreamsBus)
        await cleaner.delete_stream()
        await cleaner.stop()


async def grant_credit(db: Database, account: str, amount: int) -> EventEnvelope:
    """The use case: record a grant and its ``CreditGranted`` event in one transaction."""
    async with db.transaction() as session:
        await session.execute(grants.insert().values(account=account, amount=amount))
        return await outbox.add(session, "CreditGranted", {"account": account, "amount": amount})


async def apply_credit(session: AsyncSession, envelope: EventEnvelope) -> None:
    """The consumer's effect: one ``credits`` row per applied event."""
    await session.execute(
        credits.insert().values(
            event_id=envelope.id,
            account=envelope.payload["account"],
            amount=envelope.payload["amount"],
        )
    )


def crediting(
    db: Database,
    handler: Callable[[AsyncSession, EventEnvelope], Awaitable[None]] = apply_credit,
    name: str = "ledger.crediting",
) -> IdempotentConsumer:
    """The idempotent consumer that applies credits."""
    return IdempotentConsumer(name, db, outbox, handler)


async def credits_for(db: Database, event_id: str) -> int:
    """How many times the event's effect was applied."""
    async with db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(credits).where(credits.c.event_id == event_id)
        )
    return int(count or 0)


async def outbox_row(db: Database, event_id: str) -> dict[str, Any] | None:
    """The outbox row of an event, if any."""
    t = outbox.table
    async with db.read() as session:
        row = (await session.execute(select(t).where(t.c.event_id == event_id))).mappings().first()
    return dict(row) if row else None


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, what: str = ""
) -> None:
    """Wait until ``condition`` holds, failing the test after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what or condition}")
