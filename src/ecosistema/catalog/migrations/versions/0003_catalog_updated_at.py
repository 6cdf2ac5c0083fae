"""An index for listing products changed since an instant, oldest change first
(``GET /products?updated_since=...&sort=updated_at``), so an integration's incremental sync
reads only what changed.

Revision ID: 0003_catalog_updated_at
Revises: 0002_catalog_idempotency_keys
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_catalog_updated_at"
down_revision: str | Sequence[str] | None = "0002_catalog_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_products_status_updated_at", "products", ["status", "updated_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_products_status_updated_at", table_name="products")
