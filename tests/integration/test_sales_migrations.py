"""Sales' Alembic migration builds exactly the tables its models declare, on both shapes."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from ecosistema.sales import descriptor as sales_service
from ecosistema.sales.models import metadata


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = Database(
        "sales",
        settings.database_url_for("sales"),
        schema_prefix=settings.database_schema_prefix,
    )
    try:
        await db.migrate(sales_service.migrations)
        await db.migrate(sales_service.migrations)  # a second run is a no-op

        def _diff(conn: Connection) -> tuple[list[Any], set[str]]:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_schemas": False}
            )
            tables = set(inspect(conn).get_table_names(schema=db.schema))
            return compare_metadata(context, metadata), tables

        async with db.engine.connect() as conn:
            diff, tables = await conn.run_sync(_diff)
        assert diff == []
        assert set(metadata.tables) <= tables
    finally:
        await db.drop_schema()
        await db.dispose()
