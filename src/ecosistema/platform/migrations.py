"""The one Alembic environment every service's ``migrations/env.py`` delegates to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import context
from sqlalchemy import MetaData

if TYPE_CHECKING:
    from ecosistema.platform.crypto import FieldCipher


def run_migrations(metadata: MetaData) -> None:
    """Run migrations on the connection ``Database.migrate`` hands over (online mode only)."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("migrations run through `ecosistema migrate`, not the alembic CLI")
    schema = config.attributes.get("schema")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def migration_cipher() -> FieldCipher:
    """The field cipher for a data migration: the runtime's, or one built from the settings
    when migrations run without a runtime."""
    from ecosistema.platform.config import Settings
    from ecosistema.platform.crypto import FieldCipher, load_cipher

    cipher = context.config.attributes.get("cipher")
    if isinstance(cipher, FieldCipher):
        return cipher
    return load_cipher(Settings())
