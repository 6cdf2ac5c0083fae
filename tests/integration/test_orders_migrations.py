"""Orders' Alembic migration builds exactly the tables its models declare, on both shapes."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from ecosistema.orders import descriptor as orders_service
from ecosistema.orders.models import metadata, order_numbers
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = Database(
        "orders",
        settings.database_url_for("orders"),
        schema_prefix=settings.database_schema_prefix,
    )
    try:
        await db.migrate(orders_service.migrations)
        await db.migrate(orders_service.migrations)  # a second run is a no-op

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
        async with db.read() as session:
            assert await session.scalar(select(order_numbers.c.last_number)) == 100_000
    finally:
        await db.drop_schema()
        await db.dispose()
