"""A refund keeps the units it put back in stock, so a refund of all that was left says which
units came back.

Revision ID: 0005_payments_restock_lines
Revises: 0004_payments_cancel_reason
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_payments_restock_lines"
down_revision: str | Sequence[str] | None = "0004_payments_cancel_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("restock_lines", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("restock_lines")
