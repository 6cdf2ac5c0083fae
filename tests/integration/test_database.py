"""The database layer on real SQLite and PostgreSQL: migrations, isolation, concurrent writers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, String, Table, select, text, update

from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database, new_metadata
from tests.conftest import drop_test_schemas


def _database(settings: Settings, service: str = "probe") -> Database:
    return Database(
        service,
        settings.database_url_for(service),
        schema_prefix=settings.database_schema_prefix,
    )


@pytest.fixture
async def counter_db(settings: Settings):  # type: ignore[no-untyped-def]
    metadata = new_metadata()
    counters = Table(
        "counters",
        metadata,
        Column("name", String(20), primary_key=True),
        Column("value", Integer, nullable=False),
    )
    db = _database(settings)
    if db.schema:
        async with db.engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with db.transaction() as session:
        await session.execute(counters.insert().values(name="hits", value=0))
    yield db, counters
    await db.dispose()
    await drop_test_schemas(settings)


async def test_concurrent_read_modify_write_transactions_lose_no_update(counter_db) -> None:  # type: ignore[no-untyped-def]
    db, counters = counter_db

    async def bump() -> None:
        async with db.transaction() as session:
            query = select(counters.c.value).where(counters.c.name == "hits")
            if db.is_postgres:
                query = query.with_for_update()
            current = await session.scalar(query)
            await asyncio.sleep(0)  # yield mid-transaction so writers interleave
            await session.execute(
                update(counters).where(counters.c.name == "hits").values(value=current + 1)
            )

    await asyncio.gather(*(bump() for _ in range(40)))
    async with db.read() as session:
        assert await session.scalar(select(counters.c.value)) == 40


async def test_a_failed_transaction_leaves_nothing_behind(counter_db) -> None:  # type: ignore[no-untyped-def]
    db, counters = counter_db
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await session.execute(update(counters).values(value=99))
            raise RuntimeError("use case failed")
    async with db.read() as session:
        assert await session.scalar(select(counters.c.value)) == 0


async def test_core_write_transactions_queue_with_session_ones_and_lose_no_update(
    counter_db,
) -> None:  # type: ignore[no-untyped-def]
    db, counters = counter_db

    async def bump_core() -> None:
        async with db.write() as conn:
            query = select(counters.c.value).where(counters.c.name == "hits")
            if db.is_postgres:
                query = query.with_for_update()
            current = await conn.scalar(query)
            await asyncio.sleep(0)
            await conn.execute(
                update(counters).where(counters.c.name == "hits").values(value=current + 1)
            )

    async def bump_session() -> None:
        async with db.transaction() as session:
            await session.execute(
                update(counters).where(counters.c.name == "hits").values(value=counters.c.value + 1)
            )

    await asyncio.gather(*(bump_core() if i % 2 else bump_session() for i in range(30)))
    async with db.read() as session:
        assert await session.scalar(select(counters.c.value)) == 30


async def test_sqlite_writer_waiting_for_another_process_keeps_the_event_loop_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "probe.db"
    db = Database("probe", f"sqlite+aiosqlite:///{path}")
    async with db.transaction() as session:
        await session.execute(text("CREATE TABLE marks (n INTEGER NOT NULL)"))
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO marks VALUES (1)")

    async def write() -> None:
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO marks VALUES (2)"))

    writer = asyncio.create_task(write())
    ticks = 0
    while ticks < 20:  # the loop turns while the writer waits for the lock
        await asyncio.sleep(0.001)
        ticks += 1
    assert not writer.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writer, timeout=30)
    async with db.read() as session:
        marks = (await session.execute(text("SELECT n FROM marks ORDER BY n"))).scalars().all()
    assert marks == [1, 2]
    await db.dispose()


async def test_sqlite_database_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database("probe", f"sqlite+aiosqlite:///{tmp_path}/probe.db")
    async with db.read() as session:
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    await db.dispose()
    assert (tmp_path / "probe.db").exists()


async def test_every_service_migrates_into_its_own_database_or_schema(settings: Settings) -> None:
    from ecosistema.platform.runtime import Runtime
    from ecosistema.services import load_services

    runtime = Runtime(settings, load_services())
    try:
        await runtime.migrate()
        await runtime.migrate()  # applying twice is a no-op
        for ctx in runtime.contexts.values():
            async with ctx.db.read() as session:
                version = (
                    await session.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
            assert version, f"{ctx.name} has no migration applied"
            if ctx.db.is_sqlite:
                assert Path(settings.data_dir, f"{ctx.name}.db").exists()
            else:
                assert ctx.db.schema == f"{settings.database_schema_prefix}{ctx.name}"
    finally:
        await runtime.stop()
        await drop_test_schemas(settings)
