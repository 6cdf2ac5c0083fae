"""One open lead per email, enforced by the database: a partial unique index on the email's
blind index over open leads (``new``, ``contacted``, ``qualified``).

Two writers could both pass the service's check before the index existed, so an existing
database may hold several open leads with one email. The upgrade keeps the one most recently
worked on (latest ``updated_at``, then the newest) open and closes the others as ``duplicate``,
a final status that is no outcome (never a training label), with a ``status`` activity on each
naming the lead kept. It never refuses to upgrade.

Revision ID: 0002_sales_open_email
Revises: 0001_sales
Create Date: 2026-11-28 12:00:00
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from ecosistema.platform.db import UTCDateTime

revision: str = "0002_sales_open_email"
down_revision: str | Sequence[str] | None = "0001_sales"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: the statuses as they were when this revision was written.
OPEN = ("contacted", "new", "qualified")
OPEN_LEAD = "status IN ('contacted', 'new', 'qualified')"
DUPLICATE = "duplicate"
BATCH = 500

leads = sa.table(
    "leads",
    sa.column("id", sa.String()),
    sa.column("email_index", sa.String()),
    sa.column("status", sa.String()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("closed_at", UTCDateTime()),
)
activities = sa.table(
    "lead_activities",
    sa.column("id", sa.String()),
    sa.column("lead_id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("body", sa.Text()),
    sa.column("details", sa.JSON()),
    sa.column("actor_id", sa.String()),
    sa.column("event_id", sa.String()),
    sa.column("occurred_at", UTCDateTime()),
)


def _close_duplicates(bind: sa.Connection) -> None:
    repeated = [
        row[0]
        for row in bind.execute(
            sa.select(leads.c.email_index)
            .where(leads.c.email_index.is_not(None), leads.c.status.in_(OPEN))
            .group_by(leads.c.email_index)
            .having(sa.func.count() > 1)
        ).all()
    ]
    now = datetime.now(UTC)
    for start in range(0, len(repeated), BATCH):
        groups: dict[str, list[Any]] = defaultdict(list)
        for row in bind.execute(
            sa.select(
                leads.c.id,
                leads.c.email_index,
                leads.c.status,
                leads.c.created_at,
                leads.c.updated_at,
            ).where(
                leads.c.email_index.in_(repeated[start : start + BATCH]),
                leads.c.status.in_(OPEN),
            )
        ).all():
            groups[row.email_index].append(row)
        for rows in groups.values():
            rows.sort(key=lambda r: (r.updated_at, r.created_at, r.id), reverse=True)
            kept = rows[0].id
            for row in rows[1:]:
                bind.execute(
                    sa.update(leads)
                    .where(leads.c.id == row.id)
                    .values(status=DUPLICATE, closed_at=now, updated_at=now)
                )
                bind.execute(
                    sa.insert(activities).values(
                        id=uuid.uuid4().hex,
                        lead_id=row.id,
                        kind="status",
                        body=f"{row.status} -> {DUPLICATE}",
                        details={
                            "from": row.status,
                            "to": DUPLICATE,
                            "reason": "another open lead has this email",
                            "kept_lead_id": kept,
                        },
                        actor_id=None,
                        event_id=None,
                        occurred_at=now,
                    )
                )


def upgrade() -> None:
    _close_duplicates(op.get_bind())
    op.create_index(
        "ux_leads_open_email",
        "leads",
        ["email_index"],
        unique=True,
        sqlite_where=sa.text(OPEN_LEAD),
        postgresql_where=sa.text(OPEN_LEAD),
    )


def downgrade() -> None:
    # Leads closed as duplicates stay closed: which one was kept is on their timelines.
    op.drop_index("ux_leads_open_email", table_name="leads")
