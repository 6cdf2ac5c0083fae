"""The ML training lease (``ml_leases``): one replica trains the default model at a time.

Earlier versions created this table at run time on first use; a database that already has it
keeps it as it is (same columns), so the upgrade only records that migrations now own it.

Revision ID: 0003_sales_ml_leases
Revises: 0002_sales_open_email
Create Date: 2026-11-28 12:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_sales_ml_leases"
down_revision: str | Sequence[str] | None = "0002_sales_open_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ml_leases"):
        return
    op.create_table(
        "ml_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_ml_leases")),
    )


def downgrade() -> None:
    op.drop_table("ml_leases")
