"""Reads on the database driver (``Database.compile_read`` and ``Database.fetch``), on SQLite
and PostgreSQL: the same rows and type conversions as the engine, one compilation per
statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import JSON, Column, Integer, Table, bindparam, insert, select

from ecosistema.platform.db import Database, UTCDateTime, id_column_type, new_metadata
from tests.conftest import SHAPES, tables_database

metadata = new_metadata()
events = Table(
    "events",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("weight", Integer, nullable=False),
)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

SINCE = (
    select(events.c.id, events.c.weight)
    .where(events.c.at >= bindparam("since"))
    .order_by(events.c.at)
    .limit(2)
)
BY_ATTRIBUTE = select(events.c.id).where(
    events.c.attributes[bindparam("name", type_=JSON.JSONStrIndexType())].as_string()
    == bindparam("value")
)


@pytest.fixture(params=SHAPES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with tables_database(request.param, tmp_path, "events", metadata) as database:
        async with database.transaction() as session:
            await session.execute(
                insert(events),
                [
                    {
                        "id": f"e{n}",
                        "at": T0 + timedelta(hours=n),
                        "attributes": {"colour": colour},
                        "weight": n * 10,
                    }
                    for n, colour in enumerate(["red", "blue", "red", "green"])
                ],
            )
        yield database


async def test_driver_read_converts_parameters_as_the_column_types_do(db: Database) -> None:
    # A timezone-aware datetime is stored text on SQLite and timestamptz on PostgreSQL; the
    # statement's fixed LIMIT needs no value from the caller.
    rows = await db.fetch(db.compile_read(SINCE), since=T0 + timedelta(minutes=30))
    assert [tuple(r) for r in rows] == [("e1", 10), ("e2", 20)]


async def test_driver_read_turns_a_json_key_into_the_dialects_path(db: Database) -> None:
    rows = await db.fetch(db.compile_read(BY_ATTRIBUTE), name="colour", value="red")
    assert sorted(r[0] for r in rows) == ["e0", "e2"]


async def test_driver_read_sees_a_write_committed_just_before(db: Database) -> None:
    query = db.compile_read(SINCE)
    assert [r[0] for r in await db.fetch(query, since=T0 + timedelta(hours=3))] == ["e3"]
    async with db.transaction() as session:
        await session.execute(
            insert(events).values(id="e4", at=T0 + timedelta(hours=4), attributes={}, weight=5)
        )
    assert [r[0] for r in await db.fetch(query, since=T0 + timedelta(hours=3))] == ["e3", "e4"]


async def test_a_statement_is_compiled_once_per_database(db: Database) -> None:
    assert db.compile_read(SINCE) is db.compile_read(SINCE)


async def test_an_in_list_parameter_is_refused_with_the_way_out(db: Database) -> None:
    expanding = select(events.c.id).where(events.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="one per item"):
        db.compile_read(expanding)
