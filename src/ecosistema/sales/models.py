"""The sales service's tables: leads (contact data field-encrypted, email blind-indexed), their
activity timeline, the sales users it has heard of, training runs, the ML training lease, and
its outbox."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Index, Integer, String, Table, Text, text

from ecosistema.ml.lease import lease_table
from ecosistema.platform.db import UTCDateTime, id_column_type, new_metadata
from ecosistema.platform.events import Outbox
from ecosistema.sales.domain import OPEN

metadata = new_metadata()
outbox = Outbox("sales", metadata)

# The rows the one-open-lead-per-email index covers; ``ON CONFLICT`` names the same predicate.
OPEN_LEAD = text(f"status IN ({', '.join(repr(s.value) for s in sorted(OPEN))})")

leads = Table(
    "leads",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("name_encrypted", Text, nullable=False),
    Column("email_encrypted", Text),
    Column("email_index", String(128)),
    Column("phone_encrypted", Text),
    Column("company", String(200)),
    Column("source", String(50)),
    Column("channel", String(50)),
    Column("campaign", String(100)),
    Column("message", Text),
    Column("attributes", JSON, nullable=False),
    Column("owner_id", id_column_type()),
    Column("status", String(16), nullable=False),
    # The score as the model gave it; ``score_rank`` is the same with -1 for "not scored yet",
    # so score ordering and keyset cursors never meet a NULL.
    Column("score", Integer),
    Column("score_rank", Integer, nullable=False),
    Column("probability", Float),
    Column("model_version", String(32)),
    Column("factors", JSON, nullable=False),
    # The exact model inputs of the last scoring: re-scoring and retraining read these.
    Column("features", JSON, nullable=False),
    Column("contacts", Integer, nullable=False),
    Column("scored_at", UTCDateTime()),
    Column("closed_at", UTCDateTime()),
    Column("created_by", id_column_type()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_leads_email_index", "email_index"),
    Index("ix_leads_owner_rank", "owner_id", "score_rank", "created_at", "id"),
    Index("ix_leads_rank", "score_rank", "created_at", "id"),
    Index("ix_leads_created", "created_at", "id"),
    Index("ix_leads_model_version", "model_version"),
    Index("ix_leads_status_closed", "status", "closed_at"),
    # One open lead per email, whatever the races between writers (NULL emails never collide).
    Index(
        "ux_leads_open_email",
        "email_index",
        unique=True,
        sqlite_where=OPEN_LEAD,
        postgresql_where=OPEN_LEAD,
    ),
)

activities = Table(
    "lead_activities",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("lead_id", id_column_type(), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("body", Text),
    Column("details", JSON, nullable=False),
    # A user id for logged activities; None for what the platform saw.
    Column("actor_id", id_column_type()),
    # The platform event an activity came from: a redelivered event adds nothing twice.
    Column("event_id", String(64)),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Index("ix_lead_activities_lead", "lead_id", "occurred_at", "id"),
    Index("ix_lead_activities_event", "event_id", "lead_id", unique=True),
)

sales_users = Table(
    "sales_users",
    metadata,
    Column("user_id", id_column_type(), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("email_index", String(128)),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_sales_users_email_index", "email_index"),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("params", JSON, nullable=False),
    Column("result", JSON),
    Column("error", Text),
    Column("requested_by", id_column_type()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Index("ix_training_runs_created", "created_at"),
)

# The lease that lets one replica train the default model (``ecosistema.ml.Lease``).
ml_leases = lease_table(metadata)
