"""Field encryption for personal data: AES-256-GCM envelope encryption, key rotation, blind indexes.

Every value gets its own random data key (DEK). The DEK is wrapped by the active master key and
stored beside the ciphertext together with that key's id, so rotating the master key never makes
an old value unreadable. The value is bound to its place (table, column, row id) as associated
data: a ciphertext copied to another row, column or table fails to decrypt.

Token format (ASCII, ``.``-separated)::

    v1.<key id>.<b64url(wrap nonce | wrapped DEK)>.<b64url(nonce | ciphertext)>
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import ColumnClause, bindparam, func, select, update
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table

from ecosistema.platform.config import Settings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: rotations are not run concurrently there
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ecosistema.platform.db import Database
    from ecosistema.platform.service import EncryptedColumn

log = structlog.get_logger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TOKEN_VERSION = "v1"
KEY_FILE_NAME = "master.key"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEX_KEY_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class KeyConfigurationError(RuntimeError):
    """Key material is missing or invalid, or a key operation cannot be done with this setup."""


# What a key setting must be, as the rule an operator reads after the setting's name.
KEY_FORMAT_RULE = (
    f"must be {KEY_BYTES} random bytes, as 64 hex digits or base64; generate one with: "
    'python -c "import secrets; print(secrets.token_hex(32))"'
)
KEY_ID_RULE = "is not a valid key id: use 1-64 letters, digits, '-' or '_'"


class DecryptionError(Exception):
    """A token is malformed, was tampered with, belongs elsewhere, or its key is unknown."""


def parse_key(material: str, *, name: str) -> bytes:
    """Decode a 32-byte key given as hex (64 digits) or base64 (standard or URL-safe)."""
    text = material.strip()
    if _HEX_KEY_RE.match(text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise KeyConfigurationError(f"{name} {KEY_FORMAT_RULE}")
    return raw


def is_key_id(key_id: str) -> bool:
    """Whether ``key_id`` may name a master key (it travels in every token)."""
    return bool(_KEY_ID_RE.match(key_id))


def _check_key_id(key_id: str, *, name: str) -> str:
    if not is_key_id(key_id):
        raise KeyConfigurationError(f"{name} {key_id!r} {KEY_ID_RULE}")
    return key_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class _KeyState:
    active: str
    keys: dict[str, bytes]
    index_key: bytes


class MasterKeyring:
    """The master keys by id, one of them active, plus the blind-index key that never rotates.

    A keyring read from a key file follows that file: when ``ecosistema keys rotate`` writes a
    new key, a running process picks it up on its next encryption or on the first token that
    names the new key, so rotation needs no restart.
    """

    def __init__(
        self,
        keys: dict[str, bytes],
        active: str,
        *,
        index_key: bytes,
        path: Path | None = None,
    ) -> None:
        self._state = _validate_state(active, keys, index_key)
        self.path = path
        self._file_signature = _signature(path) if path else None

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKeyring:
        """Keys from ``ECOSISTEMA_MASTER_KEY`` (+ ``_OLD_MASTER_KEYS``) or the embedded key file."""
        if settings.master_key is None or not settings.master_key.get_secret_value().strip():
            return cls.from_key_file(settings.data_dir / KEY_FILE_NAME)
        active = _check_key_id(settings.master_key_id, name="ECOSISTEMA_MASTER_KEY_ID")
        keys = {
            active: parse_key(settings.master_key.get_secret_value(), name="ECOSISTEMA_MASTER_KEY")
        }
        for kid, secret in settings.old_master_keys.items():
            _check_key_id(kid, name="a key id in ECOSISTEMA_OLD_MASTER_KEYS")
            if kid == active:
                raise KeyConfigurationError(
                    f"key id {kid!r} is both ECOSISTEMA_MASTER_KEY_ID and in "
                    "ECOSISTEMA_OLD_MASTER_KEYS; give the new master key a new id"
                )
            keys[kid] = parse_key(
                secret.get_secret_value(), name=f"ECOSISTEMA_OLD_MASTER_KEYS[{kid!r}]"
            )
        if settings.blind_index_key is None or not settings.blind_index_key.get_secret_value():
            raise KeyConfigurationError(
                "ECOSISTEMA_BLIND_INDEX_KEY is required when ECOSISTEMA_MASTER_KEY is set: it keys "
                "the lookups on encrypted fields and must never change (32 bytes, hex or base64)"
            )
        index_key = parse_key(
            settings.blind_index_key.get_secret_value(), name="ECOSISTEMA_BLIND_INDEX_KEY"
        )
        return cls(keys, active, index_key=index_key)

    @classmethod
    def from_key_file(cls, path: Path) -> MasterKeyring:
        """The embedded shape's keyring, created (mode 0600) on first start."""
        if not path.exists():
            _create_key_file(path)
        state = _read_key_file(path)
        return cls(state.keys, state.active, index_key=state.index_key, path=path)

    @property
    def active_id(self) -> str:
        """The id of the key new values are wrapped with."""
        self.refresh()
        return self._state.active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this keyring can unwrap."""
        return tuple(self._state.keys)

    @property
    def index_key(self) -> bytes:
        return self._state.index_key

    def active_key(self) -> tuple[str, bytes]:
        """The active key id and key."""
        self.refresh()
        state = self._state
        return state.active, state.keys[state.active]

    def key(self, key_id: str) -> bytes | None:
        """The key with this id, re-reading the key file once if the id is new to us."""
        found = self._state.keys.get(key_id)
        if found is None and self.refresh():
            found = self._state.keys.get(key_id)
        return found

    def refresh(self) -> bool:
        """Re-read the key file when it changed on disk; true when the keys were reloaded."""
        if self.path is None:
            return False
        signature = _signature(self.path)
        if signature == self._file_signature:
            return False
        state = _read_key_file(self.path)
        if state.index_key != self._state.index_key:
            raise KeyConfigurationError(
                f"the blind-index key in {self.path} changed; lookups on encrypted fields would "
                "break. Restore the previous key file."
            )
        self._state = state
        self._file_signature = signature
        log.info("master_keys_reloaded", path=str(self.path), active=state.active)
        return True


def _validate_state(active: str, keys: dict[str, bytes], index_key: bytes) -> _KeyState:
    if active not in keys:
        raise KeyConfigurationError(f"the active master key {active!r} is not among the keys")
    for kid, key in keys.items():
        _check_key_id(kid, name="master key id")
        if len(key) != KEY_BYTES:
            raise KeyConfigurationError(f"master key {kid!r} is not {KEY_BYTES} bytes")
    if len(index_key) != KEY_BYTES:
        raise KeyConfigurationError(f"the blind-index key is not {KEY_BYTES} bytes")
    return _KeyState(active=active, keys=dict(keys), index_key=index_key)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_key_file(path: Path) -> _KeyState:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        active = str(document["active"])
        keys = {
            str(kid): parse_key(str(value), name=f"master key {kid!r} in {path}")
            for kid, value in dict(document["keys"]).items()
        }
        index_key = parse_key(str(document["index_key"]), name=f"index_key in {path}")
    except KeyConfigurationError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyConfigurationError(f"cannot read the master key file {path}: {exc}") from exc
    mode = path.stat().st_mode & 0o777
    if os.name == "posix" and mode & 0o077:
        log.warning("master_key_file_permissions", path=str(path), mode=oct(mode), expected="0o600")
    return _validate_state(active, keys, index_key)


def _key_file_document(state: _KeyState) -> bytes:
    document = {
        "active": state.active,
        "keys": {kid: base64.b64encode(key).decode("ascii") for kid, key in state.keys.items()},
        "index_key": base64.b64encode(state.index_key).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _KeyState(
        active="mk1",
        keys={"mk1": secrets.token_bytes(KEY_BYTES)},
        index_key=secrets.token_bytes(KEY_BYTES),
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_private(tmp, _key_file_document(state))
    try:
        # A hard link publishes the complete file or fails if another process won the race.
        os.link(tmp, path)
    except FileExistsError:
        return
    finally:
        tmp.unlink(missing_ok=True)
    log.warning(
        "master_key_generated",
        path=str(path),
        detail="A master key was generated for field encryption. Back this file up: without it "
        "the encrypted personal data cannot be read. In production set ECOSISTEMA_MASTER_KEY "
        "and ECOSISTEMA_BLIND_INDEX_KEY instead.",
    )


def _replace_key_file(path: Path, state: _KeyState) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_private(tmp, _key_file_document(state))
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _key_file_lock(path: Path) -> Iterator[None]:
    # Two rotations at once must not each drop the other's new key.
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class FieldCipher:
    """Encrypts and decrypts personal data fields, and computes their blind indexes."""

    def __init__(self, keyring: MasterKeyring) -> None:
        self.keyring = keyring
        self._index_keys: dict[str, bytes] = {}

    def encrypt(self, plaintext: str, *, table: str, column: str, row_id: str) -> str:
        """A token holding ``plaintext``, readable only at this table/column/row."""
        kid, master = self.keyring.active_key()
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = AESGCM(master).encrypt(wrap_nonce, dek, _wrap_aad(kid))
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(dek).encrypt(
            nonce, plaintext.encode("utf-8"), _value_aad(table, column, row_id)
        )
        return ".".join((TOKEN_VERSION, kid, _b64(wrap_nonce + wrapped), _b64(nonce + sealed)))

    def decrypt(self, token: str, *, table: str, column: str, row_id: str) -> str:
        """The plaintext of a token made for this table/column/row, else ``DecryptionError``."""
        kid, wrapped_part, sealed_part = _split(token)
        master = self.keyring.key(kid)
        if master is None:
            raise DecryptionError(f"unknown master key id {kid!r}")
        try:
            wrapped = _unb64(wrapped_part)
            sealed = _unb64(sealed_part)
        except (binascii.Error, ValueError) as exc:
            raise DecryptionError("malformed token") from exc
        if len(wrapped) <= NONCE_BYTES or len(sealed) <= NONCE_BYTES:
            raise DecryptionError("malformed token")
        try:
            dek = AESGCM(master).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(kid)
            )
            plain = AESGCM(dek).decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _value_aad(table, column, row_id)
            )
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError("token does not decrypt here: tampered or moved") from exc
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError as exc:  # pragma: no cover - authenticated, so only by a bug
            raise DecryptionError("plaintext is not UTF-8") from exc

    def key_id_of(self, token: str) -> str:
        """The id of the master key that wrapped this token's data key."""
        return _split(token)[0]

    def needs_reencryption(self, token: str) -> bool:
        """Whether the token was wrapped by a key other than the active one."""
        return self.key_id_of(token) != self.keyring.active_id

    def blind_index(self, value: str, *, purpose: str) -> str:
        """A keyed, deterministic digest of ``value`` for exact-match lookups (hex).

        The caller normalises ``value`` first (e.g. an email trimmed and lower-cased); ``purpose``
        names the lookup (``"user.email"``) so equal values in different fields do not match.
        """
        key = self._index_keys.get(purpose)
        if key is None:
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=KEY_BYTES,
                salt=None,
                info=b"ecosistema/blind-index/v1/" + purpose.encode("utf-8"),
            ).derive(self.keyring.index_key)
            self._index_keys[purpose] = key
        return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def _wrap_aad(kid: str) -> bytes:
    return f"{TOKEN_VERSION}|{kid}".encode("ascii")


def _value_aad(table: str, column: str, row_id: str) -> bytes:
    # JSON keeps the three parts apart: ("a/b", "c") and ("a", "b/c") must not collide.
    return json.dumps([TOKEN_VERSION, table, column, row_id], ensure_ascii=False).encode("utf-8")


def _split(token: str) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise DecryptionError("token is not a string")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        raise DecryptionError(f"not a {TOKEN_VERSION} field-encryption token")
    _, kid, wrapped, sealed = parts
    if not _KEY_ID_RE.match(kid):
        raise DecryptionError("malformed key id in token")
    return kid, wrapped, sealed


def load_cipher(settings: Settings) -> FieldCipher:
    """The process's field cipher; fails at startup with a clear message on bad key material."""
    return FieldCipher(MasterKeyring.from_settings(settings))


def rotate_master_key(settings: Settings) -> str:
    """Add a new master key to the key file and make it active; returns its id."""
    if settings.master_key is not None and settings.master_key.get_secret_value().strip():
        raise KeyConfigurationError(
            "the master key comes from settings, so it is rotated there: set "
            "ECOSISTEMA_OLD_MASTER_KEYS to include the current key under its id "
            f"({settings.master_key_id!r}), set ECOSISTEMA_MASTER_KEY to a new random value with a "
            "new ECOSISTEMA_MASTER_KEY_ID, restart, then run `ecosistema keys rotate` to re-encrypt"
        )
    path = settings.data_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
    with _key_file_lock(path):
        current = _read_key_file(path)
        number = len(current.keys) + 1
        while f"mk{number}" in current.keys:
            number += 1
        kid = f"mk{number}"
        keys = {**current.keys, kid: secrets.token_bytes(KEY_BYTES)}
        _replace_key_file(path, _KeyState(active=kid, keys=keys, index_key=current.index_key))
    log.info("master_key_rotated", path=str(path), active=kid, previous=current.active)
    return kid


async def reencrypt_columns(
    ctx_db: Database,
    cipher: FieldCipher,
    columns: Sequence[EncryptedColumn],
    *,
    batch_size: int = 500,
) -> int:
    """Re-wrap every value not under the active master key; returns how many were rewritten.

    Each batch is its own short transaction, so the service keeps serving meanwhile. A row that
    changed between read and write is left as the service wrote it.
    """
    active = cipher.keyring.active_id
    prefix = f"{TOKEN_VERSION}.{active}."
    rewritten = 0
    for spec in columns:
        id_col: ColumnClause[Any] = sql_column(spec.id_column)
        value_col: ColumnClause[Any] = sql_column(spec.column)
        target = sql_table(spec.table, id_col, value_col)
        last_id: Any = None
        while True:
            query = (
                select(id_col, value_col)
                .select_from(target)
                .where(value_col.is_not(None))
                .where(func.substr(value_col, 1, len(prefix)) != prefix)
                .order_by(id_col)
                .limit(batch_size)
            )
            if last_id is not None:
                query = query.where(id_col > last_id)
            async with ctx_db.transaction() as session:
                rows = (await session.execute(query)).all()
                if not rows:
                    break
                last_id = rows[-1][0]
                changes = []
                for row_id, token in rows:
                    fresh = _rewrap(cipher, spec, row_id, token)
                    if fresh is not None:
                        changes.append({"b_id": row_id, "b_old": token, "b_new": fresh})
                for change in changes:
                    statement = (
                        update(target)
                        .where(id_col == bindparam("b_id"))
                        .where(value_col == bindparam("b_old"))
                        .values({spec.column: bindparam("b_new")})
                    )
                    result = await session.execute(statement, change)
                    rewritten += int(getattr(result, "rowcount", 0) or 0)
            if len(rows) < batch_size:
                break
        log.info("column_reencrypted", table=spec.table, column=spec.column, active=active)
    return rewritten


def _rewrap(cipher: FieldCipher, spec: EncryptedColumn, row_id: Any, token: Any) -> str | None:
    place = {"table": spec.table, "column": spec.column, "row_id": str(row_id)}
    try:
        plaintext = cipher.decrypt(str(token), **place)
    except DecryptionError as exc:
        log.error("reencrypt_skipped_value", reason=str(exc), **place)
        return None
    return cipher.encrypt(plaintext, **place)
