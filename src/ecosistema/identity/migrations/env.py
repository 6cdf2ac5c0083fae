"""Alembic environment for identity: delegates to the platform's one environment."""

from ecosistema.identity.models import metadata
from ecosistema.platform.migrations import run_migrations

run_migrations(metadata)
