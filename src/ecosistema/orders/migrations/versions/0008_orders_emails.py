"""Mail to buyers is queued in ``order_emails``; orders say whether their buyer is mailed.

Revision ID: 0008_orders_emails
Revises: 0007_orders_updated_at
Create Date: 2026-11-29 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_orders_emails"
down_revision: str | Sequence[str] | None = "0007_orders_updated_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Orders placed before this revision are mailed about their later changes, as new ones are.
    # A constant default lets SQLite add the column in place: an expression (sa.true()) makes the
    # batch rebuild the table, which its order lines' foreign key refuses.
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column(
                "notify_buyer",
                sa.Boolean(),
                nullable=False,
                server_default=sa.true() if postgres else "1",
            )
        )
    op.create_table(
        "order_emails",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_emails")),
        sa.UniqueConstraint("event_id", name=op.f("uq_order_emails_event_id")),
    )
    with op.batch_alter_table("order_emails") as batch:
        batch.create_index("ix_order_emails_order_id", ["order_id"], unique=False)
        batch.create_index(
            "ix_order_emails_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("order_emails")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("notify_buyer")
