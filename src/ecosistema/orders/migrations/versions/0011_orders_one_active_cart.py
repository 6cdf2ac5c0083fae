"""A customer has at most one active cart per currency, kept by a partial unique index: two
simultaneous baskets (``POST /carts`` with ``items``) could each replace the cart before and
leave two active on PostgreSQL. Customers who have several already keep the one they were
being given (the last changed) and the others become ``replaced``.

Revision ID: 0011_orders_one_active_cart
Revises: 0010_orders_money_bigint
Create Date: 2026-11-29 13:30:00
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from ecosistema.platform.db import UTCDateTime

revision: str = "0011_orders_one_active_cart"
down_revision: str | Sequence[str] | None = "0010_orders_money_bigint"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_carts = sa.table(
    "carts",
    sa.column("id", sa.String()),
    sa.column("customer_id", sa.String()),
    sa.column("currency", sa.String()),
    sa.column("status", sa.String()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)
# Frozen here: what an active cart was when this revision was written.
ACTIVE_CART = "status = 'active'"
BATCH = 500


def upgrade() -> None:
    _replace_duplicates(op.get_bind())
    op.create_index(
        "ux_carts_active_customer_currency",
        "carts",
        ["customer_id", "currency"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_CART),
        postgresql_where=sa.text(ACTIVE_CART),
    )


def _replace_duplicates(bind: sa.Connection) -> None:
    """Of a customer's active carts in one currency, keep the last changed (the one orders
    gave them: latest ``updated_at``, then the newest), and mark the others replaced."""
    repeated = bind.execute(
        sa.select(_carts.c.customer_id, _carts.c.currency)
        .where(_carts.c.status == "active", _carts.c.customer_id.is_not(None))
        .group_by(_carts.c.customer_id, _carts.c.currency)
        .having(sa.func.count() > 1)
    ).all()
    now = datetime.now(UTC)
    replace = (
        sa.update(_carts)
        .where(_carts.c.id == sa.bindparam("cart_id"))
        .values(status="replaced", updated_at=now)
    )
    customers = sorted({row.customer_id for row in repeated})
    for start in range(0, len(customers), BATCH):
        groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for row in bind.execute(
            sa.select(
                _carts.c.id,
                _carts.c.customer_id,
                _carts.c.currency,
                _carts.c.created_at,
                _carts.c.updated_at,
            ).where(
                _carts.c.customer_id.in_(customers[start : start + BATCH]),
                _carts.c.status == "active",
            )
        ).all():
            groups[(row.customer_id, row.currency)].append(row)
        older = []
        for rows in groups.values():
            rows.sort(key=lambda r: (r.updated_at, r.created_at, r.id), reverse=True)
            older += [{"cart_id": row.id} for row in rows[1:]]
        if older:
            bind.execute(replace, older)


def downgrade() -> None:
    # Carts replaced as duplicates stay replaced.
    op.drop_index("ux_carts_active_customer_currency", table_name="carts")
