"""A lease in a service's SQL database (SQLite or PostgreSQL): one holder at a time for a named
piece of work, such as training the default model when several replicas start on an empty
registry. The holder renews it while it works; a holder that dies stops renewing, the lease
expires, and another process may take it over.

The table (``ml_leases``) belongs to the service whose database holds the leases: its models
declare it with :func:`lease_table` and its migrations create it (sales does).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
import weakref
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Column, MetaData, String, Table, delete, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ecosistema.platform.db import Database, UTCDateTime

log = structlog.get_logger(__name__)

TABLE = "ml_leases"


def lease_table(metadata: MetaData) -> Table:
    """Declare the lease table in a service's metadata, for its migrations to create."""
    return Table(
        TABLE,
        metadata,
        Column("name", String(100), primary_key=True),
        Column("holder", String(200), nullable=False),
        Column("acquired_at", UTCDateTime(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
    )


leases = lease_table(MetaData())
# The engines whose database was seen to have the table: per engine, not per URL, since a URL
# such as an in-memory SQLite database or a recreated file names a new, empty database each time.
_ready: weakref.WeakSet[AsyncEngine] = weakref.WeakSet()


class LeaseTableMissing(RuntimeError):
    """The database has no ``ml_leases`` table: the owning service's migrations create it."""


def holder_id() -> str:
    """This process's identity as a lease holder: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """A named lease in ``db``, held by ``holder`` for ``seconds`` at a time unless renewed."""

    def __init__(
        self,
        db: Database,
        name: str,
        *,
        seconds: float = 60.0,
        holder: str | None = None,
    ) -> None:
        if seconds <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        self.db = db
        self.name = name
        self.seconds = seconds
        self.holder = holder or holder_id()

    async def _check_table(self) -> None:
        engine = self.db.engine
        if engine in _ready:
            return
        async with engine.connect() as conn:
            present = await conn.run_sync(lambda sync: inspect(sync).has_table(TABLE))
        if not present:
            raise LeaseTableMissing(
                f"the {self.db.service} database has no {TABLE} table: apply its migrations "
                f"(`ecosistema migrate`); a service holding leases declares the table with "
                f"ecosistema.ml.lease.lease_table(metadata) and creates it in a migration"
            )
        _ready.add(engine)

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    async def acquire(self) -> bool:
        """Take the lease if it is free, expired, or already ours (renewing it); True if held."""
        await self._check_table()
        now = self._now()
        until = now + timedelta(seconds=self.seconds)
        try:
            async with self.db.transaction() as session:
                row = (
                    await session.execute(
                        select(leases.c.holder, leases.c.expires_at).where(
                            leases.c.name == self.name
                        )
                    )
                ).first()
                if row is None:
                    await session.execute(
                        insert(leases).values(
                            name=self.name, holder=self.holder, acquired_at=now, expires_at=until
                        )
                    )
                    return True
                if row.holder != self.holder and _aware(row.expires_at) > now:
                    return False
                # Compare-and-set: only if nobody took it since we read it.
                result = await session.execute(
                    update(leases)
                    .where(
                        leases.c.name == self.name,
                        leases.c.holder == row.holder,
                        leases.c.expires_at == row.expires_at,
                    )
                    .values(holder=self.holder, acquired_at=now, expires_at=until)
                )
                return bool(getattr(result, "rowcount", 0) == 1)
        except IntegrityError:  # another process inserted it first
            return False

    async def renew(self) -> bool:
        """Push the expiry forward; False when the lease is no longer ours."""
        await self._check_table()
        until = self._now() + timedelta(seconds=self.seconds)
        async with self.db.transaction() as session:
            result = await session.execute(
                update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(expires_at=until)
            )
            return bool(getattr(result, "rowcount", 0) == 1)

    async def release(self) -> None:
        """Give the lease up (if it is ours)."""
        await self._check_table()
        async with self.db.transaction() as session:
            await session.execute(
                delete(leases).where(leases.c.name == self.name, leases.c.holder == self.holder)
            )

    async def holder_now(self) -> str | None:
        """Who holds the lease now (None when free or expired)."""
        await self._check_table()
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(leases.c.holder, leases.c.expires_at).where(leases.c.name == self.name)
                )
            ).first()
        if row is None or _aware(row.expires_at) <= self._now():
            return None
        return str(row.holder)

    async def keep_alive(self) -> None:
        """Renew every third of the lease's length until cancelled."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                if not await self.renew():
                    log.warning("ml.lease_lost", lease=self.name, holder=self.holder)
                    return
            except Exception as exc:  # a database hiccup: try again at the next beat
                log.warning("ml.lease_renew_failed", lease=self.name, error=str(exc)[:200])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


__all__ = ["Lease", "LeaseTableMissing", "holder_id", "lease_table", "leases"]
