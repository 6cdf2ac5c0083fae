"""Shared fixtures: the two shapes (embedded on SQLite, distributed on PostgreSQL + Redis + NATS).

Every test that takes ``settings`` (or ``app``/``client``) runs once per shape. The distributed
shape is skipped, with the reason printed, when its services are not reachable on 127.0.0.1.
``ECOSISTEMA_TEST_SHAPES=embedded`` (or ``distributed``) narrows the run.
"""

from __future__ import annotations

import gc
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import MetaData

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from tests.default_model import DefaultModelCache

PG_URL = os.environ.get(
    "ECOSISTEMA_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ECOSISTEMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("ECOSISTEMA_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


SERVICES_UP = {
    "postgresql": _reachable("127.0.0.1", 5432),
    "redis": _reachable("127.0.0.1", 6379),
    "nats": _reachable("127.0.0.1", 4222),
}
_DOWN = [name for name, up in SERVICES_UP.items() if not up]
DISTRIBUTED_SKIP = (
    f"distributed shape skipped: {', '.join(_DOWN)} not reachable on 127.0.0.1" if _DOWN else ""
)
SHAPES = [
    s
    for s in os.environ.get("ECOSISTEMA_TEST_SHAPES", "embedded,distributed").split(",")
    if s.strip()
]


@asynccontextmanager
async def tables_database(
    shape: str, tmp_path: Path, name: str, metadata: MetaData
) -> AsyncIterator[Database]:
    """A database of one shape (a SQLite file, or a PostgreSQL schema of its own) holding
    ``metadata``'s tables, dropped afterwards; skips when PostgreSQL is not reachable."""
    if shape == "embedded":
        database = Database(name, f"sqlite+aiosqlite:///{tmp_path.as_posix()}/{name}.db")
    elif not SERVICES_UP["postgresql"]:
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    else:
        database = Database(name, PG_URL, schema_prefix=unique() + "_")
    try:
        if database.schema:
            async with database.engine.begin() as conn:
                await conn.exec_driver_sql(f'CREATE SCHEMA "{database.schema}"')
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield database
    finally:
        await database.drop_schema()
        await database.dispose()


requires_postgres = pytest.mark.skipif(
    not SERVICES_UP["postgresql"], reason="PostgreSQL not reachable on 127.0.0.1:5432"
)
requires_redis = pytest.mark.skipif(
    not SERVICES_UP["redis"], reason="Redis not reachable on 127.0.0.1:6379"
)
requires_nats = pytest.mark.skipif(
    not SERVICES_UP["nats"], reason="NATS not reachable on 127.0.0.1:4222"
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"ecosistema shapes: {', '.join(SHAPES)}"]
    if DISTRIBUTED_SKIP and "distributed" in SHAPES:
        lines.append(DISTRIBUTED_SKIP)
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if DISTRIBUTED_SKIP and "distributed" in SHAPES:
        terminalreporter.write_line(f"NOTE: {DISTRIBUTED_SKIP}", yellow=True)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_settings(shape: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test in the given shape, isolated from every other test."""
    base: dict[str, object] = {
        "environment": "test",
        "data_dir": data_dir,
        "log_json": True,
        "log_level": "WARNING",
    }
    if shape == "embedded":
        base.update(
            database_url=f"sqlite+aiosqlite:///{data_dir.as_posix()}/{{service}}.db",
            bus_url="memory://",
            cache_url="memory://",
        )
    else:
        run = unique()
        base.update(
            database_url=PG_URL,
            database_schema_prefix=f"{run}_",
            bus_url=NATS_URL,
            bus_stream=f"eco_{run}",
            cache_url=REDIS_URL,
            cache_prefix=f"{run}:",
        )
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def frozen_session_heap() -> None:
    """The test process's heap (modules, collected tests, fixtures kept for the session) frozen
    once: every app a test starts finds it frozen and leaves it so (``create_app``), rather than
    walking hundreds of thousands of objects in a full collection at each start. Frozen again
    after a test that thawed it."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


@pytest.fixture(params=SHAPES)
def shape(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    if value == "distributed" and DISTRIBUTED_SKIP:
        pytest.skip(DISTRIBUTED_SKIP)
    return value


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return make_settings(shape, tmp_path)


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory: pytest.TempPathFactory) -> DefaultModelCache:
    """The default lead-scoring model, trained at most once in the session (by whichever xdist
    worker needs it first); ``default_model_cache.seed(settings)`` before a platform hosting sales
    starts, so the start loads the model rather than training it."""
    base = tmp_path_factory.getbasetemp()
    return DefaultModelCache(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


async def drop_test_schemas(settings: Settings) -> None:
    """Remove the PostgreSQL schemas and NATS stream a distributed test created."""
    if settings.bus_url.startswith("nats://"):
        from ecosistema.platform.events.nats_bus import NatsBus

        bus = NatsBus(settings.bus_url, stream=settings.bus_stream)
        await bus.start()
        try:
            await bus.delete_stream()
        finally:
            await bus.stop()
    if not settings.database_schema_prefix:
        return
    import asyncpg

    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            settings.database_schema_prefix.replace("_", r"\_") + "%",
        )
        for row in rows:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def app(settings: Settings, default_model_cache: DefaultModelCache) -> AsyncIterator[FastAPI]:
    """The embedded app with every service, its runtime started (migrations applied)."""
    from ecosistema.services import load_services

    default_model_cache.seed(settings)
    application = create_app(load_services(), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
