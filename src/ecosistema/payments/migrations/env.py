"""Alembic environment for payments: delegates to the platform's one environment."""

from ecosistema.payments.models import metadata
from ecosistema.platform.migrations import run_migrations

run_migrations(metadata)
