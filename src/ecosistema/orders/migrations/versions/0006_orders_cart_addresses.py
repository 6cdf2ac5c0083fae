"""Carts keep a shipping and a billing address before checkout, encrypted like the orders' ones.

Revision ID: 0006_orders_cart_addresses
Revises: 0005_orders_addresses
Create Date: 2026-11-29 03:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_orders_cart_addresses"
down_revision: str | Sequence[str] | None = "0005_orders_addresses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("carts") as batch:
        batch.add_column(sa.Column("shipping_address_encrypted", sa.Text(), nullable=True))
        batch.add_column(sa.Column("billing_address_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("carts") as batch:
        batch.drop_column("billing_address_encrypted")
        batch.drop_column("shipping_address_encrypted")
