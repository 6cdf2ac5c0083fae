"""The sandbox keeps a card's expiry beside its brand and last four digits, so a token given
again describes the card as Stripe's PaymentMethod would.

Revision ID: 0003_payments_sandbox_expiry
Revises: 0002_payments_encrypt_buyer
Create Date: 2026-11-28 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_payments_sandbox_expiry"
down_revision: str | Sequence[str] | None = "0002_payments_encrypt_buyer"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandbox_cards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exp_month", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("exp_year", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_cards", schema=None) as batch_op:
        batch_op.drop_column("exp_year")
        batch_op.drop_column("exp_month")
