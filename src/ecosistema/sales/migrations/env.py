"""Alembic environment for sales: delegates to the platform's one environment."""

from ecosistema.platform.migrations import run_migrations
from ecosistema.sales.models import metadata

run_migrations(metadata)
