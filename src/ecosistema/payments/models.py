"""The payments service's tables. Card numbers never reach them: only the provider's token,
brand, last four digits and expiry. The buyer's personal data (email, billing and shipping
address) is stored field-encrypted, on payments and on invoices."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ecosistema.platform.db import UTCDateTime, id_column_type, new_metadata
from ecosistema.platform.events import Outbox
from ecosistema.platform.idempotency import idempotency_table

metadata = new_metadata()
outbox = Outbox("payments", metadata)
idempotency = idempotency_table(metadata)

payments = Table(
    "payments",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("order_id", String(64), nullable=False),
    # Set while the payment is not canceled: one live payment per order, even under races.
    Column("live_order_id", String(64), unique=True),
    Column("customer_id", String(64)),
    Column("created_by", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("capture_method", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_capturable", BigInteger, nullable=False),
    Column("captured_amount", BigInteger, nullable=False),
    Column("refunded_amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_ref", String(255)),
    Column("attempt", Integer, nullable=False),
    Column("card", JSON),
    Column("failure_code", String(64)),
    Column("failure_message", String(255)),
    Column("next_action", JSON),
    # Why a canceled payment was canceled (the caller's reason, or its order's cancellation).
    Column("cancellation_reason", String(255)),
    # While ``processing``: the provider call under way, so it can be resumed with the same
    # idempotency key if the process stops before recording its answer.
    Column("pending_operation", String(16)),
    Column("pending_amount", BigInteger),
    Column("resume_after", UTCDateTime()),
    # The order as charged, without the buyer's personal data, which is in ``buyer_encrypted``
    # (JSON of email, billing_address, shipping_address).
    Column("order_snapshot", JSON, nullable=False),
    Column("buyer_encrypted", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("captured_at", UTCDateTime()),
    Index("ix_payments_order_id", "order_id"),
    Index("ix_payments_customer_id_created_at", "customer_id", "created_at"),
    Index("ix_payments_provider_ref", "provider", "provider_ref"),
    Index("ix_payments_captured_at", "captured_at"),
    Index("ix_payments_status_resume_after", "status", "resume_after"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("payment_id", id_column_type(), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(255), nullable=False),
    Column("restock", Boolean, nullable=False),
    Column("lines", JSON, nullable=False),
    # What a succeeded refund with ``restock`` put back in stock (null before it succeeds).
    Column("restock_lines", JSON),
    Column("provider_ref", String(255)),
    Column("failure_message", String(255)),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime()),
    Index("ix_refunds_payment_id", "payment_id"),
    Index("ix_refunds_completed_at", "completed_at"),
)

journal = Table(
    "journal_entries",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("transaction_id", id_column_type(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("payment_id", id_column_type(), nullable=False),
    Column("refund_id", id_column_type()),
    Column("provider", String(32), nullable=False),
    Column("provider_ref", String(255)),
    Column("account", String(32), nullable=False),
    Column("debit", BigInteger, nullable=False),
    Column("credit", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_journal_entries_transaction_id", "transaction_id"),
    Index("ix_journal_entries_payment_id", "payment_id"),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("number", String(32), nullable=False, unique=True),
    Column("series", String(8), nullable=False),
    Column("year", Integer, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("payment_id", id_column_type(), nullable=False),
    Column("refund_id", id_column_type(), unique=True),
    Column("order_id", String(64), nullable=False),
    Column("customer_id", String(64)),
    Column("currency", String(3), nullable=False),
    Column("seller", JSON, nullable=False),
    # The buyer as printed on the document (schemas.Party as JSON), field-encrypted.
    Column("buyer_encrypted", Text, nullable=False),
    Column("lines", JSON, nullable=False),
    Column("tax_breakdown", JSON, nullable=False),
    Column("subtotal", BigInteger, nullable=False),
    Column("tax_total", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("related_invoice_id", id_column_type()),
    Column("issued_at", UTCDateTime(), nullable=False),
    UniqueConstraint("series", "year", "sequence"),
    Index("ix_invoices_customer_id_issued_at", "customer_id", "issued_at"),
    Index("ix_invoices_payment_id", "payment_id"),
)

document_counters = Table(
    "document_counters",
    metadata,
    Column("series", String(8), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("last_value", Integer, nullable=False),
)

provider_events = Table(
    "provider_events",
    metadata,
    Column("provider", String(32), primary_key=True),
    Column("event_id", String(255), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
)

# The sandbox provider's own books, as a real provider would keep them apart from ours.
sandbox_cards = Table(
    "sandbox_cards",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("behaviour", String(32), nullable=False),
    Column("brand", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    # Null on cards tokenized before the sandbox kept the expiry.
    Column("exp_month", Integer, nullable=True),
    Column("exp_year", Integer, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

sandbox_intents = Table(
    "sandbox_intents",
    metadata,
    Column("ref", String(64), primary_key=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("token", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("capture", Boolean, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

sandbox_ledger = Table(
    "sandbox_ledger",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("intent_ref", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("description", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_sandbox_ledger_intent_ref", "intent_ref"),
)
