"""One statement API over an ORM session and a driver transaction (``statements`` in
``platform/db.py``), on SQLite and PostgreSQL: the same counts, rows, defaults and commit
callbacks whichever the code runs in, with a session's rows still the session's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import RowMapping, select
from sqlalchemy.exc import IntegrityError

from ecosistema.platform.db import (
    Database,
    DriverTransaction,
    SessionStatements,
    Statements,
    statements,
)
from tests.conftest import SHAPES, tables_database
from tests.integration.test_database_driver_transactions import (
    BY_ID,
    DEBIT,
    T0,
    TOTAL,
    _account,
    accounts,
    metadata,
)

ALL = select(accounts.c.id, accounts.c.balance).order_by(accounts.c.id)
KINDS = ("session", "driver")


@pytest.fixture(params=SHAPES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with tables_database(request.param, tmp_path, "ledger", metadata) as database:
        yield database


@asynccontextmanager
async def writing(db: Database, kind: str) -> AsyncIterator[Statements]:
    """A write transaction of ``kind``, seen through ``statements``."""
    if kind == "session":
        async with db.transaction() as session:
            yield statements(session)
    else:
        async with db.driver_write() as tx:
            yield statements(tx)


@asynccontextmanager
async def reading(db: Database, kind: str) -> AsyncIterator[Statements]:
    if kind == "session":
        async with db.read() as session:
            yield statements(session)
    else:
        async with db.driver_read() as tx:
            yield statements(tx)


async def test_a_driver_transaction_is_its_own_statements_and_a_session_is_adapted(
    db: Database,
) -> None:
    async with db.driver_write() as tx:
        assert statements(tx) is tx
        assert isinstance(tx, DriverTransaction)
    async with db.transaction() as session:
        adapted = statements(session)
        assert isinstance(adapted, SessionStatements)
        assert adapted.session is session
        assert adapted.is_postgres is db.is_postgres
    async with db.driver_read() as tx:
        assert tx.is_postgres is db.is_postgres


@pytest.mark.parametrize("kind", KINDS)
async def test_rows_written_through_either_read_back_the_same_through_both(
    db: Database, kind: str
) -> None:
    async with writing(db, kind) as tx:
        await tx.insert(accounts, _account("a", 100))
        await tx.insert(accounts, [_account("b", 5), _account("c", 7)])
        await tx.insert(accounts, [])
    # Python-side defaults are filled in by either, as a session's insert would.
    expected = {**_account("a", 100), "status": "open"}
    for reader in KINDS:
        async with reading(db, reader) as tx:
            assert dict(await tx.row(BY_ID, id="a") or {}) == expected
            assert await tx.row(BY_ID, id="zz") is None
            assert [dict(r) for r in await tx.rows(ALL)] == [
                {"id": "a", "balance": 100},
                {"id": "b", "balance": 5},
                {"id": "c", "balance": 7},
            ]
            assert await tx.scalar(TOTAL) == 112
            assert await tx.scalar(select(accounts.c.id).where(accounts.c.id == "zz")) is None


async def test_a_sessions_rows_stay_the_sessions_own(db: Database) -> None:
    """Code written for sessions may index a row by its column, not only by its name."""
    async with db.driver_write() as tx:
        await tx.insert(accounts, _account("a", 3))
    async with db.read() as session:
        row = await statements(session).row(BY_ID, id="a")
        rows = await statements(session).rows(BY_ID, id="a")
    assert isinstance(row, RowMapping)
    assert row[accounts.c.balance] == 3
    assert isinstance(rows[0], RowMapping)
    assert rows[0]["opened_at"] == T0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_guarded_update_reports_the_rows_it_touched(db: Database, kind: str) -> None:
    async with writing(db, kind) as tx:
        await tx.insert(accounts, [_account("a", 10), _account("b", 10)])
    async with writing(db, kind) as tx:
        assert await tx.execute(DEBIT, id="a", amount=7) == 1
        assert await tx.execute(DEBIT, id="a", amount=7) == 0
        await tx.executemany(DEBIT, [{"id": "a", "amount": 1}, {"id": "b", "amount": 2}])
    async with reading(db, kind) as tx:
        assert await tx.scalar(TOTAL) == 10


@pytest.mark.parametrize("kind", KINDS)
async def test_callbacks_run_once_after_a_commit_and_never_after_a_rollback(
    db: Database, kind: str
) -> None:
    called: list[str] = []

    def committed() -> None:
        called.append("committed")

    with pytest.raises(IntegrityError):
        async with writing(db, kind) as tx:
            tx.after_commit(committed)
            await tx.insert(accounts, _account("a", 1))
            await tx.insert(accounts, _account("a", 2))  # the same key: refused
    assert called == []
    async with reading(db, kind) as tx:
        assert await tx.scalar(TOTAL) == 0
    async with writing(db, kind) as tx:
        tx.after_commit(committed)
        tx.after_commit(committed)
        await tx.insert(accounts, _account("a", 1))
        assert called == []
    assert called == ["committed"]


async def test_a_sessions_callbacks_are_its_transactions(db: Database) -> None:
    """Views of one session share its transaction's callbacks; what a rolled-back transaction
    asked for is forgotten with it."""
    called: list[str] = []

    def second() -> None:
        called.append("second")

    async with db.writer_sessions() as session:
        await session.begin()
        statements(session).after_commit(lambda: called.append("first"))
        await session.rollback()
        await session.begin()
        statements(session).after_commit(second)
        statements(session).after_commit(second)
        await statements(session).insert(accounts, _account("a", 1))
        await session.commit()
    assert called == ["second"]
