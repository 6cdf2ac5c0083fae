"""SQLite checkpoints off the event loop: the connections that commit leave copying the
write-ahead log into the database to the process's checkpoint thread, which does it after a run
of commits or shortly after the last one, and stops watching a file once no database uses it."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy import text

from ecosistema.platform import db as db_module
from ecosistema.platform.db import SQLITE_AUTOCHECKPOINT_PAGES, Database


async def _database(tmp_path: Path) -> Database:
    db = Database("ckpt", f"sqlite+aiosqlite:///{tmp_path}/ckpt.db")
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    return db


def _rows_in_database_file(tmp_path: Path) -> int | None:
    """Rows of ``notes`` in the database file alone, without its write-ahead log: what a
    checkpoint has copied there. None while a checkpoint is halfway through the copy."""
    copy = tmp_path / "copy" / "ckpt.db"
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "ckpt.db", copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


async def _wait_for_rows(tmp_path: Path, expected: int) -> int | None:
    seen = None
    for _ in range(300):
        seen = _rows_in_database_file(tmp_path)
        if seen == expected:
            break
        await asyncio.sleep(0.05)
    return seen


async def test_connections_that_commit_leave_checkpoints_to_the_thread(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    try:
        async with db.transaction() as session:
            pages = (await session.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        assert pages == SQLITE_AUTOCHECKPOINT_PAGES
        async with db.driver_write():
            pass
        assert db._sqlite_writer is not None
        writer = db._sqlite_writer.connection()
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == pages
    finally:
        await db.dispose()


async def test_a_run_of_commits_is_copied_into_the_database(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    try:
        commits = db_module.CHECKPOINT_AFTER_COMMITS + 6
        for n in range(commits):
            async with db.write() as conn:
                await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": f"n{n}"})
        assert await _wait_for_rows(tmp_path, commits) == commits
    finally:
        await db.dispose()


async def test_a_lone_commit_is_copied_after_the_interval(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    try:
        # The table was created by the first commit; it alone starts the clock.
        assert await _wait_for_rows(tmp_path, 0) == 0
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('one')"))
        assert await _wait_for_rows(tmp_path, 1) == 1
    finally:
        await db.dispose()


async def test_a_file_is_watched_while_a_database_uses_it(tmp_path: Path) -> None:
    first = await _database(tmp_path)
    second = Database("ckpt", f"sqlite+aiosqlite:///{tmp_path}/ckpt.db")
    path = str((tmp_path / "ckpt.db").resolve())
    assert path in db_module._checkpointer.paths()
    await first.dispose()
    assert path in db_module._checkpointer.paths()
    await second.dispose()
    assert path not in db_module._checkpointer.paths()


async def test_in_memory_databases_are_not_watched(tmp_path: Path) -> None:
    before = db_module._checkpointer.paths()
    db = Database("ckpt", "sqlite+aiosqlite:///:memory:")
    try:
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
        assert db_module._checkpointer.paths() == before
    finally:
        await db.dispose()


def test_a_forked_child_forgets_the_parents_thread_and_files(tmp_path: Path) -> None:
    checkpointer = db_module._Checkpointer()
    checkpointer.register(str(tmp_path / "parent.db"))
    checkpointer.forget()  # what a forked child runs first
    assert checkpointer.paths() == []
    checkpointer.register(str(tmp_path / "child.db"))
    try:
        assert checkpointer.paths() == [str(tmp_path / "child.db")]
        assert checkpointer._thread is not None and checkpointer._thread.is_alive()
    finally:
        checkpointer.unregister(str(tmp_path / "child.db"))
