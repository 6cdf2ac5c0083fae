"""Sales' Alembic migrations build exactly the tables its models declare, on both shapes, and
upgrade an existing database: repeated open leads closed as duplicates before the one-open-lead-
per-email index, a lease table made at run time by earlier versions kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ecosistema.ml.lease import Lease, lease_table
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from ecosistema.sales import descriptor as sales_service
from ecosistema.sales.models import activities, leads, metadata


def _database(settings: Settings) -> Database:
    return Database(
        "sales",
        settings.database_url_for("sales"),
        schema_prefix=settings.database_schema_prefix,
    )


def _compare(conn: Connection, schema: str | None) -> tuple[list[Any], set[str]]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "include_schemas": False}
    )
    tables = set(inspect(conn).get_table_names(schema=schema))
    return compare_metadata(context, metadata), tables


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = _database(settings)
    try:
        await db.migrate(sales_service.migrations)
        await db.migrate(sales_service.migrations)  # a second run is a no-op
        async with db.engine.connect() as conn:
            diff, tables = await conn.run_sync(_compare, db.schema)
        assert diff == []
        assert set(metadata.tables) <= tables
    finally:
        await db.drop_schema()
        await db.dispose()


def _lead(lead_id: str, index: str | None, status: str, updated: datetime) -> dict[str, Any]:
    return {
        "id": lead_id,
        "name_encrypted": "x",
        "email_index": index,
        "attributes": {},
        "status": status,
        "score_rank": -1,
        "factors": [],
        "features": {},
        "contacts": 0,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "updated_at": updated,
    }


async def test_upgrade_closes_repeated_open_leads_as_duplicates_keeping_the_last_worked(
    settings: Settings,
) -> None:
    db = _database(settings)
    day = datetime(2026, 3, 1, tzinfo=UTC)
    try:
        await db.migrate(sales_service.migrations, "0001_sales")
        async with db.transaction() as session:
            await session.execute(
                insert(leads),
                [
                    _lead("old", "ana", "new", day),
                    _lead("worked", "ana", "qualified", day + timedelta(days=2)),
                    _lead("middle", "ana", "contacted", day + timedelta(days=1)),
                    _lead("won", "ana", "won", day + timedelta(days=3)),
                    _lead("luis", "luis", "new", day),
                    _lead("phone1", None, "new", day),
                    _lead("phone2", None, "new", day),
                ],
            )
        await db.migrate(sales_service.migrations)
        async with db.read() as session:
            status = dict((await session.execute(select(leads.c.id, leads.c.status))).all())
            notes = (
                await session.execute(
                    select(activities.c.lead_id, activities.c.kind, activities.c.details)
                )
            ).all()
        assert status == {
            "old": "duplicate",
            "worked": "qualified",
            "middle": "duplicate",
            "won": "won",
            "luis": "new",
            "phone1": "new",
            "phone2": "new",
        }
        assert sorted((n.lead_id, n.kind, n.details["kept_lead_id"]) for n in notes) == [
            ("middle", "status", "worked"),
            ("old", "status", "worked"),
        ]
        assert {n.details["from"] for n in notes} == {"new", "contacted"}

        # From now on the database itself refuses a second open lead with that email.
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await session.execute(insert(leads).values(**_lead("again", "ana", "new", day)))
        async with db.transaction() as session:
            await session.execute(insert(leads).values(**_lead("lost", "ana", "lost", day)))
            await session.execute(insert(leads).values(**_lead("phone3", None, "new", day)))
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_a_database_whose_lease_table_was_made_at_run_time_upgrades_cleanly(
    settings: Settings,
) -> None:
    db = _database(settings)
    try:
        await db.migrate(sales_service.migrations, "0002_sales_open_email")
        # As earlier versions did on first use: the table made outside the migrations.
        async with db.engine.begin() as conn:
            await conn.run_sync(lease_table(MetaData()).create)
        assert await Lease(db, "lead-scoring:default-model", holder="before").acquire()
        await db.migrate(sales_service.migrations)
        assert await Lease(db, "lead-scoring:default-model").holder_now() == "before"
        async with db.engine.connect() as conn:
            diff, _ = await conn.run_sync(_compare, db.schema)
        assert diff == []
    finally:
        await db.drop_schema()
        await db.dispose()
