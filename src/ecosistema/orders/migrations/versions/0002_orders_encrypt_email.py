"""Encrypt the buyer's email at rest: carts and orders keep it field-encrypted, orders add its
blind index for lookups, guest voucher usages are counted by that index, and the address is
removed from the events already in the outbox.

Revision ID: 0002_orders_encrypt_email
Revises: 0001_orders
Create Date: 2026-11-28 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from ecosistema.platform.migrations import migration_cipher

revision: str = "0002_orders_encrypt_email"
down_revision: str | Sequence[str] | None = "0001_orders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMAIL_INDEX_PURPOSE = "order.email"
BATCH = 500


def _normalise(email: str) -> str:
    return email.strip().lower()


def upgrade() -> None:
    with op.batch_alter_table("carts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_encrypted", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("email_index", sa.String(length=64), nullable=True))

    bind = op.get_bind()
    cipher: Any = None

    def _cipher() -> Any:
        nonlocal cipher
        if cipher is None:
            cipher = migration_cipher()
        return cipher

    for name, with_index in (("carts", False), ("orders", True)):
        table = sa.table(
            name,
            sa.column("id", sa.String()),
            sa.column("email", sa.String()),
            sa.column("email_encrypted", sa.Text()),
            sa.column("email_index", sa.String()),
        )
        last = ""
        while True:
            rows = bind.execute(
                sa.select(table.c.id, table.c.email)
                .where(table.c.id > last, table.c.email.is_not(None))
                .order_by(table.c.id)
                .limit(BATCH)
            ).all()
            if not rows:
                break
            for row_id, email in rows:
                values: dict[str, Any] = {
                    "email_encrypted": _cipher().encrypt(
                        email, table=name, column="email_encrypted", row_id=str(row_id)
                    )
                }
                if with_index:
                    values["email_index"] = _cipher().blind_index(
                        _normalise(email), purpose=EMAIL_INDEX_PURPOSE
                    )
                bind.execute(sa.update(table).where(table.c.id == row_id).values(**values))
            last = rows[-1][0]

    usages = sa.table("voucher_usages", sa.column("id", sa.String()), sa.column("holder"))
    for usage_id, holder in bind.execute(
        sa.select(usages.c.id, usages.c.holder).where(usages.c.holder.like("email:%"))
    ).all():
        index = _cipher().blind_index(_normalise(holder[6:]), purpose=EMAIL_INDEX_PURPOSE)
        bind.execute(
            sa.update(usages).where(usages.c.id == usage_id).values(holder=f"email:{index}")
        )

    outbox = sa.table(
        "outbox", sa.column("position", sa.Integer()), sa.column("payload", sa.JSON())
    )
    for position, payload in bind.execute(sa.select(outbox.c.position, outbox.c.payload)).all():
        if isinstance(payload, dict) and "email" in payload:
            kept = {k: v for k, v in payload.items() if k != "email"}
            bind.execute(
                sa.update(outbox).where(outbox.c.position == position).values(payload=kept)
            )

    with op.batch_alter_table("carts", schema=None) as batch_op:
        batch_op.drop_column("email")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.alter_column("email_encrypted", existing_type=sa.Text(), nullable=False)
        batch_op.alter_column("email_index", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("email")
        batch_op.create_index(
            "ix_orders_email_index_created_at", ["email_index", "created_at"], unique=False
        )


def downgrade() -> None:
    raise NotImplementedError("the buyer's email is not decrypted back into the clear")
