"""Voucher uses carry the blind index of their order's email address. A checkout now counts
its voucher's use before it reserves stock and writes the order, so a per-customer limit can
no longer find a use's address through its order while the checkout is under way. Existing
uses take their order's index.

Revision ID: 0004_orders_voucher_use_email
Revises: 0003_orders_voucher_currency
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_orders_voucher_use_email"
down_revision: str | Sequence[str] | None = "0003_orders_voucher_currency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("voucher_usages") as batch:
        batch.add_column(sa.Column("email_index", sa.String(64), nullable=True))
        batch.create_index(
            "ix_voucher_usages_voucher_id_email_index", ["voucher_id", "email_index"]
        )
    usages = sa.table(
        "voucher_usages", sa.column("order_id", sa.String()), sa.column("email_index", sa.String())
    )
    orders = sa.table("orders", sa.column("id", sa.String()), sa.column("email_index", sa.String()))
    op.execute(
        sa.update(usages).values(
            email_index=sa.select(orders.c.email_index)
            .where(orders.c.id == usages.c.order_id)
            .scalar_subquery()
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("voucher_usages") as batch:
        batch.drop_index("ix_voucher_usages_voucher_id_email_index")
        batch.drop_column("email_index")
