"""Money columns hold what orders accepts, up to 10^12 minor units: a 32-bit integer stopped at
2^31 - 1 (21,474,836.47 in a two-decimal currency) on PostgreSQL, where a larger order failed
to be written.

Revision ID: 0010_orders_money_bigint
Revises: 0009_orders_split_statuses
Create Date: 2026-11-29 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_orders_money_bigint"
down_revision: str | Sequence[str] | None = "0009_orders_split_statuses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = {
    "orders": (
        *("subtotal", "discount_total", "shipping_total", "shipping_tax", "tax_total"),
        *("total", "refunded_total"),
    ),
    "order_lines": ("unit_price", "subtotal", "discount", "tax", "total"),
    "vouchers": ("value", "minimum_spend"),
}


def _retype(to: sa.types.TypeEngine[int], was: sa.types.TypeEngine[int]) -> None:
    # SQLite stores any integer in 64 bits whatever the declared type: nothing to change there
    # (and rebuilding ``orders`` would trip the foreign keys of its lines).
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in _MONEY.items():
        for column in columns:
            op.alter_column(table, column, type_=to, existing_type=was, existing_nullable=False)


def upgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer())


def downgrade() -> None:
    # Amounts above 2^31 - 1 cannot go back: PostgreSQL refuses the change rather than lose them.
    _retype(sa.Integer(), sa.BigInteger())
