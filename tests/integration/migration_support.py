"""What the services' migration tests share: a service's database on the test's shape, the
drift between its migrated schema and its models, and going down to a revision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database


def service_database(settings: Settings, service: str) -> Database:
    return Database(
        service,
        settings.database_url_for(service),
        schema_prefix=settings.database_schema_prefix,
    )


async def schema_drift(
    db: Database, metadata: MetaData, include_object: Callable[..., bool] | None = None
) -> tuple[list[Any], set[str]]:
    """What autogenerate would change to reach ``metadata``, and the tables there are."""

    def _diff(conn: Connection) -> tuple[list[Any], set[str]]:
        opts: dict[str, Any] = {"compare_type": True, "include_schemas": False}
        if include_object is not None:
            opts["include_object"] = include_object
        context = MigrationContext.configure(conn, opts=opts)
        tables = set(inspect(conn).get_table_names(schema=db.schema))
        return compare_metadata(context, metadata), tables

    async with db.engine.connect() as conn:
        return await conn.run_sync(_diff)


async def downgrade(db: Database, migrations: Path, revision: str) -> None:
    """Take the schema down to ``revision``, as ``Database.migrate`` takes it up."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    async with db.engine.connect() as conn:

        def _run(sync_conn: Connection) -> None:
            config.attributes["connection"] = sync_conn
            config.attributes["schema"] = db.schema
            command.downgrade(config, revision)

        await conn.run_sync(_run)
        await conn.commit()


async def columns_of(db: Database, table: str) -> set[str]:
    async with db.engine.connect() as conn:
        found = await conn.run_sync(
            lambda sync_conn: inspect(sync_conn).get_columns(table, schema=db.schema)
        )
    return {column["name"] for column in found}
