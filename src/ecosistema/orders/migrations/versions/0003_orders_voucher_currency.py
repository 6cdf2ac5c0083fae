"""Give every voucher with a minimum spend the currency that spend is in. Until now a
percentage voucher could have a minimum spend and no currency, and the spend was read in
whatever currency the cart was in ("from EUR 100" accepted USD 100). Such a voucher takes the
currency most of the orders that used it were in, or EUR (a new cart's currency) if unused.

Revision ID: 0003_orders_voucher_currency
Revises: 0002_orders_encrypt_email
Create Date: 2026-11-28 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_orders_voucher_currency"
down_revision: str | Sequence[str] | None = "0002_orders_encrypt_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_CURRENCY = "EUR"


def upgrade() -> None:
    bind = op.get_bind()
    vouchers = sa.table(
        "vouchers",
        sa.column("id", sa.String()),
        sa.column("currency", sa.String()),
        sa.column("minimum_spend", sa.Integer()),
    )
    usages = sa.table(
        "voucher_usages", sa.column("voucher_id", sa.String()), sa.column("order_id", sa.String())
    )
    orders = sa.table("orders", sa.column("id", sa.String()), sa.column("currency", sa.String()))
    without = bind.execute(
        sa.select(vouchers.c.id).where(vouchers.c.currency.is_(None), vouchers.c.minimum_spend > 0)
    ).scalars()
    for voucher_id in list(without):
        most_used = bind.execute(
            sa.select(orders.c.currency)
            .select_from(usages.join(orders, orders.c.id == usages.c.order_id))
            .where(usages.c.voucher_id == voucher_id)
            .group_by(orders.c.currency)
            .order_by(sa.func.count().desc(), orders.c.currency)
            .limit(1)
        ).scalar()
        bind.execute(
            sa.update(vouchers)
            .where(vouchers.c.id == voucher_id)
            .values(currency=most_used or DEFAULT_CURRENCY)
        )


def downgrade() -> None:
    """The currencies given stay: they are what the minimum spends meant."""
