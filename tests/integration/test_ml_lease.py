"""Replicas starting on an empty registry: one trains the default model under a database lease
(SQLite and PostgreSQL), the others wait and load it; a dead holder's lease expires. The lease
table is the sales migrations' (a database without it is refused with the fix named)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from ecosistema.ml import Lease, ModelRegistry, ensure_default_model_once, load_reference_dataset
from ecosistema.ml.lease import LeaseTableMissing
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from ecosistema.sales import descriptor as sales_service
from tests.conftest import drop_test_schemas


async def _database(settings: Settings) -> Database:
    db = Database(
        "sales", settings.database_url_for("sales"), schema_prefix=settings.database_schema_prefix
    )
    if db.schema:
        async with db.engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
    return db


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[list[Database]]:
    """Three processes' connections to one sales database, migrated."""
    dbs = [await _database(settings) for _ in range(3)]
    await dbs[0].migrate(sales_service.migrations)
    yield dbs
    for db in dbs:
        await db.dispose()
    await drop_test_schemas(settings)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_reference_dataset(1500, seed=5)


async def test_one_replica_trains_the_default_model_the_others_load_it(
    replicas: list[Database], sample: pd.DataFrame, tmp_path: Path
) -> None:
    url = tmp_path / "models"
    results = await asyncio.gather(
        *(
            ensure_default_model_once(
                ModelRegistry(url),
                Lease(db, "lead-scoring:default-model", seconds=30),
                poll_seconds=0.05,
                data=sample,
            )
            for db in replicas
        )
    )
    assert [v.version for v in ModelRegistry(url).list()] == ["v1"]
    assert {v.version for v in results} == {"v1"}
    # The trainer gave the lease back.
    assert await Lease(replicas[0], "lead-scoring:default-model").holder_now() is None


async def test_a_dead_holders_lease_expires_and_another_takes_over(
    replicas: list[Database],
) -> None:
    first = Lease(replicas[0], "job", seconds=0.3, holder="a")
    second = Lease(replicas[1], "job", seconds=0.3, holder="b")
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.renew() and await first.acquire()  # its own lease: renewed
    assert await second.holder_now() == "a"
    await asyncio.sleep(0.45)  # "a" died: no renewal
    assert await second.holder_now() is None
    assert await second.acquire()
    assert not await first.renew()
    assert not await first.acquire()
    await first.release()  # not its lease any more: nothing happens
    assert await first.holder_now() == "b"
    await second.release()
    assert await first.acquire()


async def test_a_waiting_replica_trains_when_the_holder_died(
    replicas: list[Database], sample: pd.DataFrame, tmp_path: Path
) -> None:
    url = tmp_path / "models"
    dead = Lease(replicas[0], "lead-scoring:default-model", seconds=0.3, holder="dead")
    assert await dead.acquire()  # took the lease, then its process died before training
    version = await ensure_default_model_once(
        ModelRegistry(url),
        Lease(replicas[1], "lead-scoring:default-model", seconds=30),
        poll_seconds=0.05,
        data=sample,
    )
    assert version.version == "v1" and ModelRegistry(url).serving() is not None


def test_a_lease_lasts_a_positive_time(tmp_path: Path) -> None:
    db = Database("probe", f"sqlite+aiosqlite:///{tmp_path}/probe.db")
    with pytest.raises(ValueError, match="positive"):
        Lease(db, "job", seconds=0)


async def test_a_lease_needs_the_table_its_services_migrations_create(
    settings: Settings,
) -> None:
    db = await _database(settings)
    try:
        with pytest.raises(LeaseTableMissing, match=r"ml_leases.*migrations"):
            await Lease(db, "default-model", seconds=5).acquire()
        await db.migrate(sales_service.migrations)
        assert await Lease(db, "default-model", seconds=5).acquire()
    finally:
        await db.dispose()
        await drop_test_schemas(settings)


async def test_a_new_database_at_a_url_used_before_is_checked_again(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sales.db"
    for migrated in (True, False):  # the same URL, a new empty file (a fresh data directory)
        (tmp_path / "sales.db").unlink(missing_ok=True)
        db = Database("sales", url)
        try:
            if migrated:
                await db.migrate(sales_service.migrations)
                assert await Lease(db, "default-model", seconds=5).acquire()
            else:
                with pytest.raises(LeaseTableMissing):
                    await Lease(db, "default-model", seconds=5).acquire()
        finally:
            await db.dispose()
