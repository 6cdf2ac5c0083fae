"""Stock movements name the variant they moved, not only its SKU: a variant deleted and a new
one made with the same SKU start clean, its movements no longer read as the new one's. Existing
movements are given the variant that has their SKU now.

Revision ID: 0005_catalog_movements_variant
Revises: 0004_catalog_search_folding
Create Date: 2026-11-29 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_catalog_movements_variant"
down_revision: str | Sequence[str] | None = "0004_catalog_search_folding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stock_movements", sa.Column("variant_id", sa.String(32), nullable=True))
    op.execute(
        "UPDATE stock_movements SET variant_id = "
        "(SELECT variants.id FROM variants WHERE variants.sku = stock_movements.sku)"
    )


def downgrade() -> None:
    with op.batch_alter_table("stock_movements") as batch:
        batch.drop_column("variant_id")
