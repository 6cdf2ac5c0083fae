"""Alembic environment for catalog: delegates to the platform's one environment."""

from ecosistema.catalog.models import metadata
from ecosistema.platform.migrations import run_migrations

run_migrations(metadata)
