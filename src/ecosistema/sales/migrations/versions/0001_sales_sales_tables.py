"""Sales tables: leads (contact data encrypted, email blind-indexed), lead activities, the sales
users sales has heard of, training runs, and the outbox and processed-events tables.

Revision ID: 0001_sales
Revises:
Create Date: 2026-11-28 05:33:49.246487
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_sales"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lead_activities",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("lead_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("actor_id", sa.String(length=32), nullable=True),
        sa.Column("event_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_activities")),
    )
    with op.batch_alter_table("lead_activities", schema=None) as batch_op:
        batch_op.create_index("ix_lead_activities_event", ["event_id", "lead_id"], unique=True)
        batch_op.create_index(
            "ix_lead_activities_lead", ["lead_id", "occurred_at", "id"], unique=False
        )

    op.create_table(
        "leads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name_encrypted", sa.Text(), nullable=False),
        sa.Column("email_encrypted", sa.Text(), nullable=True),
        sa.Column("email_index", sa.String(length=128), nullable=True),
        sa.Column("phone_encrypted", sa.Text(), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=50), nullable=True),
        sa.Column("channel", sa.String(length=50), nullable=True),
        sa.Column("campaign", sa.String(length=100), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("score_rank", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("factors", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("contacts", sa.Integer(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leads")),
    )
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index("ix_leads_created", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_leads_email_index", ["email_index"], unique=False)
        batch_op.create_index("ix_leads_model_version", ["model_version"], unique=False)
        batch_op.create_index(
            "ix_leads_owner_rank", ["owner_id", "score_rank", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_leads_rank", ["score_rank", "created_at", "id"], unique=False)
        batch_op.create_index("ix_leads_status_closed", ["status", "closed_at"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("position", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=50), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_unpublished", ["published_at", "position"], unique=False)

    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_processed_events")),
    )
    op.create_table(
        "sales_users",
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("email_index", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sales_users")),
    )
    with op.batch_alter_table("sales_users", schema=None) as batch_op:
        batch_op.create_index("ix_sales_users_email_index", ["email_index"], unique=False)

    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.create_index("ix_training_runs_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_training_runs_created")

    op.drop_table("training_runs")
    with op.batch_alter_table("sales_users", schema=None) as batch_op:
        batch_op.drop_index("ix_sales_users_email_index")

    op.drop_table("sales_users")
    op.drop_table("processed_events")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_unpublished")

    op.drop_table("outbox")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index("ix_leads_status_closed")
        batch_op.drop_index("ix_leads_rank")
        batch_op.drop_index("ix_leads_owner_rank")
        batch_op.drop_index("ix_leads_model_version")
        batch_op.drop_index("ix_leads_email_index")
        batch_op.drop_index("ix_leads_created")

    op.drop_table("leads")
    with op.batch_alter_table("lead_activities", schema=None) as batch_op:
        batch_op.drop_index("ix_lead_activities_lead")
        batch_op.drop_index("ix_lead_activities_event")

    op.drop_table("lead_activities")
