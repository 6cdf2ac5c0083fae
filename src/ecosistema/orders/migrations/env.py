"""Alembic environment for orders: delegates to the platform's one environment."""

from ecosistema.orders.models import metadata
from ecosistema.platform.migrations import run_migrations

run_migrations(metadata)
