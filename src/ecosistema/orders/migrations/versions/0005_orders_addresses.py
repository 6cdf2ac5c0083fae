"""Orders keep the shipping and billing addresses given at checkout, encrypted.

Revision ID: 0005_orders_addresses
Revises: 0004_orders_voucher_use_email
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_orders_addresses"
down_revision: str | Sequence[str] | None = "0004_orders_voucher_use_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("shipping_address_encrypted", sa.Text(), nullable=True))
        batch.add_column(sa.Column("billing_address_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN on both dialects (SQLite has it since 3.35, which RETURNING
    # needs already), not a batch rebuild: on SQLite a rebuild drops and recreates orders, which
    # the foreign keys of order lines, history, fulfilments and voucher uses refuse once they
    # have rows, and foreign keys cannot be turned off inside the migration's transaction.
    op.drop_column("orders", "billing_address_encrypted")
    op.drop_column("orders", "shipping_address_encrypted")
