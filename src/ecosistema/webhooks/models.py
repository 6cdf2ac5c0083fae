"""The webhooks service's tables: subscriptions, the events offered to them, one delivery per
event and subscription, and every attempt at sending a delivery."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ecosistema.platform.db import UTCDateTime, id_column_type, new_metadata
from ecosistema.platform.events import Outbox

metadata = new_metadata()
outbox = Outbox("webhooks", metadata)

subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("description", String(500), nullable=False),
    Column("event_types", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    # Field-encrypted: the platform signs with it, so it cannot be a hash.
    Column("secret_encrypted", Text, nullable=False),
    Column("previous_secret_encrypted", Text),
    Column("previous_secret_expires_at", UTCDateTime()),
    Column("disabled_reason", String(500)),
    Column("disabled_at", UTCDateTime()),
    # Start of the current run of failed attempts; cleared by any success.
    Column("failing_since", UTCDateTime()),
    Column("created_by", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_subscriptions_status", "status"),
)

events = Table(
    "webhook_events",
    metadata,
    # The bus event's id: the same on every delivery and replay, so receivers can dedupe.
    Column("id", String(64), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("created", UTCDateTime(), nullable=False),
    Column("data", JSON, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)

deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column(
        "subscription_id",
        id_column_type(),
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_id", String(64), ForeignKey("webhook_events.id"), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt_count", Integer, nullable=False),
    # Failed attempts since the delivery was created or last replayed (drives the backoff).
    Column("failures", Integer, nullable=False),
    Column("retry", Boolean, nullable=False),
    Column("next_attempt_at", UTCDateTime()),
    Column("deadline", UTCDateTime(), nullable=False),
    # A sender holds a delivery while it sends: a token and a lease that outlives the timeout.
    Column("claim_token", String(32)),
    Column("claimed_until", UTCDateTime()),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("delivered_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("subscription_id", "event_id"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_created_at_id", "created_at", "id"),
)

attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column(
        "delivery_id",
        id_column_type(),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("number", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("succeeded", Boolean, nullable=False),
    Column("status_code", Integer),
    Column("response_headers", JSON, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("error", String(500)),
    UniqueConstraint("delivery_id", "number"),
)
