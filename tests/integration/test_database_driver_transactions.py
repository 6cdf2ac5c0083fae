"""Transactions on the database driver (``Database.driver_write`` and ``driver_read``), on SQLite
and PostgreSQL: the values a Core execution would write and read, commit and rollback, errors as
SQLAlchemy raises them, the writer queue shared with ORM transactions, and callbacks after
commit only."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError

from ecosistema.platform.db import Database, UTCDateTime, id_column_type, new_metadata
from tests.conftest import SHAPES, tables_database

metadata = new_metadata()
accounts = Table(
    "accounts",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("balance", Integer, nullable=False),
    Column("status", String(16), nullable=False, default="open"),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("tags", JSON, nullable=False),
)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

BY_ID = select(accounts).where(accounts.c.id == bindparam("id"))
DEBIT = (
    update(accounts)
    .where(accounts.c.id == bindparam("id"), accounts.c.balance >= bindparam("amount"))
    .values(balance=accounts.c.balance - bindparam("amount"))
)
TOTAL = select(func.coalesce(func.sum(accounts.c.balance), 0))


@pytest.fixture(params=SHAPES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with tables_database(request.param, tmp_path, "bank", metadata) as database:
        yield database


def _account(id: str, balance: int) -> dict[str, object]:
    return {"id": id, "balance": balance, "opened_at": T0, "tags": {"tier": "gold", "n": [1, 2]}}


async def test_written_rows_read_back_with_the_column_types_conversions(db: Database) -> None:
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 100))
        await tx.insert(accounts, [_account("b", 5), _account("c", 7)])
    # As the engine reads them ...
    async with db.read() as session:
        row = (await session.execute(BY_ID, {"id": "a"})).mappings().one()
    expected = {**_account("a", 100), "status": "open"}
    assert dict(row) == expected
    # ... and as a driver transaction reads them.
    async with db.driver_read() as tx:
        assert await tx.row(BY_ID, id="a") == expected
        assert await tx.row(BY_ID, id="zz") is None
        assert await tx.scalar(TOTAL) == 112


async def test_a_guarded_update_reports_the_rows_it_touched(db: Database) -> None:
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 10))
    async with db.driver_write() as tx:
        assert await tx.execute(DEBIT, id="a", amount=7) == 1
        assert await tx.execute(DEBIT, id="a", amount=7) == 0
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 3


async def test_an_error_rolls_back_everything_and_runs_no_callback(db: Database) -> None:
    called: list[str] = []
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 10))
    with pytest.raises(IntegrityError):
        async with db.driver_write() as tx:
            tx.after_commit(lambda: called.append("committed"))
            await tx.execute(DEBIT, id="a", amount=4)
            await tx.insert(accounts, _account("a", 1))  # the same key: refused
    assert called == []
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 10
    # The connection is usable again, and a callback runs once after a commit.
    async with db.driver_write() as tx:
        tx.after_commit(lambda: called.append("committed"))
        await tx.execute(DEBIT, id="a", amount=4)
        assert called == []
    assert called == ["committed"]


async def test_a_value_its_column_refuses_is_a_statement_error(db: Database) -> None:
    with pytest.raises(StatementError) as raised:
        async with db.driver_write() as tx:
            await tx.insert(accounts, {**_account("a", 1), "opened_at": datetime(2026, 1, 1)})
    assert isinstance(raised.value.orig, ValueError)
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 0


async def test_driver_and_session_writers_take_turns(db: Database) -> None:
    """Concurrent read-modify-write on both paths: the writer queue (SQLite) or row locks
    (PostgreSQL, ``FOR UPDATE``) keep every increment."""
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 0))
    locked = BY_ID.with_for_update() if db.is_postgres else BY_ID

    async def by_driver() -> None:
        async with db.driver_write() as tx:
            row = await tx.row(locked, id="a")
            assert row is not None
            await asyncio.sleep(0)
            await tx.execute(
                update(accounts)
                .where(accounts.c.id == bindparam("id"))
                .values(balance=bindparam("b")),
                id="a",
                b=row["balance"] + 1,
            )

    async def by_session() -> None:
        async with db.transaction() as session:
            row = (await session.execute(locked, {"id": "a"})).mappings().one()
            await asyncio.sleep(0)
            await session.execute(
                update(accounts).where(accounts.c.id == "a").values(balance=row["balance"] + 1)
            )

    await asyncio.gather(*(by_driver() if n % 2 else by_session() for n in range(40)))
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 40


async def test_a_read_snapshot_does_not_see_a_later_commit(db: Database) -> None:
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 1))
    async with db.driver_read() as reader:
        assert await reader.scalar(TOTAL) == 1
        async with db.driver_write() as tx:
            await tx.insert(accounts, _account("b", 2))
        if not db.is_postgres:  # PostgreSQL reads committed: each statement its own snapshot
            assert await reader.scalar(TOTAL) == 1
    async with db.driver_read() as reader:
        assert await reader.scalar(TOTAL) == 3


async def test_a_writer_waits_for_another_process_holding_the_lock(
    db: Database, tmp_path: Path
) -> None:
    if not db.is_sqlite:
        pytest.skip("the SQLite file lock")
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 1))
    other = sqlite3.connect(db.url.database or "", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        other.execute("COMMIT")

    releaser = asyncio.create_task(release_later())
    async with db.driver_write() as tx:
        assert await tx.execute(DEBIT, id="a", amount=1) == 1
    await releaser
    other.close()
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 0


async def test_insert_returning_rows(db: Database) -> None:
    statement = (
        insert(accounts)
        .values(
            id=bindparam("id"),
            balance=bindparam("balance"),
            status="open",
            opened_at=bindparam("at", type_=UTCDateTime()),
            tags=bindparam("tags", type_=JSON),
        )
        .returning(accounts.c.id, accounts.c.opened_at)
    )
    async with db.driver_write() as tx:
        row = await tx.row(statement, id="r", balance=3, at=T0, tags=[])
    assert row == {"id": "r", "opened_at": T0}


async def test_a_writer_cancelled_while_waiting_for_the_lock_leaves_the_connection_free(
    db: Database,
) -> None:
    if not db.is_sqlite:
        pytest.skip("the SQLite file lock")
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 2))
    other = sqlite3.connect(db.url.database or "", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def debit() -> None:
        async with db.driver_write() as tx:
            await tx.execute(DEBIT, id="a", amount=1)

    waiting = asyncio.create_task(debit())
    await asyncio.sleep(0.2)  # waiting for the other process's lock, off the event loop
    waiting.cancel()
    other.execute("COMMIT")
    with pytest.raises(asyncio.CancelledError):
        await waiting
    other.close()
    # The cancelled writer neither wrote nor kept the lock: the next one goes through.
    async with db.driver_write() as tx:
        assert await tx.execute(DEBIT, id="a", amount=2) == 1
    async with db.driver_read() as tx:
        assert await tx.scalar(TOTAL) == 0
