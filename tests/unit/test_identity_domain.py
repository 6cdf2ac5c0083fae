"""Identity's pure rules: password policy, email normalisation, TOTP replay, throttling."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest

from ecosistema.identity import domain
from ecosistema.identity.domain import PasswordRejected, ThrottleRule

FULL_WIDTH_PASSPHRASE = "\uff50\uff41\uff53\uff53 \ufb01ne words"
FI_LIGATURE = "\ufb01"
NOW = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)


def test_password_of_twelve_characters_is_accepted() -> None:
    assert domain.check_password("violet-kayak") == "violet-kayak"


def test_password_of_eleven_characters_is_rejected_as_too_short() -> None:
    with pytest.raises(PasswordRejected) as exc:
        domain.check_password("violetkayak")
    assert exc.value.code == "password_too_short"


def test_password_of_128_characters_is_accepted_and_129_rejected() -> None:
    assert len(domain.check_password("a" * 127 + "b")) == 128
    with pytest.raises(PasswordRejected) as exc:
        domain.check_password("a" * 128 + "b")
    assert exc.value.code == "password_too_long"


def test_password_without_digits_symbols_or_capitals_is_accepted() -> None:
    assert domain.check_password("correct horse battery staple")


@pytest.mark.parametrize("password", ["qwerty123456", "1q2w3e4r5t6y", "QWERTY123456"])
def test_common_passwords_are_rejected_whatever_their_case(password: str) -> None:
    with pytest.raises(PasswordRejected) as exc:
        domain.check_password(password)
    assert exc.value.code == "password_too_common"


def test_bundled_common_password_list_is_loaded_and_normalised() -> None:
    words = domain.common_passwords()
    assert len(words) > 30_000
    assert "password" in words
    assert all(w == unicodedata.normalize("NFKC", w).casefold() for w in list(words)[:2000])


def test_password_equal_to_the_email_is_rejected() -> None:
    with pytest.raises(PasswordRejected) as exc:
        domain.check_password("Ana.Lopez@Example.com", email="ana.lopez@example.com")
    assert exc.value.code == "password_is_email"


def test_password_is_nfkc_normalised_so_compatibility_forms_match() -> None:
    # Full-width letters and the "fi" ligature normalise to their plain forms.
    assert domain.check_password(FULL_WIDTH_PASSPHRASE) == "pass fine words"
    assert domain.normalise_password(FULL_WIDTH_PASSPHRASE) == domain.normalise_password(
        "pass fine words"
    )


def test_length_is_counted_after_normalisation() -> None:
    # Eleven ligatures expand to 22 characters under NFKC: long enough.
    assert len(domain.check_password(FI_LIGATURE * 11)) == 22


def test_email_is_normalised_for_lookup() -> None:
    assert domain.normalise_email("  Ana.Lopez@EXAMPLE.com ") == "ana.lopez@example.com"


def test_secret_hash_matches_only_its_secret() -> None:
    stored = domain.hash_secret("s3cret-token")
    assert domain.secret_matches("s3cret-token", stored)
    assert not domain.secret_matches("s3cret-tokem", stored)


def test_recovery_codes_are_ten_distinct_and_normalise_without_dashes_or_case() -> None:
    codes = domain.new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    code = codes[0]
    assert domain.normalise_recovery_code(code.upper()) == code.replace("-", "")


def test_totp_code_is_accepted_once_for_its_step() -> None:
    secret = domain.new_totp_secret()
    code = pyotp.TOTP(secret).at(NOW)
    step = domain.match_totp(secret, code, at=NOW, last_used_step=None)
    assert step == domain.totp_step(NOW)
    assert domain.match_totp(secret, code, at=NOW, last_used_step=step) is None


def test_totp_code_older_than_the_last_used_step_is_refused() -> None:
    secret = domain.new_totp_secret()
    earlier = NOW - timedelta(seconds=30)
    old_code = pyotp.TOTP(secret).at(earlier)
    used_now = domain.totp_step(NOW)
    assert domain.match_totp(secret, old_code, at=NOW, last_used_step=None) is not None
    assert domain.match_totp(secret, old_code, at=NOW, last_used_step=used_now) is None


def test_totp_tolerates_one_step_of_clock_drift_but_not_two() -> None:
    secret = domain.new_totp_secret()
    assert domain.match_totp(
        secret, pyotp.TOTP(secret).at(NOW - timedelta(seconds=30)), at=NOW, last_used_step=None
    )
    assert (
        domain.match_totp(
            secret, pyotp.TOTP(secret).at(NOW - timedelta(seconds=90)), at=NOW, last_used_step=None
        )
        is None
    )


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef"])
def test_malformed_totp_codes_are_refused(code: str) -> None:
    assert domain.match_totp(domain.new_totp_secret(), code, at=NOW, last_used_step=None) is None


def test_totp_uri_names_issuer_and_account() -> None:
    secret = domain.new_totp_secret()
    uri = domain.totp_uri(secret, account="ana@example.com", issuer="Ecosistema")
    assert uri.startswith("otpauth://totp/Ecosistema:ana%40example.com?")
    assert f"secret={secret}" in uri and "issuer=Ecosistema" in uri


def test_throttle_delays_progressively_after_the_free_attempts_then_locks() -> None:
    rule = ThrottleRule(threshold=10, delay_after=3, lockout_seconds=900)
    assert [rule.delay_for(n) for n in range(0, 7)] == [0, 0, 0, 1, 2, 4, 8]
    assert not rule.locks(9)
    assert rule.locks(10)


def test_throttle_delay_is_capped() -> None:
    rule = ThrottleRule(threshold=100, delay_after=1, lockout_seconds=900, max_delay_seconds=60)
    assert rule.delay_for(50) == 60


def _nested(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    inner = document
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return document


def test_preferences_nested_too_deep_are_refused_at_their_path() -> None:
    assert domain.preferences_problem(_nested(domain.PREFERENCES_MAX_DEPTH)) is None
    path, message = domain.preferences_problem(_nested(256)) or ("", "")
    assert path == ".".join(["a"] * domain.PREFERENCES_MAX_DEPTH) and "deep" in message
    assert domain.preferences_problem({"l": [[[[[[[[1]]]]]]]]}) is not None


def test_preferences_refuse_long_keys_big_documents_and_non_finite_numbers() -> None:
    assert domain.preferences_problem({"k" * 65: 1}) is not None
    assert domain.preferences_problem({"k" * 64: 1}) is None
    assert domain.preferences_problem({"blob": "x" * domain.PREFERENCES_MAX_BYTES}) is not None
    assert domain.preferences_problem({"n": float("nan")}) == ("n", "numbers must be finite")
    assert domain.preferences_problem({"theme": "dark", "tags": ["a", 1, True, None]}) is None


def test_iso_lists_hold_the_assigned_codes() -> None:
    assert len(domain.COUNTRY_CODES) == 249 and {"ES", "US", "GB", "AX"} <= domain.COUNTRY_CODES
    assert not {"ZZ", "XX", "EU", "UK"} & domain.COUNTRY_CODES
    assert len(domain.LANGUAGE_CODES) == 183 and {"es", "en", "zh"} <= domain.LANGUAGE_CODES
    assert "xx" not in domain.LANGUAGE_CODES


@pytest.mark.parametrize(
    "control", ["\u0000", "\t", "\n", "\r", "\u001b", "\u007f", "\u0085", "\u009f"]
)
def test_passwords_with_control_characters_are_refused(control: str) -> None:
    with pytest.raises(PasswordRejected) as exc:
        domain.check_password(f"a valid pass phrase{control}zz")
    assert exc.value.code == "password_control_character"


@pytest.mark.parametrize(
    "password", ["a valid pass phrase", "contraseña ñandú €uro", "東京タワーの夜景がきれい"]
)
def test_passwords_with_spaces_and_any_printable_unicode_are_accepted(password: str) -> None:
    assert domain.check_password(password) == unicodedata.normalize("NFKC", password)


def test_a_right_totp_code_for_a_used_step_is_told_apart_from_a_wrong_one() -> None:
    secret = domain.new_totp_secret()
    step = domain.totp_step(NOW)
    used = pyotp.TOTP(secret).at(NOW)
    older = pyotp.TOTP(secret).at(NOW - timedelta(seconds=30))
    assert domain.totp_code_was_used(secret, used, at=NOW, last_used_step=step)
    assert domain.totp_code_was_used(secret, older, at=NOW, last_used_step=step)
    wrong = next(
        c
        for c in (f"{n:06d}" for n in range(1_000_000))
        if c not in {pyotp.TOTP(secret).at(NOW + timedelta(seconds=d)) for d in (-30, 0, 30)}
    )
    assert not domain.totp_code_was_used(secret, wrong, at=NOW, last_used_step=step)
    # Never used: a right code for a step not used yet is not a replay (match_totp accepts it).
    assert not domain.totp_code_was_used(secret, used, at=NOW, last_used_step=None)
    assert not domain.totp_code_was_used(secret, used, at=NOW, last_used_step=step - 1)
