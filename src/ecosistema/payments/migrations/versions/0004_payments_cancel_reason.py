"""A canceled payment keeps why: the reason given to POST payments/{id}/cancel, or that its
order was cancelled.

Revision ID: 0004_payments_cancel_reason
Revises: 0003_payments_sandbox_expiry
Create Date: 2026-11-29 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_payments_cancel_reason"
down_revision: str | Sequence[str] | None = "0003_payments_sandbox_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancellation_reason", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("cancellation_reason")
