"""Access tokens: Ed25519-signed JWTs (RFC 9068 profile), their keys and their JWKS. Pure, no I/O.

Identity signs with the current ``SigningKey`` and publishes every public key whose tokens may
still be alive at ``/.well-known/jwks.json``; every service verifies with
``decode_access_token`` against that key set. Verification accepts exactly one algorithm
(EdDSA) and looks keys up only by ``kid`` in the published set, so ``alg: none``, HS/RS key
confusion and embedded-key headers (``jwk``, ``jku``, ``x5u``) have no way in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
ALLOWED_ALGORITHMS: tuple[str, ...] = (ALGORITHM,)
ACCESS_TOKEN_TYPE = "at+jwt"
TOKEN_USE_ACCESS = "access"
MAX_TOKEN_LENGTH = 8192
MAX_KID_LENGTH = 128

REQUIRED_CLAIMS: tuple[str, ...] = (
    "iss",
    "aud",
    "sub",
    "iat",
    "nbf",
    "exp",
    "jti",
    "role",
    "sid",
    "token_use",
)
_RESERVED_CLAIMS = frozenset(REQUIRED_CLAIMS)
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(Exception):
    """A token that must not be accepted; the message is safe to show to its bearer."""


class ExpiredTokenError(TokenError):
    """The token was valid once and has expired; the client should refresh it."""


class InvalidTokenError(TokenError):
    """The token is malformed, forged, meant for someone else, or not yet valid."""


class UnknownKeyError(InvalidTokenError):
    """The token names a ``kid`` the key set does not hold; the caller may refresh its JWKS."""

    def __init__(self, kid: str) -> None:
        super().__init__("The token was signed with an unknown key.")
        self.kid = kid


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 signing key of the issuer, named by ``kid`` in token headers and the JWKS."""

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)
    created_at: datetime

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, published in the JWKS."""
        return self.private_key.public_key()

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, for the caller to encrypt before storing."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def private_raw(self) -> bytes:
        """The 32-byte raw private key, for the caller to encrypt before storing."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, kid: str, pem: bytes, created_at: datetime) -> SigningKey:
        """Rebuild a signing key from PKCS#8 PEM; rejects keys that are not Ed25519."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM does not hold an Ed25519 private key")
        return cls(kid=kid, private_key=key, created_at=created_at)

    @classmethod
    def from_raw(cls, kid: str, raw: bytes, created_at: datetime) -> SigningKey:
        """Rebuild a signing key from its 32 raw private bytes."""
        return cls(
            kid=kid, private_key=Ed25519PrivateKey.from_private_bytes(raw), created_at=created_at
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_thumbprint(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key; the default ``kid``."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_public_raw(key))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def generate_signing_key(*, kid: str | None = None, now: datetime | None = None) -> SigningKey:
    """A fresh Ed25519 signing key; its ``kid`` defaults to the public key's thumbprint."""
    private = Ed25519PrivateKey.generate()
    return SigningKey(
        kid=kid or key_thumbprint(private.public_key()),
        private_key=private,
        created_at=now or datetime.now(UTC),
    )


def public_jwk(key: SigningKey) -> dict[str, str]:
    """The public JWK of a signing key (OKP/Ed25519, ``use=sig``, ``alg=EdDSA``)."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_public_raw(key.public_key)),
        "kid": key.kid,
        "use": "sig",
        "alg": ALGORITHM,
    }


def build_jwks(keys: Iterable[SigningKey]) -> dict[str, list[dict[str, str]]]:
    """The JWKS document served at ``/.well-known/jwks.json`` for the given keys."""
    return {"keys": [public_jwk(k) for k in keys]}


class PublicKeySet:
    """A JWKS parsed once into Ed25519 public keys by ``kid``; what verification looks keys up in.

    Entries that are not usable Ed25519 signature keys (other key types, ``use=enc``, another
    ``alg``, malformed ``x``) are skipped rather than failing the whole set, so one odd entry
    published by a newer issuer cannot lock every client out.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> PublicKeySet:
        """Parse a JWKS document; unusable entries are ignored."""
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        keys: dict[str, Ed25519PublicKey] = {}
        for entry in entries if isinstance(entries, list) else []:
            parsed = _parse_jwk(entry)
            if parsed is not None:
                keys[parsed[0]] = parsed[1]
        return cls(keys)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The public key published under ``kid``, if any."""
        return self._keys.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        """Every ``kid`` in the set."""
        return frozenset(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys


def _parse_jwk(entry: Any) -> tuple[str, Ed25519PublicKey] | None:
    if not isinstance(entry, Mapping):
        return None
    kid, x = entry.get("kid"), entry.get("x")
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
        return None
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH or not isinstance(x, str):
        return None
    try:
        return kid, Ed25519PublicKey.from_public_bytes(_b64url_decode(x))
    except ValueError:
        return None


def encode_access_token(
    key: SigningKey,
    *,
    subject: str,
    role: str,
    session_id: str,
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign an access token for ``subject``; ``extra`` may add claims but never replace ours."""
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    clash = _RESERVED_CLAIMS.intersection(extra or {})
    if clash:
        raise ValueError(f"extra claims may not replace {', '.join(sorted(clash))}")
    issued = int((now or datetime.now(UTC)).timestamp())
    claims: dict[str, Any] = dict(extra or {})
    claims.update(
        iss=issuer,
        aud=audience,
        sub=subject,
        iat=issued,
        nbf=issued,
        exp=issued + ttl_seconds,
        jti=secrets.token_urlsafe(16),
        role=role,
        sid=session_id,
        token_use=TOKEN_USE_ACCESS,
    )
    return jwt.encode(
        claims,
        key.private_key,
        algorithm=ALGORITHM,
        headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
    )


def token_kid(token: str) -> str:
    """The ``kid`` of a token whose header is well formed and allowed, before any signature check.

    Raises ``InvalidTokenError`` for anything that could never verify (wrong ``alg``, no ``kid``,
    wrong ``typ``), so such tokens never make a caller refresh its key set.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise InvalidTokenError("The token is not a well-formed JWT.")
    # Only the header is decoded here; PyJWT re-reads the whole token strictly when verifying.
    encoded_header = token.partition(".")[0]
    if not _BASE64URL.fullmatch(encoded_header):
        raise InvalidTokenError("The token is not a well-formed JWT.")
    try:
        header = json.loads(_b64url_decode(encoded_header))
    except ValueError as exc:
        raise InvalidTokenError("The token is not a well-formed JWT.") from exc
    if not isinstance(header, dict):
        raise InvalidTokenError("The token is not a well-formed JWT.")
    if header.get("alg") not in ALLOWED_ALGORITHMS:
        raise InvalidTokenError("The token's signing algorithm is not allowed.")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
        raise InvalidTokenError("The token is not an access token.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise InvalidTokenError("The token does not name its signing key.")
    return kid


def decode_access_token(
    token: str,
    jwks: Mapping[str, Any] | PublicKeySet,
    *,
    issuer: str,
    audience: str,
    leeway: float = 30,
) -> dict[str, Any]:
    """Verify an access token against a JWKS (or a parsed ``PublicKeySet``) and return its claims.

    Raises ``ExpiredTokenError``, ``UnknownKeyError`` (refresh the JWKS and retry once) or
    ``InvalidTokenError``; all are ``TokenError``.
    """
    keys = jwks if isinstance(jwks, PublicKeySet) else PublicKeySet.from_jwks(jwks)
    kid = token_kid(token)
    public_key = keys.get(kid)
    if public_key is None:
        raise UnknownKeyError(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=list(ALLOWED_ALGORITHMS),
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ExpiredTokenError("The token has expired.") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidTokenError("The token is meant for another audience.") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidTokenError("The token comes from an unexpected issuer.") from exc
    except jwt.ImmatureSignatureError as exc:
        raise InvalidTokenError("The token is not valid yet.") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidTokenError(f"The token lacks the {exc.claim!r} claim.") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidTokenError("The token's signature does not verify.") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidTokenError("The token is invalid.") from exc
    if claims.get("token_use") != TOKEN_USE_ACCESS:
        raise InvalidTokenError("The token is not an access token.")
    for name in ("sub", "role", "sid"):
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidTokenError(f"The token's {name!r} claim is not a non-empty string.")
    return claims
