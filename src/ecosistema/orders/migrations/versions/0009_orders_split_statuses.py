"""Orders keep their fulfilment and payment statuses apart from ``status``, and what was
captured for them (``amount_paid``); existing orders get them from their lines and history.

Revision ID: 0009_orders_split_statuses
Revises: 0008_orders_emails
Create Date: 2026-11-29 10:15:00
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009_orders_split_statuses"
down_revision: str | Sequence[str] | None = "0008_orders_emails"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_orders = sa.table(
    "orders",
    sa.column("id", sa.String()),
    sa.column("status", sa.String()),
    sa.column("total", sa.BigInteger()),
    sa.column("fulfillment_status", sa.String()),
    sa.column("payment_status", sa.String()),
    sa.column("amount_paid", sa.BigInteger()),
)
_lines = sa.table(
    "order_lines",
    sa.column("order_id", sa.String()),
    sa.column("quantity", sa.Integer()),
    sa.column("fulfilled_quantity", sa.Integer()),
    sa.column("refunded_quantity", sa.Integer()),
)
_history = sa.table(
    "order_history",
    sa.column("position", sa.Integer()),
    sa.column("order_id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("action", sa.String()),
    sa.column("details", sa.JSON()),
)

_PAYMENT_OF_STATUS = {
    "pending_payment": "pending",
    "cancelled": "voided",
    "partially_refunded": "partially_refunded",
    "refunded": "refunded",
}


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column(
                "fulfillment_status",
                sa.String(length=32),
                nullable=False,
                server_default="unfulfilled",
            )
        )
        batch.add_column(
            sa.Column(
                "payment_status", sa.String(length=32), nullable=False, server_default="pending"
            )
        )
        batch.add_column(
            sa.Column(
                "amount_paid",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=False,
                server_default="0",
            )
        )
    _backfill(op.get_bind())


def _backfill(bind: sa.Connection) -> None:
    """Fulfilment from the lines (what was fulfilled) and from ``ship``/``deliver`` after the
    last fulfilment (before it, they moved nothing: the old machine let a partially refunded
    order ship with nothing fulfilled); the money from the status and what ``pay`` recorded."""
    units: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for row in bind.execute(
        sa.select(
            _lines.c.order_id,
            _lines.c.quantity,
            _lines.c.fulfilled_quantity,
            _lines.c.refunded_quantity,
        )
    ):
        units[row.order_id].append((row.quantity, row.fulfilled_quantity, row.refunded_quantity))
    steps: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for step in bind.execute(
        sa.select(_history.c.order_id, _history.c.action, _history.c.details)
        .where(
            _history.c.kind == "transition",
            _history.c.action.in_(("pay", "fulfil", "fulfil_partially", "ship", "deliver")),
        )
        .order_by(_history.c.position)
    ):
        steps[step.order_id].append((step.action, step.details))
    change = (
        sa.update(_orders)
        .where(_orders.c.id == sa.bindparam("order_id"))
        .values(
            fulfillment_status=sa.bindparam("fulfillment"),
            payment_status=sa.bindparam("payment"),
            amount_paid=sa.bindparam("paid"),
        )
    )
    batch: list[dict[str, Any]] = []
    for order in bind.execute(sa.select(_orders.c.id, _orders.c.status, _orders.c.total)):
        order_steps = steps.get(order.id, [])
        paid = _captured(order_steps, int(order.total))
        payment = _PAYMENT_OF_STATUS.get(order.status)
        if payment in (None, "pending", "voided"):
            if payment is not None:
                paid = 0
            else:
                payment = "partially_paid" if paid < int(order.total) else "paid"
        batch.append(
            {
                "order_id": order.id,
                "fulfillment": _fulfillment(units.get(order.id, []), order_steps),
                "payment": payment,
                "paid": paid,
            }
        )
        if len(batch) >= 500:
            bind.execute(change, batch)
            batch = []
    if batch:
        bind.execute(change, batch)


def _captured(steps: list[tuple[str, Any]], total: int) -> int:
    for action, details in steps:
        if action == "pay":
            details = details or {}
            if not details.get("payment_id"):
                return 0  # paid as placed: nothing to pay
            captured = details.get("captured_amount", details.get("amount"))
            return int(captured) if captured is not None else total
    return total


def _fulfillment(lines: list[tuple[int, int, int]], steps: list[tuple[str, Any]]) -> str:
    if not any(fulfilled > 0 for _, fulfilled, _ in lines):
        return "unfulfilled"
    if any(quantity - fulfilled - refunded > 0 for quantity, fulfilled, refunded in lines):
        return "partially_fulfilled"
    after = [action for action, _ in steps]
    last_fulfil = max(
        (i for i, action in enumerate(after) if action in ("fulfil", "fulfil_partially")),
        default=-1,
    )
    later = after[last_fulfil + 1 :]
    if "ship" in later:
        return "delivered" if "deliver" in later[later.index("ship") :] else "shipped"
    return "fulfilled"


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("amount_paid")
        batch.drop_column("payment_status")
        batch.drop_column("fulfillment_status")
