"""Field encryption: envelope tokens bound to their place, rotation-safe reads, blind indexes."""

from __future__ import annotations

import base64
import secrets

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import (
    DecryptionError,
    FieldCipher,
    KeyConfigurationError,
    MasterKeyring,
    load_cipher,
    parse_key,
)

INDEX_KEY = secrets.token_bytes(32)
KEY_1 = secrets.token_bytes(32)
KEY_2 = secrets.token_bytes(32)
PLACE = {"table": "users", "column": "email", "row_id": "r1"}


def cipher_with(keys: dict[str, bytes], active: str) -> FieldCipher:
    return FieldCipher(MasterKeyring(keys, active, index_key=INDEX_KEY))


@pytest.fixture
def cipher() -> FieldCipher:
    return cipher_with({"mk1": KEY_1}, "mk1")


@hypothesis_settings(max_examples=60, deadline=None)
@given(text=st.text(), table=st.text(min_size=1), row_id=st.text(min_size=1))
def test_any_unicode_text_round_trips(text: str, table: str, row_id: str) -> None:
    cipher = cipher_with({"mk1": KEY_1}, "mk1")
    token = cipher.encrypt(text, table=table, column="c", row_id=row_id)
    assert token.isascii()
    assert cipher.decrypt(token, table=table, column="c", row_id=row_id) == text


def test_token_is_versioned_and_names_its_key(cipher: FieldCipher) -> None:
    token = cipher.encrypt("ana@example.com", **PLACE)
    version, kid, _wrapped, _sealed = token.split(".")
    assert (version, kid) == ("v1", "mk1")
    assert cipher.key_id_of(token) == "mk1"
    assert "ana" not in token


def test_two_encryptions_of_the_same_text_differ(cipher: FieldCipher) -> None:
    first = cipher.encrypt("same", **PLACE)
    second = cipher.encrypt("same", **PLACE)
    assert first != second
    assert first.split(".")[2] != second.split(".")[2]


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"table": "users", "column": "email", "row_id": "r2"},
        {"table": "users", "column": "phone", "row_id": "r1"},
        {"table": "customers", "column": "email", "row_id": "r1"},
    ],
)
def test_ciphertext_moved_to_another_place_fails(
    cipher: FieldCipher, elsewhere: dict[str, str]
) -> None:
    token = cipher.encrypt("ana@example.com", **PLACE)
    with pytest.raises(DecryptionError):
        cipher.decrypt(token, **elsewhere)


def test_place_parts_cannot_be_shifted_between_table_and_column(cipher: FieldCipher) -> None:
    token = cipher.encrypt("x", table="a/b", column="c", row_id="1")
    with pytest.raises(DecryptionError):
        cipher.decrypt(token, table="a", column="b/c", row_id="1")


@pytest.mark.parametrize("part", [2, 3])
def test_tampered_token_fails(cipher: FieldCipher, part: int) -> None:
    token = cipher.encrypt("ana@example.com", **PLACE)
    pieces = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4)))
    raw[-1] ^= 0x01
    pieces[part] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(DecryptionError):
        cipher.decrypt(".".join(pieces), **PLACE)


def test_relabelling_the_key_id_fails() -> None:
    cipher = cipher_with({"mk1": KEY_1, "mk2": KEY_1}, "mk1")
    token = cipher.encrypt("secret", **PLACE)
    relabelled = token.replace("v1.mk1.", "v1.mk2.", 1)
    with pytest.raises(DecryptionError):
        cipher.decrypt(relabelled, **PLACE)


@pytest.mark.parametrize(
    "token",
    ["", "plain text", "v2.mk1.AAAA.AAAA", "v1.mk1.AAAA", "v1.mk1.!!!!.????", "v1.mk1.AA.AA"],
)
def test_malformed_tokens_raise_decryption_error(cipher: FieldCipher, token: str) -> None:
    with pytest.raises(DecryptionError):
        cipher.decrypt(token, **PLACE)


def test_token_under_an_unknown_key_fails_cleanly(cipher: FieldCipher) -> None:
    other = cipher_with({"mk9": KEY_2}, "mk9")
    with pytest.raises(DecryptionError, match="unknown master key"):
        cipher.decrypt(other.encrypt("x", **PLACE), **PLACE)


def test_after_rotation_old_tokens_still_decrypt_and_new_ones_use_the_new_key() -> None:
    before = cipher_with({"mk1": KEY_1}, "mk1")
    old_token = before.encrypt("ana@example.com", **PLACE)
    after = cipher_with({"mk1": KEY_1, "mk2": KEY_2}, "mk2")
    assert after.decrypt(old_token, **PLACE) == "ana@example.com"
    assert after.needs_reencryption(old_token)
    new_token = after.encrypt("ana@example.com", **PLACE)
    assert after.key_id_of(new_token) == "mk2"
    assert not after.needs_reencryption(new_token)


def test_blind_index_is_stable_across_rotation_and_distinct_per_purpose() -> None:
    before = cipher_with({"mk1": KEY_1}, "mk1")
    after = cipher_with({"mk1": KEY_1, "mk2": KEY_2}, "mk2")
    digest = before.blind_index("ana@example.com", purpose="user.email")
    assert after.blind_index("ana@example.com", purpose="user.email") == digest
    assert before.blind_index("ana@example.com", purpose="lead.email") != digest
    assert before.blind_index("bob@example.com", purpose="user.email") != digest
    assert len(digest) == 64
    int(digest, 16)


def test_blind_index_depends_on_the_index_key() -> None:
    one = FieldCipher(MasterKeyring({"mk1": KEY_1}, "mk1", index_key=INDEX_KEY))
    two = FieldCipher(MasterKeyring({"mk1": KEY_1}, "mk1", index_key=secrets.token_bytes(32)))
    assert one.blind_index("x", purpose="p") != two.blind_index("x", purpose="p")


def test_master_key_accepts_hex_and_base64() -> None:
    key = secrets.token_bytes(32)
    assert parse_key(key.hex(), name="k") == key
    assert parse_key(base64.b64encode(key).decode(), name="k") == key
    assert parse_key(base64.urlsafe_b64encode(key).rstrip(b"=").decode(), name="k") == key


@pytest.mark.parametrize("material", ["", "short", "00" * 31, "zz" * 32, "A" * 100])
def test_invalid_key_material_is_a_clear_startup_error(material: str) -> None:
    with pytest.raises(KeyConfigurationError, match="32 random bytes"):
        parse_key(material, name="ECOSISTEMA_MASTER_KEY")


def test_settings_keys_make_a_keyring_with_old_keys_for_reading() -> None:
    old = secrets.token_bytes(32)
    config = Settings(
        master_key=SecretStr(KEY_2.hex()),
        master_key_id="mk2",
        old_master_keys={"mk1": SecretStr(old.hex())},
        blind_index_key=SecretStr(INDEX_KEY.hex()),
    )
    cipher = load_cipher(config)
    assert cipher.keyring.active_id == "mk2"
    legacy = cipher_with({"mk1": old}, "mk1").encrypt("hola", **PLACE)
    assert cipher.decrypt(legacy, **PLACE) == "hola"


def test_settings_master_key_without_blind_index_key_is_refused() -> None:
    # Settings refuse this at load; the keyring checks again for settings built unvalidated.
    config = Settings.model_construct(master_key=SecretStr(KEY_1.hex()), blind_index_key=None)
    with pytest.raises(KeyConfigurationError, match="ECOSISTEMA_BLIND_INDEX_KEY"):
        load_cipher(config)


def test_settings_reusing_the_active_key_id_for_an_old_key_is_refused() -> None:
    config = Settings.model_construct(
        master_key=SecretStr(KEY_1.hex()),
        master_key_id="mk1",
        old_master_keys={"mk1": SecretStr(KEY_2.hex())},
        blind_index_key=SecretStr(INDEX_KEY.hex()),
    )
    with pytest.raises(KeyConfigurationError, match="new id"):
        load_cipher(config)


def test_invalid_key_id_is_refused() -> None:
    with pytest.raises(KeyConfigurationError, match="key id"):
        MasterKeyring({"mk.1": KEY_1}, "mk.1", index_key=INDEX_KEY)
