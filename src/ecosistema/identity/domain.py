"""Identity rules with no I/O: password policy, emails, TOTP replay, login throttling."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any

import pyotp

from ecosistema.platform.addresses import ISO_3166_ALPHA_2

# Shared with the other services' rules for text people see; names kept for identity's callers.

PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 128
EMAIL_VERIFICATION_TTL_SECONDS = 24 * 3600
PASSWORD_RESET_TTL_SECONDS = 30 * 60
RECOVERY_CODE_COUNT = 10
TOTP_PERIOD_SECONDS = 30
TOTP_DIGITS = 6
# One step either side tolerates clock drift between the server and the authenticator app.
TOTP_VALID_WINDOW = 1
API_KEY_SECRET_BYTES = 32
SESSION_TOKEN_BYTES = 32
JWKS_LEEWAY_SECONDS = 120
# The base32 alphabet in lower case: 16 characters carry 80 bits.
_RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class UserStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class TokenPurpose(StrEnum):
    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"


class AuditType(StrEnum):
    USER_REGISTERED = "user.registered"
    EMAIL_VERIFIED = "user.email_verified"
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    LOGIN_LOCKED = "login.locked"
    LOGOUT = "session.logout"
    LOGOUT_ALL = "session.logout_all"
    REFRESH_REUSED = "session.refresh_reused"
    PASSWORD_CHANGED = "password.changed"
    PASSWORD_RESET_REQUESTED = "password.reset_requested"
    PASSWORD_RESET = "password.reset"
    MFA_ENROLLMENT_STARTED = "mfa.enrollment_started"
    MFA_ENABLED = "mfa.enabled"
    MFA_DISABLED = "mfa.disabled"
    RECOVERY_CODE_USED = "mfa.recovery_code_used"
    ROLE_CHANGED = "user.role_changed"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    PROFILE_UPDATED = "user.profile_updated"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    SIGNING_KEY_ROTATED = "signing_key.rotated"


class PasswordRejected(ValueError):
    """A password the policy refuses; ``code`` is stable for clients, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def normalise_password(password: str) -> str:
    """NFKC form, so the same password typed on different keyboards hashes the same (ASVS 6.2)."""
    return unicodedata.normalize("NFKC", password)


def normalise_email(email: str) -> str:
    """The canonical form used for lookup and uniqueness: NFKC, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The bundled list of common passwords, already NFKC-normalised and case-folded."""
    data = resources.files("ecosistema.identity").joinpath("common_passwords.txt.gz").read_bytes()
    return frozenset(line for line in gzip.decompress(data).decode("utf-8").splitlines() if line)


def check_password(password: str, *, email: str | None = None) -> str:
    """Return the normalised password, or raise ``PasswordRejected`` (length and common list only:
    ASVS 5.0 forbids composition rules)."""
    normalised = normalise_password(password)
    if any(unicodedata.category(ch) == "Cc" for ch in normalised):
        # C0 and C1 controls (NUL, tab, newline, DEL, ...): many clients, terminals and password
        # managers mangle or drop them, locking the owner out. Spaces and every printable
        # character stay allowed (NIST SP 800-63B 3.1.1.2).
        raise PasswordRejected(
            "password_control_character",
            "Use printable characters only: no control characters such as NUL, tab or line breaks.",
        )
    length = len(normalised)
    if length < PASSWORD_MIN_LENGTH:
        raise PasswordRejected(
            "password_too_short", f"Use at least {PASSWORD_MIN_LENGTH} characters."
        )
    if length > PASSWORD_MAX_LENGTH:
        raise PasswordRejected(
            "password_too_long", f"Use at most {PASSWORD_MAX_LENGTH} characters."
        )
    folded = normalised.casefold()
    if folded in common_passwords():
        raise PasswordRejected(
            "password_too_common", "This password is on a list of commonly used passwords."
        )
    if email and folded == normalise_email(email):
        raise PasswordRejected("password_is_email", "The password must not be your email address.")
    return normalised


def new_secret_token(nbytes: int = SESSION_TOKEN_BYTES) -> str:
    """A high-entropy, URL-safe secret (refresh tokens, email tokens, API key secrets)."""
    return secrets.token_urlsafe(nbytes)


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret: enough for lookup, useless to whoever reads the table."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, expected_hash: str) -> bool:
    """Constant-time comparison of a secret against its stored hash."""
    return hmac.compare_digest(hash_secret(secret), expected_hash)


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """One-time recovery codes, 80 bits each, grouped for reading aloud: ``abcd-efgh-ijkl-mnop``."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def normalise_recovery_code(code: str) -> str:
    """Recovery codes compare without spaces, dashes or case."""
    return "".join(ch for ch in code.casefold() if ch.isalnum())


def new_totp_secret() -> str:
    """A fresh base32 TOTP secret (160 bits, RFC 4226's recommendation)."""
    return pyotp.random_base32(32)


def totp_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan as a QR code."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer
    )


def totp_step(at: datetime) -> int:
    """The TOTP time step a moment falls in."""
    return int(at.timestamp()) // TOTP_PERIOD_SECONDS


def match_totp(secret: str, code: str, *, at: datetime, last_used_step: int | None) -> int | None:
    """The time step ``code`` is valid for, or None when it is wrong or that step (or an earlier
    one) was already used: a code is accepted once, and never one older than the last accepted."""
    digits = code.strip().replace(" ", "")
    if len(digits) != TOTP_DIGITS or not digits.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD_SECONDS)
    now_step = totp_step(at)
    for step in range(now_step - TOTP_VALID_WINDOW, now_step + TOTP_VALID_WINDOW + 1):
        if last_used_step is not None and step <= last_used_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), digits):
            return step
    return None


def totp_code_was_used(secret: str, code: str, *, at: datetime, last_used_step: int | None) -> bool:
    """Whether ``code`` is right for a step around ``at`` that is already used (or older than the
    last used one), so it was refused as a replay rather than as a wrong code. Only asked after
    ``match_totp`` refused it, by a caller who gave the right password."""
    digits = code.strip().replace(" ", "")
    if last_used_step is None or len(digits) != TOTP_DIGITS or not digits.isdigit():
        return False
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD_SECONDS)
    now_step = totp_step(at)
    used = range(
        now_step - TOTP_VALID_WINDOW, min(now_step + TOTP_VALID_WINDOW, last_used_step) + 1
    )
    return any(hmac.compare_digest(totp.generate_otp(step), digits) for step in used)


@dataclass(frozen=True)
class ThrottleRule:
    """Progressive delay, then lockout, after failed logins for one key (an account or an IP).

    After ``delay_after`` failures each further attempt must wait ``2 ** (n - delay_after)``
    seconds (capped) since the last failure; at ``threshold`` failures the key is locked for
    ``lockout_seconds``. Failures are forgotten ``lockout_seconds`` after the first one.
    """

    threshold: int
    delay_after: int
    lockout_seconds: int
    max_delay_seconds: int = 60

    def delay_for(self, failures: int) -> int:
        """Seconds the next attempt must wait after the ``failures``-th failure."""
        if failures < self.delay_after or failures <= 0:
            return 0
        return int(min(self.max_delay_seconds, 2 ** (failures - self.delay_after)))

    def locks(self, failures: int) -> bool:
        """Whether this many failures lock the key out."""
        return failures >= self.threshold


@dataclass(frozen=True)
class Permissions:
    """An API key's scopes must be a subset of what its creator may do."""

    granted: frozenset[str]

    def missing(self, requested: set[str] | frozenset[str]) -> list[str]:
        """The requested scopes the creator does not hold, sorted."""
        return sorted(set(requested) - self.granted)


# --- profile text, countries, languages, preferences -------------------------------------------

COUNTRY_CODES = ISO_3166_ALPHA_2

# ISO 639-1: the two-letter language codes.
_LANGUAGE_CODES_TEXT = """
    aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da
    de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy
    hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg
    li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or
    os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta
    te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
"""
LANGUAGE_CODES = frozenset(_LANGUAGE_CODES_TEXT.split())

# language, optional script, optional region (alpha-2 or UN M.49 digits); "-" or "_" between.
_LANGUAGE_TAG = re.compile(
    r"(?P<language>[A-Za-z]{2,3})(?:[-_](?P<script>[A-Za-z]{4}))?"
    r"(?:[-_](?P<region>[A-Za-z]{2}|[0-9]{3}))?"
)
PREFERENCES_MAX_DEPTH = 8
PREFERENCES_MAX_BYTES = 8 * 1024
PREFERENCE_KEY_MAX_LENGTH = 64


def check_locale(tag: str) -> str:
    """A BCP 47 language tag (language[-Script][-REGION]) in canonical case, e.g. ``pt-BR``."""
    match = _LANGUAGE_TAG.fullmatch(tag)
    if match is None:
        raise ValueError("must be a language tag such as 'es' or 'pt-BR'")
    language = match["language"].lower()
    # Three-letter ISO 639-2/3 languages are accepted by shape; two letters must be ISO 639-1.
    if len(language) == 2 and language not in LANGUAGE_CODES:
        raise ValueError(f"{language!r} is not an ISO 639-1 language code")
    parts = [language]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        region = match["region"].upper()
        if region.isalpha() and region not in COUNTRY_CODES:
            raise ValueError(f"{region!r} is not an ISO 3166-1 region")
        parts.append(region)
    return "-".join(parts)


def preferences_problem(preferences: dict[str, Any]) -> tuple[str, str] | None:
    """Where and why a preferences document is refused (too deep, too big, odd keys), or None."""
    pending: list[tuple[Any, str, int]] = [(preferences, "", 1)]
    while pending:
        value, path, depth = pending.pop()
        if isinstance(value, dict | list) and depth > PREFERENCES_MAX_DEPTH:
            return path, f"nested more than {PREFERENCES_MAX_DEPTH} levels deep"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or len(key) > PREFERENCE_KEY_MAX_LENGTH:
                    limit = PREFERENCE_KEY_MAX_LENGTH
                    return path, f"keys must be strings of at most {limit} characters"
                pending.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            pending.extend(
                (item, f"{path}.{index}" if path else str(index), depth + 1)
                for index, item in enumerate(value)
            )
        elif isinstance(value, float) and not math.isfinite(value):
            return path, "numbers must be finite"
        elif not (value is None or isinstance(value, str | int | float | bool)):
            return path, "must be plain JSON"
    size = len(json.dumps(preferences, separators=(",", ":"), ensure_ascii=False).encode())
    if size > PREFERENCES_MAX_BYTES:
        return "", f"at most {PREFERENCES_MAX_BYTES} bytes as JSON"
    return None
