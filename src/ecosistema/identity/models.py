"""The identity service's tables. Personal data (email, name, phone, addresses, TOTP secrets,
private signing keys) is stored field-encrypted; email has a blind index for lookup."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from ecosistema.platform.db import UTCDateTime, id_column_type, new_metadata
from ecosistema.platform.events import Outbox

metadata = new_metadata()
outbox = Outbox("identity", metadata)

users = Table(
    "users",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("email_encrypted", Text, nullable=False),
    Column("email_index", String(128), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("email_verified_at", UTCDateTime()),
    Column("password_changed_at", UTCDateTime(), nullable=False),
    Column("totp_secret_encrypted", Text),
    Column("totp_pending_secret_encrypted", Text),
    Column("totp_enabled_at", UTCDateTime()),
    Column("totp_last_step", BigInteger),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_users_role_status", "role", "status"),
    Index("ix_users_created_at_id", "created_at", "id"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("user_id", id_column_type(), ForeignKey("users.id"), primary_key=True),
    Column("name_encrypted", Text),
    Column("phone_encrypted", Text),
    Column("addresses_encrypted", Text),
    Column("locale", String(35), nullable=False),
    Column("preferences", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

user_tokens = Table(
    "user_tokens",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("user_id", id_column_type(), ForeignKey("users.id"), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("user_id", id_column_type(), ForeignKey("users.id"), nullable=False, index=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
    Column("revoked_reason", String(32)),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("session_id", id_column_type(), ForeignKey("sessions.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("issued_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("rotated_at", UTCDateTime()),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("user_id", id_column_type(), ForeignKey("users.id"), nullable=False, index=True),
    Column("code_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("user_id", id_column_type(), ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("public_key_pem", Text, nullable=False),
    Column("private_key_encrypted", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("rotated_at", UTCDateTime()),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("id", id_column_type(), nullable=False, unique=True),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("type", String(64), nullable=False),
    Column("actor_id", id_column_type()),
    Column("user_id", id_column_type()),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    Column("details", JSON, nullable=False),
    Index("ix_audit_events_type_position", "type", "position"),
    Index("ix_audit_events_user_id_position", "user_id", "position"),
    Index("ix_audit_events_actor_id_position", "actor_id", "position"),
    Index("ix_audit_events_occurred_at", "occurred_at"),
)
