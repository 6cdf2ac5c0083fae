"""Encrypt the buyer's personal data at rest: a payment's email and addresses move out of its
order snapshot into ``buyer_encrypted``, and an invoice's buyer block is stored encrypted.

Revision ID: 0002_payments_encrypt_buyer
Revises: 0001_payments
Create Date: 2026-11-28 06:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from ecosistema.platform.migrations import migration_cipher

revision: str = "0002_payments_encrypt_buyer"
down_revision: str | Sequence[str] | None = "0001_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERSONAL_FIELDS = ("email", "billing_address", "shipping_address")
BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("buyer_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("buyer_encrypted", sa.Text(), nullable=True))

    bind = op.get_bind()
    cipher: Any = None

    def _seal(value: Any, table: str, row_id: str) -> str:
        nonlocal cipher
        if cipher is None:
            cipher = migration_cipher()
        text = json.dumps(value, separators=(",", ":"))
        return str(cipher.encrypt(text, table=table, column="buyer_encrypted", row_id=row_id))

    payments = sa.table(
        "payments",
        sa.column("id", sa.String()),
        sa.column("order_snapshot", sa.JSON()),
        sa.column("buyer_encrypted", sa.Text()),
    )
    last = ""
    while True:
        rows = bind.execute(
            sa.select(payments.c.id, payments.c.order_snapshot)
            .where(payments.c.id > last)
            .order_by(payments.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for row_id, snapshot in rows:
            snapshot = dict(snapshot or {})
            personal = {k: snapshot.pop(k) for k in PERSONAL_FIELDS if k in snapshot}
            bind.execute(
                sa.update(payments)
                .where(payments.c.id == row_id)
                .values(
                    order_snapshot=snapshot,
                    buyer_encrypted=_seal(
                        {k: v for k, v in personal.items() if v}, "payments", str(row_id)
                    ),
                )
            )
        last = rows[-1][0]

    invoices = sa.table(
        "invoices",
        sa.column("id", sa.String()),
        sa.column("buyer", sa.JSON()),
        sa.column("buyer_encrypted", sa.Text()),
    )
    last = ""
    while True:
        rows = bind.execute(
            sa.select(invoices.c.id, invoices.c.buyer)
            .where(invoices.c.id > last)
            .order_by(invoices.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for row_id, buyer in rows:
            bind.execute(
                sa.update(invoices)
                .where(invoices.c.id == row_id)
                .values(buyer_encrypted=_seal(dict(buyer or {}), "invoices", str(row_id)))
            )
        last = rows[-1][0]

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.alter_column("buyer_encrypted", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("buyer")


def downgrade() -> None:
    raise NotImplementedError("the buyer's data is not decrypted back into the clear")
