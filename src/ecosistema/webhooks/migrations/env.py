"""Alembic environment for webhooks: delegates to the platform's one environment."""

from ecosistema.platform.migrations import run_migrations
from ecosistema.webhooks.models import metadata

run_migrations(metadata)
