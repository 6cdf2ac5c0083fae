"""Async database access per service: SQLite (WAL, a file per service) or PostgreSQL (a schema
per service), with Alembic migrations applied per service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    DateTime,
    MetaData,
    String,
    Table,
    TypeDecorator,
    bindparam,
    event,
    insert,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Result, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from ecosistema.platform.timestamps import to_utc

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def new_metadata() -> MetaData:
    """A service's own metadata, with constraint names stable across SQLite and PostgreSQL."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def new_id() -> str:
    """A random, URL-safe identifier for a new row."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        # The last line of defence: API fields check their range (platform/timestamps.py).
        return to_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_utc_datetime(value: datetime | str | None) -> datetime | None:
    """A timestamp as a driver returns it (SQLite: text, naive; PostgreSQL: aware) as a
    timezone-aware UTC datetime, as a ``UTCDateTime`` column gives it through SQLAlchemy."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def id_column_type() -> String:
    return String(32)


@dataclass(frozen=True, slots=True)
class CompiledRead:
    """A statement compiled once for one database's dialect: its SQL, its parameters in order,
    the values of those the statement fixed, the type conversions of its parameters, and, for a
    statement that returns rows, the names of its columns and their type conversions."""

    sql: str
    params: tuple[str, ...]
    fixed: Mapping[str, Any]
    processors: Mapping[str, Any]
    keys: tuple[str, ...] = ()
    results: tuple[Any, ...] = ()

    def arguments(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        """The driver's positional arguments for the named parameter values ``given``."""
        out = []
        for name in self.params:
            value = given[name] if name in given else self.fixed[name]
            process = self.processors.get(name)
            out.append(process(value) if process is not None else value)
        return tuple(out)

    def mapping(self, row: Sequence[Any]) -> dict[str, Any]:
        """A driver's row as the column names and the values SQLAlchemy would give."""
        return {
            key: (value if process is None or value is None else process(value))
            for key, process, value in zip(self.keys, self.results, row, strict=True)
        }


def compile_statement(statement: ClauseElement, dialect: Dialect) -> CompiledRead:
    """A statement compiled for ``dialect``, to run with ``exec_driver_sql``,
    :meth:`Database.fetch` or a :class:`DriverTransaction`; its parameters are ``bindparam``
    names."""
    compiled: Any = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    binds = {name: compiled.binds[name] for name in names}
    if any(bind.expanding for bind in binds.values()):
        raise ValueError("fetch takes no expanding (IN list) parameters; use one per item")
    columns = list(compiled._result_columns or ())
    return CompiledRead(
        str(compiled),
        names,
        {name: bind.value for name, bind in binds.items() if not bind.required},
        # The types' conversions (dates on SQLite, JSON), as an execution applies them.
        dict(compiled._bind_processors),
        tuple(column.keyname for column in columns),
        tuple(_result_processor(column.type, dialect) for column in columns),
    )


def _result_processor(type_: Any, dialect: Dialect) -> Any:
    """The conversion a Core execution applies to a column's values; None where it depends on
    what the driver reports at run time (asyncpg's numerics come as ``Decimal`` either way)."""
    try:
        return type_._cached_result_processor(dialect, None)
    except (TypeError, KeyError, NotImplementedError):
        return None


Rows = list[Sequence[Any]]

# How long a SQLite writer waits for the database's write lock, in this process (the in-process
# queue below) and for other processes (SQLite's busy timeout), before giving up.
SQLITE_WRITE_WAIT_SECONDS = 30.0

# The write lock of each SQLite database file, per event loop. SQLite admits one writer at a time;
# writers of one process queue here, in order, instead of each taking ``BEGIN IMMEDIATE`` and
# sleeping in SQLite's busy handler until the file is free (back-off sleeps of up to 100 ms that
# dominate a loaded checkout). Writers in other processes still meet the busy timeout.
_write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _write_lock(name: str) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    locks = _write_locks.get(loop)
    if locks is None:
        locks = _write_locks[loop] = {}
    lock = locks.get(name)
    if lock is None:
        lock = locks[name] = asyncio.Lock()
    return lock


# SQLite copies its write-ahead log back into the database file in a checkpoint. By default the
# commit that grows the log past 1,000 pages runs one itself: on the event loop's thread, where it
# copies those pages and syncs the file while every request waits (5-16 ms a time under checkout
# load). The connections of this process that commit run instead with the automatic checkpoint
# raised to a backstop, and a thread of the process checkpoints each file after
# CHECKPOINT_AFTER_COMMITS commits, or CHECKPOINT_INTERVAL_SECONDS after an unsaved one.
SQLITE_AUTOCHECKPOINT_PAGES = 20_000
CHECKPOINT_AFTER_COMMITS = 64
CHECKPOINT_INTERVAL_SECONDS = 1.0


class _CheckpointFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.pending = 0
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def checkpoint(self) -> None:
        with self.lock:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA busy_timeout=0")
            # PASSIVE: copies what no reader still needs, never waits for nor blocks readers
            # and writers; what it leaves is copied next time.
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Checkpointer:
    """Checkpoints this process's SQLite files on a thread of its own (see above). SQLite does
    the copying and syncing without holding the GIL, so it runs beside the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._files: dict[str, _CheckpointFile] = {}
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """In a forked child: the parent's thread and connections are not the child's."""
        self.__init__()  # type: ignore[misc]

    def register(self, path: str) -> None:
        with self._lock:
            file = self._files.get(path)
            if file is None:
                file = self._files[path] = _CheckpointFile(path)
            file.users += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def unregister(self, path: str) -> None:
        with self._lock:
            file = self._files.get(path)
            if file is None:
                return
            file.users -= 1
            if file.users > 0:
                return
            del self._files[path]
        file.close()
        self._wake.set()

    def committed(self, path: str) -> None:
        """Called on the committing thread after each write transaction: a dictionary lookup."""
        file = self._files.get(path)
        if file is not None:
            file.pending += 1
            if file.pending >= CHECKPOINT_AFTER_COMMITS:
                self._wake.set()

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def _run(self) -> None:
        while True:
            self._wake.wait(CHECKPOINT_INTERVAL_SECONDS)
            self._wake.clear()
            with self._lock:
                if not self._files:
                    self._thread = None
                    return
                due = [file for file in self._files.values() if file.pending]
            for file in due:
                file.pending = 0
                try:
                    file.checkpoint()
                except sqlite3.Error:
                    # The file went away or is being replaced (a restore, a test's temporary
                    # directory): the commits that follow bring it back here, or SQLite's
                    # backstop checkpoints it.
                    file.close()


_checkpointer = _Checkpointer()
os.register_at_fork(after_in_child=_checkpointer.forget)


class Database:
    """One service's engine and sessions.

    ``transaction()`` opens a write transaction (``BEGIN IMMEDIATE`` on SQLite, so two writers
    never race a read-then-write); ``read()`` opens a read-only snapshot.
    """

    def __init__(
        self,
        service: str,
        url: str,
        *,
        schema_prefix: str = "",
        echo: bool = False,
        pool_size: int = 10,
    ) -> None:
        self.service = service
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self.schema: str | None = None
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = self.url.database or ""
            if database in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                # Statements run on the event loop's thread (see _InlineSqlite): a statement of
                # this embedded shape takes microseconds, less than a hop to a worker thread.
                kwargs["connect_args"] = {
                    "timeout": SQLITE_WRITE_WAIT_SECONDS,
                    "check_same_thread": False,
                    "async_creator_fn": _inline_sqlite_connect,
                }
        elif self.is_postgres:
            self.schema = f"{schema_prefix}{service}"
            if not _SCHEMA_RE.match(self.schema):
                raise ValueError(f"invalid schema name {self.schema!r}")
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"server_settings": {"search_path": self.schema}},
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._writer = self.engine.execution_options(sqlite_immediate=True)
        self.writer_sessions = async_sessionmaker(self._writer, expire_on_commit=False)
        self.reader_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._compiled: dict[int, tuple[ClauseElement, CompiledRead]] = {}
        self._write_lock_name: str | None = None
        if self.is_sqlite:
            database = self.url.database or ""
            in_memory = database in ("", ":memory:")
            self._write_lock_name = (
                f"memory:{id(self)}" if in_memory else str(Path(database).resolve())
            )
        self._driver: _SqliteDriverReads | _PostgresDriverReads | None = None
        self._sqlite_writer: _SqliteWriter | None = None
        self._checkpointed: str | None = None
        if self.is_sqlite and (self.url.database or "") not in ("", ":memory:"):
            self._driver = _SqliteDriverReads(self.url.database or "")
            self._sqlite_writer = _SqliteWriter(self.url.database or "")
            self._checkpointed = self._write_lock_name
            _checkpointer.register(self._checkpointed or "")
        elif self.is_postgres and self.schema is not None:
            self._driver = _PostgresDriverReads(self.url, self.schema, max(2, pool_size // 2))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back on error.

        On SQLite, the write transactions of this process on one database file run one after
        another (an in-process queue in front of ``BEGIN IMMEDIATE``); nesting a write
        transaction inside another on the same database is an error on every backend."""
        async with self._queued_writer(), self.writer_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a bare Core connection, without an ORM session: for short,
        hot writes of Core statements. Same guarantees as :meth:`transaction`."""
        async with self._queued_writer(), self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def driver_write(self) -> AsyncIterator[DriverTransaction]:
        """A write transaction whose statements run on the driver itself, compiled once: for
        the hot paths (checkout, payment, stock). Same guarantees as :meth:`transaction`.

        On a SQLite file the statements run on a connection of this process's own, on the
        event loop's thread, behind the same in-process writer queue and ``BEGIN IMMEDIATE``;
        elsewhere they run on a bare Core connection. Statements are SQLAlchemy Core with
        ``bindparam`` names, built once (at module level); errors are SQLAlchemy's own."""
        if self._sqlite_writer is None:
            async with self.write() as conn:
                tx: DriverTransaction = _EngineTransaction(self, conn)
                yield tx
            tx._committed()
            return
        async with self._queued_writer():
            sqlite_tx = _SqliteTransaction(self, self._sqlite_writer.connection())
            await sqlite_tx.begin_immediate()
            try:
                yield sqlite_tx
            except BaseException:
                sqlite_tx.rollback()
                raise
            sqlite_tx.commit()
        sqlite_tx._committed()

    @asynccontextmanager
    async def driver_read(self) -> AsyncIterator[DriverTransaction]:
        """A read-only snapshot whose statements run on the driver (see :meth:`driver_write`);
        nothing it does is committed."""
        if self._driver is None or not isinstance(self._driver, _SqliteDriverReads):
            async with self.engine.connect() as core:
                yield _EngineTransaction(self, core)
                await core.rollback()
            return
        reader = self._driver.acquire()
        try:
            reader.execute("BEGIN")
            try:
                yield _SqliteTransaction(self, reader)
            finally:
                reader.execute("ROLLBACK")
        finally:
            self._driver.release(reader)

    @asynccontextmanager
    async def _queued_writer(self) -> AsyncIterator[None]:
        if self._write_lock_name is None:
            yield
            return
        lock = _write_lock(self._write_lock_name)
        try:
            async with asyncio.timeout(SQLITE_WRITE_WAIT_SECONDS):
                await lock.acquire()
        except TimeoutError:
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            ) from None
        try:
            yield
        finally:
            lock.release()
            if self._checkpointed is not None:
                _checkpointer.committed(self._checkpointed)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session; nothing it does is committed."""
        async with self.reader_sessions() as session:
            try:
                yield session
            finally:
                await session.rollback()

    def compile_read(self, statement: ClauseElement) -> CompiledRead:
        """A SELECT compiled for :meth:`fetch`, once per statement object (keep statements at
        module level); its parameters are ``bindparam`` names."""
        found = self._compiled.get(id(statement))
        if found is not None and found[0] is statement:
            return found[1]
        query = compile_statement(statement, self.engine.dialect)
        self._compiled[id(statement)] = (statement, query)
        return query

    async def fetch(self, query: CompiledRead, /, **params: Any) -> Rows:
        """Run a compiled SELECT on the driver itself, for hot reads; rows are the driver's own
        values (on SQLite, datetimes and JSON arrive as text).

        On SQLite the query runs on a read-only connection of the calling thread, without a hop
        to a worker thread: an indexed read takes tens of microseconds, less than the hop. Should
        the database be locked, it is retried through the engine, which waits. On PostgreSQL it
        runs on a small asyncpg pool of its own, with statements prepared once per connection.
        One statement is one snapshot on both.
        """
        args = query.arguments(params)
        if self._driver is not None:
            rows = await self._driver.fetch(query.sql, args)
            if rows is not None:
                return rows
        async with self.engine.connect() as conn:
            result = await conn.exec_driver_sql(query.sql, args)
            return [tuple(row) for row in result.all()]

    async def ping(self) -> None:
        """Raise when the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrate(
        self,
        script_location: Path,
        revision: str = "head",
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply this service's Alembic migrations up to ``revision``; ``attributes`` reach the
        migrations as ``context.config.attributes`` (the field cipher, for data migrations)."""
        cfg = Config()
        cfg.attributes.update(attributes or {})
        cfg.set_main_option("script_location", str(script_location))
        async with self.engine.connect() as conn:
            if self.schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                await conn.commit()

            def _upgrade(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                cfg.attributes["schema"] = self.schema
                command.upgrade(cfg, revision)

            await conn.run_sync(_upgrade)
            await conn.commit()

    async def drop_schema(self) -> None:
        """Drop this service's PostgreSQL schema and everything in it (tests and resets)."""
        if self.schema:
            async with self.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    async def dispose(self) -> None:
        if self._driver is not None:
            await self._driver.close()
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()
        if self._checkpointed is not None:
            _checkpointer.unregister(self._checkpointed)
            self._checkpointed = None
        await self.engine.dispose()


class _SqliteDriverReads:
    """Read-only sqlite3 connections, one per thread that reads (in practice the event loop's),
    and a few more for snapshots held across awaits (:meth:`Database.driver_read`)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._free: list[sqlite3.Connection] = []

    def acquire(self) -> sqlite3.Connection:
        """A read-only connection for one snapshot; give it back with :meth:`release`."""
        if self._free:
            return self._free.pop()
        conn = sqlite3.connect(
            self._path, isolation_level=None, cached_statements=256, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA query_only=1")
        self._all.append(conn)
        return conn

    def release(self, conn: sqlite3.Connection) -> None:
        if conn in self._all:
            self._free.append(conn)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, cached_statements=256)
            # Never wait for a lock on the event loop: a busy database goes through the engine.
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._all.append(conn)
        return conn

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> Rows | None:
        try:
            rows: Rows = self._connection().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None
            raise
        return rows

    async def close(self) -> None:
        for conn in self._all:
            # One opened by another thread can only be closed there; it goes with that thread.
            with contextlib.suppress(sqlite3.ProgrammingError):
                conn.close()
        self._all.clear()
        self._free.clear()
        self._local = threading.local()


class _PostgresDriverReads:
    """A small asyncpg pool for hot reads; connections keep no state between reads, so they
    are returned without the reset round trip."""

    def __init__(self, url: Any, schema: str, size: int) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._schema = schema
        self._size = size
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        # asyncpg's pool hands a freed connection to whoever asks first, so under load a waiting
        # read can be overtaken again and again (a p99 hundreds of times the p50); the semaphore
        # queues reads in arrival order.
        self._turns: asyncio.Semaphore | None = None

    async def _get_pool(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop, self._pool = asyncio.Lock(), loop, None
            self._turns = asyncio.Semaphore(self._size)
        async with self._lock:
            if self._pool is None:
                import asyncpg

                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._size,
                    server_settings={"search_path": self._schema},
                    reset=_keep_connection,
                )
        return self._pool

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> Rows | None:
        pool = await self._get_pool()
        assert self._turns is not None
        async with self._turns:
            rows: Rows = await pool.fetch(sql, *args)
        return rows

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.close()
        elif pool is not None:
            pool.terminate()


async def _keep_connection(_connection: Any) -> None:
    return None


_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _InlineSqlite(aiosqlite.Connection):
    """An aiosqlite connection whose SQLite calls run on the calling (event loop) thread.

    The worker thread is kept for the one case where a call would wait: SQLite answers busy
    when another process holds the write lock. The connection runs with a busy timeout of zero
    on the loop's thread, so such a call fails at once without an effect, and is then run again
    on the worker thread under the configured busy timeout, without blocking the event loop.
    Writers of this process never meet that case: they queue in front of ``BEGIN IMMEDIATE``.
    """

    busy_timeout_ms = int(SQLITE_WRITE_WAIT_SECONDS * 1000)

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _SQLITE_BUSY_CODES:
                raise
        conn = self._connection
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        try:
            return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            if self._connection is not None:
                self._connection.execute("PRAGMA busy_timeout=0")


def _inline_sqlite_connect(database: str, **kwargs: Any) -> aiosqlite.Connection:
    def connector() -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(database, **kwargs)
        return conn

    connection: aiosqlite.Connection = _InlineSqlite(connector, 64)
    return connection


def _configure_sqlite(engine: AsyncEngine) -> None:
    # The driver's own transaction handling is turned off so that BEGIN is ours to emit: SQLite
    # then gives real snapshot reads and ``BEGIN IMMEDIATE`` for writers (SQLAlchemy's recipe).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        inline = isinstance(getattr(dbapi_connection, "_connection", None), _InlineSqlite)
        cursor.execute(f"PRAGMA busy_timeout={0 if inline else 30000}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class DriverTransaction:
    """One transaction of :meth:`Database.driver_write` or :meth:`Database.driver_read`.

    Statements are SQLAlchemy Core built once, at module level, with ``bindparam`` names; each
    is compiled once per database and run on the driver with the types' conversions applied
    both ways, so rows read here hold the values a Core ``execute`` would give."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._after_commit: list[Callable[[], None]] = []

    async def execute(self, statement: ClauseElement, /, **params: Any) -> int:
        """Run an INSERT, UPDATE or DELETE; the number of rows it touched."""
        raise NotImplementedError

    async def executemany(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run one statement for each of ``rows``."""
        raise NotImplementedError

    async def _fetch(self, query: CompiledRead, args: tuple[Any, ...]) -> Rows:
        raise NotImplementedError

    async def rows(self, statement: ClauseElement, /, **params: Any) -> list[dict[str, Any]]:
        """The rows of a SELECT (or a statement with RETURNING), as column-name mappings."""
        query = self.db.compile_read(statement)
        found = await self._fetch(query, _arguments(query, params))
        return [query.mapping(row) for row in found]

    async def row(self, statement: ClauseElement, /, **params: Any) -> dict[str, Any] | None:
        """The first row, or None."""
        found = await self.rows(statement, **params)
        return found[0] if found else None

    async def scalar(self, statement: ClauseElement, /, **params: Any) -> Any:
        """The first column of the first row, or None."""
        found = await self.row(statement, **params)
        return None if found is None else next(iter(found.values()))

    async def insert(
        self, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert one row or several with the same columns; columns left out take their
        Python-side defaults as ``session.execute(insert(table), rows)`` would."""
        await _insert_rows(self, table, rows)

    @property
    def is_postgres(self) -> bool:
        """Whether the statements run on PostgreSQL (for dialect-specific statements)."""
        return self.db.is_postgres

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed (never after a rollback)."""
        if callback not in self._after_commit:
            self._after_commit.append(callback)

    def _committed(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


class Statements(Protocol):
    """What code shared by ORM sessions and driver transactions runs its statements with: a
    :class:`DriverTransaction`, or an ``AsyncSession`` seen through :func:`statements`.
    Statements are SQLAlchemy Core built once, at module level, with ``bindparam`` names.
    ``execute`` runs an INSERT as written, giving left-out columns no Python-side default;
    ``insert`` fills them in."""

    @property
    def is_postgres(self) -> bool: ...

    async def execute(self, statement: ClauseElement, /, **params: Any) -> int: ...

    async def executemany(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None: ...

    async def rows(
        self, statement: ClauseElement, /, **params: Any
    ) -> Sequence[Mapping[str, Any]]: ...

    async def row(self, statement: ClauseElement, /, **params: Any) -> Mapping[str, Any] | None: ...

    async def scalar(self, statement: ClauseElement, /, **params: Any) -> Any: ...

    async def insert(
        self, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> None: ...

    def after_commit(self, callback: Callable[[], None]) -> None: ...


def statements(tx: AsyncSession | Statements) -> Statements:
    """The statement API of ``tx``: a driver transaction as it is, an ORM session adapted."""
    return SessionStatements(tx) if isinstance(tx, AsyncSession) else tx


# The callbacks to run once an ORM session's transaction commits, in the session's ``info``.
_AFTER_COMMIT_KEY = "ecosistema-after-commit"


class SessionStatements:
    """An ``AsyncSession`` with the statement API of a :class:`DriverTransaction`, for code that
    runs in either.

    Reads go through the session, so rows are the session's own (``RowMapping``, converted by
    the columns' types as any session read). Writes return only a count, so they run as a
    driver transaction's do: compiled once per dialect and run on the session's connection,
    without a statement's construction and ORM execution each time (the session holds no
    mapped objects to flush first)."""

    __slots__ = ("session",)

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def is_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    async def execute(self, statement: ClauseElement, /, **params: Any) -> int:
        """Run an INSERT, UPDATE or DELETE; the number of rows it touched."""
        conn = await self.session.connection()
        query = _compiled_for(statement, conn.dialect)
        result = await conn.exec_driver_sql(query.sql, _arguments(query, params))
        return int(result.rowcount)

    async def executemany(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run one statement for each of ``rows``."""
        conn = await self.session.connection()
        query = _compiled_for(statement, conn.dialect)
        await conn.exec_driver_sql(query.sql, [_arguments(query, row) for row in rows])

    async def rows(self, statement: ClauseElement, /, **params: Any) -> Sequence[Mapping[str, Any]]:
        """The rows of a SELECT (or a statement with RETURNING), as column-name mappings."""
        result = await self._read(statement, params)
        return cast(list[Mapping[str, Any]], list(result.mappings()))

    async def row(self, statement: ClauseElement, /, **params: Any) -> Mapping[str, Any] | None:
        """The first row, or None."""
        result = await self._read(statement, params)
        return cast(Mapping[str, Any] | None, result.mappings().first())

    async def scalar(self, statement: ClauseElement, /, **params: Any) -> Any:
        """The first column of the first row, or None."""
        return (await self._read(statement, params)).scalar()

    async def _read(self, statement: ClauseElement, params: dict[str, Any]) -> Result[Any]:
        return await self.session.execute(cast(Executable, statement), params)

    async def insert(
        self, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert one row or several with the same columns, as :meth:`DriverTransaction.insert`."""
        await _insert_rows(self, table, rows)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the session's transaction has committed (never after a
        rollback); once per transaction however often it is asked."""
        sync = self.session.sync_session
        pending: list[Callable[[], None]] | None = sync.info.get(_AFTER_COMMIT_KEY)
        if pending is None:
            pending = sync.info[_AFTER_COMMIT_KEY] = []
            event.listen(sync, "after_commit", _run_after_commit, once=True)
            event.listen(sync, "after_rollback", _forget_after_commit, once=True)
        if callback not in pending:
            pending.append(callback)


def _run_after_commit(session: Any) -> None:
    for callback in session.info.pop(_AFTER_COMMIT_KEY, ()):
        callback()


def _forget_after_commit(session: Any) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)


# Statements compiled for sessions, per dialect; like ``Database.compile_read`` it holds the
# statement itself, so an id is never reused while its entry lives (statements are module-level).
_session_compiled: dict[tuple[int, str, str], tuple[ClauseElement, CompiledRead]] = {}


def _compiled_for(statement: ClauseElement, dialect: Dialect) -> CompiledRead:
    key = (id(statement), dialect.name, dialect.driver)
    found = _session_compiled.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    query = compile_statement(statement, dialect)
    _session_compiled[key] = (statement, query)
    return query


async def _insert_rows(
    tx: Statements, table: Table, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> None:
    many = [rows] if isinstance(rows, Mapping) else list(rows)
    if not many:
        return
    filled = [_with_defaults(table, row) for row in many]
    statement = _insert_statement(table, tuple(filled[0]))
    if len(filled) == 1:
        await tx.execute(statement, **filled[0])
    else:
        await tx.executemany(statement, filled)


def _arguments(query: CompiledRead, params: Mapping[str, Any]) -> tuple[Any, ...]:
    try:
        return query.arguments(params)
    except (KeyError, TypeError, ValueError) as exc:
        # As a Core execution reports a value its column type refused.
        raise StatementError(str(exc), query.sql, params, exc) from exc


_insert_statements: dict[tuple[Table, tuple[str, ...]], Any] = {}


def _insert_statement(table: Table, names: tuple[str, ...]) -> Any:
    key = (table, names)
    found = _insert_statements.get(key)
    if found is None:
        found = _insert_statements[key] = insert(table).values(
            {table.c[name]: bindparam(name, type_=table.c[name].type) for name in names}
        )
    return found


_python_defaults: dict[Table, tuple[tuple[str, bool, Any], ...]] = {}


def _with_defaults(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    defaults = _python_defaults.get(table)
    if defaults is None:
        found = []
        for column in table.columns:
            default: Any = column.default
            if default is not None and (default.is_scalar or default.is_callable):
                found.append((column.key, bool(default.is_callable), default.arg))
        defaults = _python_defaults[table] = tuple(found)
    out = dict(row)
    for key, is_callable, arg in defaults:
        if key not in out:
            out[key] = arg(None) if is_callable else arg
    return out


class _SqliteTransaction(DriverTransaction):
    """Statements on a sqlite3 connection of this process, on the calling thread."""

    def __init__(self, db: Database, conn: sqlite3.Connection) -> None:
        super().__init__(db)
        self._conn = conn

    async def begin_immediate(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _SQLITE_BUSY_CODES:
                raise _translated(exc, "BEGIN IMMEDIATE", ()) from exc
            # Another process holds the write lock: wait for it off the event loop's thread.
            waiting = asyncio.ensure_future(asyncio.to_thread(_begin_waiting, self._conn))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The thread may still take the lock after this caller is gone: let it finish,
                # and give the lock back, so the connection is free for the next writer.
                with contextlib.suppress(Exception):
                    await asyncio.wait([waiting])
                self.rollback()
                raise

    def commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            raise _translated(exc, "COMMIT", ()) from exc

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    async def execute(self, statement: ClauseElement, /, **params: Any) -> int:
        query = self.db.compile_read(statement)
        args = _arguments(query, params)
        try:
            return self._conn.execute(query.sql, args).rowcount
        except sqlite3.Error as exc:
            raise _translated(exc, query.sql, args) from exc

    async def executemany(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        query = self.db.compile_read(statement)
        many = [_arguments(query, row) for row in rows]
        try:
            self._conn.executemany(query.sql, many)
        except sqlite3.Error as exc:
            raise _translated(exc, query.sql, many) from exc

    async def _fetch(self, query: CompiledRead, args: tuple[Any, ...]) -> Rows:
        try:
            rows: Rows = self._conn.execute(query.sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _translated(exc, query.sql, args) from exc
        return rows


def _begin_waiting(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout={int(SQLITE_WRITE_WAIT_SECONDS * 1000)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translated(exc, "BEGIN IMMEDIATE", ()) from exc
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _translated(exc: sqlite3.Error, sql: str, args: Any) -> Exception:
    """A driver's error as SQLAlchemy raises it (IntegrityError, OperationalError ...)."""
    return DBAPIError.instance(sql, args, exc, sqlite3.Error)


class _EngineTransaction(DriverTransaction):
    """Statements compiled once, run with ``exec_driver_sql`` on a Core connection (PostgreSQL,
    and SQLite in memory)."""

    def __init__(self, db: Database, conn: AsyncConnection) -> None:
        super().__init__(db)
        self._conn = conn

    async def execute(self, statement: ClauseElement, /, **params: Any) -> int:
        query = self.db.compile_read(statement)
        result = await self._conn.exec_driver_sql(query.sql, _arguments(query, params))
        return int(result.rowcount)

    async def executemany(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        query = self.db.compile_read(statement)
        await self._conn.exec_driver_sql(query.sql, [_arguments(query, row) for row in rows])

    async def _fetch(self, query: CompiledRead, args: tuple[Any, ...]) -> Rows:
        result = await self._conn.exec_driver_sql(query.sql, args)
        return [tuple(row) for row in result.all()]


class _SqliteWriter:
    """The write connection of this process to one SQLite file, one per thread that writes (in
    practice the event loop's); the in-process writer queue gives it to one writer at a time."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, cached_statements=256, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=0")
            self._local.conn = conn
            self._all.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._all:
            with contextlib.suppress(sqlite3.ProgrammingError):
                conn.close()
        self._all.clear()
        self._local = threading.local()
