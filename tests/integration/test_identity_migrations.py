"""Identity's Alembic migration builds exactly the tables its models declare, on both shapes."""

from __future__ import annotations

from ecosistema.identity import descriptor as identity_service
from ecosistema.identity.models import metadata
from ecosistema.platform.config import Settings
from tests.integration.migration_support import schema_drift, service_database


async def test_migration_creates_the_models_tables_with_no_drift(settings: Settings) -> None:
    db = service_database(settings, "identity")
    try:
        await db.migrate(identity_service.migrations)
        await db.migrate(identity_service.migrations)  # a second run is a no-op
        diff, tables = await schema_drift(db, metadata)
        assert diff == []
        assert set(metadata.tables) <= tables
        assert {"outbox", "processed_events", "users", "audit_events"} <= tables
    finally:
        await db.drop_schema()
        await db.dispose()
