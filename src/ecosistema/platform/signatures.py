"""Signed HTTP deliveries in Stripe's scheme, both ways: the header ``t=<unix seconds>,v1=<hex>``
where each ``v1`` is the HMAC-SHA256 of ``"<t>.<body>"`` under a secret (several ``v1`` while a
secret is being rotated). Outgoing webhooks sign with it; provider webhooks are checked with it.

A header is untrusted input: whatever it holds (any text, any script), parsing and checking it
gives an answer, never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

SCHEME = "v1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex>[,v1=<hex>]``: one ``v1`` per secret."""
    parts = [f"t={timestamp}"]
    parts.extend(f"{SCHEME}={sign(s, timestamp, body)}" for s in secrets)
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """What a header says: its timestamp (``None`` when absent or not ASCII digits; see
    ``timestamp_given``) and its ``v1`` signatures."""

    timestamp: int | None
    signatures: tuple[str, ...]
    timestamp_given: bool

    def signed_by(self, secret: str, body: bytes) -> bool:
        """Whether one of the signatures is ``body``'s under ``secret`` (in constant time)."""
        if self.timestamp is None:
            return False
        expected = sign(secret, self.timestamp, body).encode()
        return any(
            hmac.compare_digest(expected, s.encode("utf-8", "replace")) for s in self.signatures
        )


# Seconds since 1970 fit in far fewer digits; more is not a timestamp (and int() of a long run of
# digits is slow on purpose in Python).
_MAX_TIMESTAMP_DIGITS = 12


def parse_signature_header(header: str) -> SignatureHeader:
    """Read a ``t=...,v1=...`` header; unknown parts are ignored, as Stripe's libraries do."""
    timestamp: int | None = None
    given = False
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            given = True
            digits = value.strip()
            if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_TIMESTAMP_DIGITS:
                timestamp = int(digits)
        elif name == SCHEME:
            signatures.append(value.strip())
    return SignatureHeader(timestamp, tuple(signatures), given)
