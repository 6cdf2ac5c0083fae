"""The catalog service's tables: products, variants, categories, prices, price lists,
warehouses, stock, its movements and reservations.

Search is kept outside this metadata on purpose: SQLite gets an FTS5 virtual table
(``product_search``) and PostgreSQL a generated ``tsvector`` column with a GIN index, both
created by the migration for their dialect only (see ``search.py``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
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
from ecosistema.platform.idempotency import idempotency_table

metadata = new_metadata()
outbox = Outbox("catalog", metadata)
# Keys of POST /restocks: a retried restock replays its first answer instead of adding twice.
idempotency_keys = idempotency_table(metadata)

categories = Table(
    "categories",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("parent_id", id_column_type(), ForeignKey("categories.id")),
    Column("name", String(200), nullable=False),
    Column("slug", String(120), nullable=False, unique=True),
    Column("path", String(1000), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_categories_parent_id", "parent_id"),
)

products = Table(
    "products",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("slug", String(120), nullable=False, unique=True),
    Column("name", String(300), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("category_id", id_column_type(), ForeignKey("categories.id")),
    Column("images", JSON, nullable=False),
    # Variant names, SKUs and option values, so a search for "red" or a SKU finds the product.
    Column("search_text", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_products_status_created_at", "status", "created_at", "id"),
    # GET /products?updated_since=...&sort=updated_at: an integration's incremental sync.
    Index("ix_products_status_updated_at", "status", "updated_at", "id"),
    Index("ix_products_category_id", "category_id"),
)

variants = Table(
    "variants",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("product_id", id_column_type(), ForeignKey("products.id"), nullable=False),
    Column("sku", String(64), nullable=False, unique=True),
    Column("name", String(300), nullable=False),
    Column("options", JSON, nullable=False),
    Column("weight_grams", Integer, nullable=False, default=0),
    Column("position", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("weight_grams >= 0", name="weight_not_negative"),
    Index("ix_variants_product_id_position", "product_id", "position"),
)

prices = Table(
    "prices",
    metadata,
    Column("variant_id", id_column_type(), ForeignKey("variants.id"), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
)

sale_prices = Table(
    "sale_prices",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("variant_id", id_column_type(), ForeignKey("variants.id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("starts_at", UTCDateTime()),
    Column("ends_at", UTCDateTime()),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    Index("ix_sale_prices_variant_id_currency", "variant_id", "currency"),
)

price_lists = Table(
    "price_lists",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

price_list_prices = Table(
    "price_list_prices",
    metadata,
    Column("price_list_id", id_column_type(), ForeignKey("price_lists.id"), primary_key=True),
    Column("variant_id", id_column_type(), ForeignKey("variants.id"), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount >= 0", name="amount_not_negative"),
    Index("ix_price_list_prices_variant_id", "variant_id"),
)

price_list_customers = Table(
    "price_list_customers",
    metadata,
    Column("price_list_id", id_column_type(), ForeignKey("price_lists.id"), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("assigned_at", UTCDateTime(), nullable=False),
    Index("ix_price_list_customers_customer_id", "customer_id"),
)

warehouses = Table(
    "warehouses",
    metadata,
    Column("id", id_column_type(), primary_key=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    # Lower ships first when stock is allocated; ties go by code.
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime(), nullable=False),
)

stock = Table(
    "stock",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("warehouse_id", id_column_type(), ForeignKey("warehouses.id"), primary_key=True),
    Column("on_hand", Integer, nullable=False, default=0),
    Column("reserved", Integer, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The last line of defence against overselling: the database itself refuses it.
    CheckConstraint("reserved >= 0 AND on_hand >= reserved", name="never_oversold"),
)

stock_movements = Table(
    "stock_movements",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("id", id_column_type(), nullable=False, unique=True),
    Column("sku", String(64), nullable=False),
    # The variant the SKU named when the stock moved: a variant made later with the same SKU
    # (after this one was deleted) does not take these movements as its own.
    Column("variant_id", id_column_type()),
    Column("warehouse_id", id_column_type(), nullable=False),
    Column("on_hand_delta", Integer, nullable=False),
    Column("reserved_delta", Integer, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("reference", String(128)),
    Column("note", String(500)),
    Column("actor", String(64), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Index("ix_stock_movements_sku_position", "sku", "position"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_reservations_status_expires_at", "status", "expires_at"),
)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    Column("order_id", String(64), ForeignKey("reservations.order_id"), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("warehouse_id", id_column_type(), primary_key=True),
    Column("quantity", Integer, nullable=False),
)
