"""Master keys on disk and their rotation, with re-encryption over real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from structlog.testing import capture_logs

from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import (
    FieldCipher,
    KeyConfigurationError,
    load_cipher,
    reencrypt_columns,
    rotate_master_key,
)
from ecosistema.platform.db import Database
from ecosistema.platform.service import EncryptedColumn
from tests.conftest import PG_URL, make_settings, requires_postgres, unique

COLUMNS = [EncryptedColumn("customers", "email"), EncryptedColumn("customers", "phone")]


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    return make_settings("embedded", tmp_path / "data")


def test_first_start_creates_a_private_key_file_and_warns(embedded: Settings) -> None:
    with capture_logs() as logs:
        cipher = load_cipher(embedded)
    path = embedded.data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["active"] == cipher.keyring.active_id
    assert set(document["keys"]) == {document["active"]}
    assert any(e["event"] == "master_key_generated" for e in logs)
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "master_key_generated")


def test_later_starts_reuse_the_key_file(embedded: Settings) -> None:
    first = load_cipher(embedded)
    token = first.encrypt("ana@example.com", table="t", column="c", row_id="1")
    with capture_logs() as logs:
        second = load_cipher(embedded)
    assert second.decrypt(token, table="t", column="c", row_id="1") == "ana@example.com"
    assert second.blind_index("a", purpose="p") == first.blind_index("a", purpose="p")
    assert not any(e["event"] == "master_key_generated" for e in logs)


def test_corrupt_key_file_is_a_clear_startup_error(embedded: Settings) -> None:
    embedded.data_dir.mkdir(parents=True)
    (embedded.data_dir / "master.key").write_text("{not json")
    with pytest.raises(KeyConfigurationError, match=r"master\.key"):
        load_cipher(embedded)


def test_rotation_keeps_old_tokens_readable_in_a_running_process(embedded: Settings) -> None:
    running = load_cipher(embedded)
    old_token = running.encrypt("ana@example.com", table="t", column="c", row_id="1")
    index_before = running.blind_index("ana@example.com", purpose="customer.email")

    new_kid = rotate_master_key(embedded)

    assert new_kid != running.key_id_of(old_token)
    assert stat.S_IMODE((embedded.data_dir / "master.key").stat().st_mode) == 0o600
    assert running.decrypt(old_token, table="t", column="c", row_id="1") == "ana@example.com"
    assert running.needs_reencryption(old_token)
    new_token = running.encrypt("ana@example.com", table="t", column="c", row_id="1")
    assert running.key_id_of(new_token) == new_kid
    assert running.blind_index("ana@example.com", purpose="customer.email") == index_before


def test_a_process_loaded_before_rotation_reads_tokens_made_after_it(embedded: Settings) -> None:
    stale = load_cipher(embedded)
    rotate_master_key(embedded)
    token = load_cipher(embedded).encrypt("x", table="t", column="c", row_id="1")
    assert stale.decrypt(token, table="t", column="c", row_id="1") == "x"


def test_rotating_settings_provided_keys_tells_the_operator_what_to_do(tmp_path: Path) -> None:
    config = make_settings(
        "embedded",
        tmp_path,
        master_key=SecretStr(secrets.token_hex(32)),
        blind_index_key=SecretStr(secrets.token_hex(32)),
    )
    with pytest.raises(KeyConfigurationError, match="ECOSISTEMA_OLD_MASTER_KEYS"):
        rotate_master_key(config)


async def _create_customers(db: Database) -> None:
    async with db.engine.begin() as conn:
        if db.schema:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
        await conn.execute(
            text(
                f"CREATE TABLE {_qualified(db, 'customers')} "
                "(id VARCHAR(32) PRIMARY KEY, email TEXT, phone TEXT)"
            )
        )


def _qualified(db: Database, name: str) -> str:
    return f'"{db.schema}".{name}' if db.schema else name


async def _seed(db: Database, cipher: FieldCipher, count: int) -> dict[str, tuple[str, str]]:
    people = {f"{i:04d}": (f"person{i}@example.com", f"+3460000{i:04d}") for i in range(count)}
    async with db.transaction() as session:
        for row_id, (email, phone) in people.items():
            await session.execute(
                text("INSERT INTO customers (id, email, phone) VALUES (:id, :email, :phone)"),
                {
                    "id": row_id,
                    "email": cipher.encrypt(
                        email, table="customers", column="email", row_id=row_id
                    ),
                    "phone": cipher.encrypt(
                        phone, table="customers", column="phone", row_id=row_id
                    ),
                },
            )
        await session.execute(
            text("INSERT INTO customers (id, email, phone) VALUES ('zz-null', NULL, NULL)")
        )
    return people


async def _assert_all_rewrapped(
    db: Database, cipher: FieldCipher, people: dict[str, tuple[str, str]], kid: str
) -> None:
    async with db.read() as session:
        rows = (
            await session.execute(
                text("SELECT id, email, phone FROM customers WHERE email IS NOT NULL")
            )
        ).all()
    assert len(rows) == len(people)
    for row_id, email, phone in rows:
        assert cipher.key_id_of(email) == kid
        assert cipher.key_id_of(phone) == kid
        place = {"table": "customers", "row_id": row_id}
        assert cipher.decrypt(email, column="email", **place) == people[row_id][0]
        assert cipher.decrypt(phone, column="phone", **place) == people[row_id][1]


async def _rotate_and_reencrypt(db: Database, config: Settings) -> None:
    cipher = load_cipher(config)
    await _create_customers(db)
    people = await _seed(db, cipher, 7)

    new_kid = rotate_master_key(config)
    # One value already under the new key is not counted again.
    fresh = cipher.encrypt("new@example.com", table="customers", column="email", row_id="0000")
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE customers SET email = :v WHERE id = '0000'"), {"v": fresh}
        )
    people["0000"] = ("new@example.com", people["0000"][1])

    count = await reencrypt_columns(db, cipher, COLUMNS, batch_size=3)

    assert count == 7 * 2 - 1
    await _assert_all_rewrapped(db, cipher, people, new_kid)
    assert await reencrypt_columns(db, cipher, COLUMNS, batch_size=3) == 0


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database("crm", f"sqlite+aiosqlite:///{(tmp_path / 'crm.db').as_posix()}")
    yield db
    await db.dispose()


@pytest.fixture
async def postgres_db() -> AsyncIterator[Database]:
    db = Database("crm", PG_URL, schema_prefix=f"{unique()}_")
    try:
        yield db
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_reencrypt_rewrites_every_value_on_sqlite(
    sqlite_db: Database, embedded: Settings
) -> None:
    await _rotate_and_reencrypt(sqlite_db, embedded)


@requires_postgres
async def test_reencrypt_rewrites_every_value_on_postgres(
    postgres_db: Database, embedded: Settings
) -> None:
    await _rotate_and_reencrypt(postgres_db, embedded)


async def test_reencrypt_skips_unreadable_values_and_leaves_them_untouched(
    sqlite_db: Database, embedded: Settings
) -> None:
    cipher = load_cipher(embedded)
    await _create_customers(sqlite_db)
    await _seed(sqlite_db, cipher, 2)
    moved = cipher.encrypt("x", table="customers", column="email", row_id="elsewhere")
    async with sqlite_db.transaction() as session:
        await session.execute(
            text("UPDATE customers SET email = :v WHERE id = '0001'"), {"v": moved}
        )
    rotate_master_key(embedded)

    with capture_logs() as logs:
        count = await reencrypt_columns(sqlite_db, cipher, COLUMNS)

    assert count == 3
    assert any(e["event"] == "reencrypt_skipped_value" and e["row_id"] == "0001" for e in logs)
    async with sqlite_db.read() as session:
        kept = (
            await session.execute(text("SELECT email FROM customers WHERE id = '0001'"))
        ).scalar()
    assert kept == moved
