"""The orders service's tables: carts, orders and their lines, fulfilments, history, vouchers
and their usage, tax rates, shipping methods, and the idempotency keys of checkout. The buyer's
email is stored field-encrypted; orders carry its blind index for exact-match lookups."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
    true,
)

from ecosistema.platform.db import UTCDateTime, id_column_type, new_metadata
from ecosistema.platform.events import Outbox
from ecosistema.platform.idempotency import idempotency_table

metadata = new_metadata()

# Amounts in minor units, up to 10^12: 64 bits on PostgreSQL (SQLite's INTEGER always is).
MONEY = BigInteger().with_variant(Integer(), "sqlite")
outbox = Outbox("orders", metadata)
idempotency_keys = idempotency_table(metadata)
ACTIVE_CART = text("status = 'active'")

tax_rates = Table(
    "tax_rates",
    metadata,
    Column("country", String(2), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("rate_bp", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("rate_bp >= 0 AND rate_bp <= 10000", name="rate_bp_range"),
)

shipping_methods = Table(
    "shipping_methods",
    metadata,
    Column("code", String(50), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    # {currency: [[up_to_grams | null, amount], ...]}
    Column("rates", JSON, nullable=False),
    # ISO country codes served; empty means everywhere.
    Column("countries", JSON, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

vouchers = Table(
    "vouchers",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("value", MONEY, nullable=False),
    Column("currency", String(3)),
    Column("minimum_spend", MONEY, nullable=False),
    Column("starts_at", UTCDateTime()),
    Column("ends_at", UTCDateTime()),
    Column("usage_limit", Integer),
    Column("per_customer_limit", Integer),
    Column("times_used", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("times_used >= 0", name="times_used_not_negative"),
)

voucher_usages = Table(
    "voucher_usages",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("voucher_id", id_column_type(), ForeignKey("vouchers.id"), nullable=False),
    Column("order_id", id_column_type(), nullable=False, unique=True),
    # A customer id, or ``email:<blind index of the address>`` for a guest: per-customer limits
    # count either.
    Column("holder", String(320), nullable=False),
    # The blind index of the order's email address: a use is counted before its order is
    # written, and per-customer limits also count uses by the address.
    Column("email_index", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("released_at", UTCDateTime()),
    Index("ix_voucher_usages_voucher_id_holder", "voucher_id", "holder"),
    Index("ix_voucher_usages_voucher_id_email_index", "voucher_id", "email_index"),
)

carts = Table(
    "carts",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("token_hash", String(64), unique=True),
    Column("customer_id", id_column_type()),
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("country", String(2)),
    Column("email_encrypted", Text),
    # JSON of the addresses given before checkout, encrypted (personal data). With a shipping
    # address, ``country`` is that address's country.
    Column("shipping_address_encrypted", Text),
    Column("billing_address_encrypted", Text),
    Column("shipping_method", String(50)),
    Column("voucher_code", String(64)),
    Column("merged_into", id_column_type()),
    Column("order_id", id_column_type()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_carts_customer_id_status", "customer_id", "status"),
    # One active cart per customer and currency, whatever the races between writers (anonymous
    # carts, with no customer, never collide).
    Index(
        "ux_carts_active_customer_currency",
        "customer_id",
        "currency",
        unique=True,
        sqlite_where=ACTIVE_CART,
        postgresql_where=ACTIVE_CART,
    ),
)

cart_lines = Table(
    "cart_lines",
    metadata,
    Column("cart_id", id_column_type(), ForeignKey("carts.id"), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("added_at", UTCDateTime(), nullable=False),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

order_numbers = Table(
    "order_numbers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_number", Integer, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("cart_id", id_column_type(), nullable=False),
    Column("cart_token_hash", String(64)),
    Column("customer_id", id_column_type()),
    Column("email_encrypted", Text, nullable=False),
    Column("email_index", String(64), nullable=False),
    # JSON of the addresses given at checkout, encrypted (personal data).
    Column("shipping_address_encrypted", Text),
    Column("billing_address_encrypted", Text),
    Column("status", String(32), nullable=False),
    # Kept apart from ``status`` by every transition: the goods (unfulfilled ... delivered) and
    # the money (pending, partially_paid, paid, partially_refunded, refunded, voided).
    Column("fulfillment_status", String(32), nullable=False, server_default="unfulfilled"),
    Column("payment_status", String(32), nullable=False, server_default="pending"),
    # What payments captured for the order (before refunds: see ``refunded_total``).
    Column("amount_paid", MONEY, nullable=False, server_default="0"),
    Column("currency", String(3), nullable=False),
    Column("country", String(2), nullable=False),
    Column("shipping_method", String(50)),
    Column("voucher_code", String(64)),
    Column("prices_include_tax", Boolean, nullable=False),
    Column("tax_rate_bp", Integer, nullable=False),
    Column("subtotal", MONEY, nullable=False),
    Column("discount_total", MONEY, nullable=False),
    Column("shipping_total", MONEY, nullable=False),
    Column("shipping_tax", MONEY, nullable=False),
    Column("tax_total", MONEY, nullable=False),
    Column("total", MONEY, nullable=False),
    Column("refunded_total", MONEY, nullable=False),
    Column("weight_grams", Integer, nullable=False),
    Column("reservation_expires_at", UTCDateTime()),
    # Whether the buyer is mailed about the order (false for the demo's past orders).
    Column("notify_buyer", Boolean, nullable=False, server_default=true()),
    Column("created_at", UTCDateTime(), nullable=False),
    # Moves with every change of the order: status, note, fulfilment, refund, return.
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_orders_customer_id_created_at", "customer_id", "created_at"),
    Index("ix_orders_updated_at_id", "updated_at", "id"),
    Index("ix_orders_customer_id_updated_at", "customer_id", "updated_at"),
    Index("ix_orders_status_reservation_expires_at", "status", "reservation_expires_at"),
    Index("ix_orders_created_at_id", "created_at", "id"),
    Index("ix_orders_email_index_created_at", "email_index", "created_at"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("order_id", id_column_type(), ForeignKey("orders.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("sku", String(64), nullable=False),
    Column("product_id", String(64)),
    Column("name", String(400), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", MONEY, nullable=False),
    Column("subtotal", MONEY, nullable=False),
    Column("discount", MONEY, nullable=False),
    Column("tax", MONEY, nullable=False),
    Column("total", MONEY, nullable=False),
    Column("weight_grams", Integer, nullable=False),
    Column("fulfilled_quantity", Integer, nullable=False),
    Column("returned_quantity", Integer, nullable=False),
    Column("refunded_quantity", Integer, nullable=False),
)

fulfillments = Table(
    "fulfillments",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("order_id", id_column_type(), ForeignKey("orders.id"), nullable=False, index=True),
    Column("tracking_number", String(100), nullable=False),
    Column("carrier", String(100)),
    # [{"line_id", "sku", "quantity"}]
    Column("lines", JSON, nullable=False),
    Column("created_by", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
)

order_history = Table(
    "order_history",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("id", id_column_type(), nullable=False, unique=True),
    Column("order_id", id_column_type(), ForeignKey("orders.id"), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("action", String(32)),
    Column("from_status", String(32)),
    Column("to_status", String(32)),
    Column("actor_kind", String(16), nullable=False),
    Column("actor_id", String(64)),
    Column("reason", Text),
    Column("details", JSON, nullable=False),
    Index("ix_order_history_order_id_position", "order_id", "position"),
)

# Mail to the buyer, queued by the consumer of orders' own events in the transaction that records
# the event as processed, and sent by the ``send-order-emails`` job: a crash loses none, and a
# mail server that is down delays them without holding up any event.
order_emails = Table(
    "order_emails",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    # The event the mail tells of: one mail per event.
    Column("event_id", String(64), nullable=False, unique=True),
    Column("order_id", id_column_type(), nullable=False, index=True),
    # confirmation, shipping, cancellation, refund
    Column("kind", String(16), nullable=False),
    # What the event says beyond the order (tracking number, refund amount, reason); no
    # personal data: the recipient and the address are read from the order when sending.
    Column("details", JSON, nullable=False),
    # pending, sent, failed (given up: an address no mail can go to, or too many attempts)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    # The exception's class only: a mail server's message may quote the recipient.
    Column("last_error", String(200)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Index("ix_order_emails_status_next_attempt_at", "status", "next_attempt_at"),
)
