"""Orders are indexed by when they last changed, for incremental sync (``updated_since``,
``sort=updated_at``), everyone's and a customer's own.

Revision ID: 0007_orders_updated_at
Revises: 0006_orders_cart_addresses
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_orders_updated_at"
down_revision: str | Sequence[str] | None = "0006_orders_cart_addresses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.create_index("ix_orders_updated_at_id", ["updated_at", "id"], unique=False)
        batch.create_index(
            "ix_orders_customer_id_updated_at", ["customer_id", "updated_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_customer_id_updated_at")
        batch.drop_index("ix_orders_updated_at_id")
