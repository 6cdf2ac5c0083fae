"""Access tokens: what verifies, and every forged, stale or misdirected token that must not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ecosistema.platform.tokens import (
    ExpiredTokenError,
    InvalidTokenError,
    PublicKeySet,
    SigningKey,
    TokenError,
    UnknownKeyError,
    build_jwks,
    decode_access_token,
    encode_access_token,
    generate_signing_key,
    key_thumbprint,
    public_jwk,
)

ISSUER = "ecosistema"
AUDIENCE = "ecosistema-api"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "j1",
        "role": "customer",
        "sid": "s1",
        "token_use": "access",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def issue(key: SigningKey, **kwargs: Any) -> str:
    args: dict[str, Any] = {
        "subject": "user-1",
        "role": "customer",
        "session_id": "s1",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "ttl_seconds": 900,
    }
    args.update(kwargs)
    return encode_access_token(key, **args)


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    return decode_access_token(token, jwks, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def jwks(key: SigningKey) -> dict[str, Any]:
    return build_jwks([key])


def test_issued_token_round_trips_with_every_required_claim(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    token = issue(key, now=now, extra={"mfa": True})

    got = verify(token, jwks)

    assert got["sub"] == "user-1"
    assert got["role"] == "customer"
    assert got["sid"] == "s1"
    assert got["token_use"] == "access"
    assert got["iss"] == ISSUER and got["aud"] == AUDIENCE
    assert got["iat"] == got["nbf"] == int(now.timestamp())
    assert got["exp"] == int(now.timestamp()) + 900
    assert got["mfa"] is True
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}


def test_each_token_gets_its_own_jti(key: SigningKey, jwks: dict[str, Any]) -> None:
    assert verify(issue(key), jwks)["jti"] != verify(issue(key), jwks)["jti"]


def test_extra_claims_cannot_replace_registered_ones(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="role"):
        issue(key, extra={"role": "admin"})


def test_public_jwk_describes_an_ed25519_signature_key(key: SigningKey) -> None:
    jwk = public_jwk(key)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    assert jwk["use"] == "sig" and jwk["alg"] == "EdDSA" and jwk["kid"] == key.kid
    assert "d" not in jwk
    assert key.kid == key_thumbprint(key.public_key)


def test_signing_key_survives_pem_and_raw_storage(key: SigningKey, jwks: dict[str, Any]) -> None:
    from_pem = SigningKey.from_pem(key.kid, key.private_pem(), key.created_at)
    from_raw = SigningKey.from_raw(key.kid, key.private_raw(), key.created_at)

    assert verify(issue(from_pem), jwks)["sub"] == "user-1"
    assert verify(issue(from_raw), jwks)["sub"] == "user-1"
    assert len(key.private_raw()) == 32
    assert "private_key" not in repr(key)


def test_pem_of_another_key_type_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="Ed25519"):
        SigningKey.from_pem("k", rsa_pem, datetime.now(UTC))


def test_old_key_still_verifies_while_published_after_rotation(key: SigningKey) -> None:
    old_token = issue(key)
    new_key = generate_signing_key()
    rotated = build_jwks([new_key, key])

    assert verify(old_token, rotated)["sub"] == "user-1"
    assert verify(issue(new_key), rotated)["sub"] == "user-1"
    with pytest.raises(UnknownKeyError):
        verify(old_token, build_jwks([new_key]))


def test_parsed_key_set_verifies_like_the_document(key: SigningKey, jwks: dict[str, Any]) -> None:
    keys = PublicKeySet.from_jwks(jwks)
    assert key.kid in keys
    assert decode_access_token(issue(key), keys, issuer=ISSUER, audience=AUDIENCE)["sid"] == "s1"


def test_unusable_jwks_entries_are_skipped_not_fatal(key: SigningKey) -> None:
    document = {
        "keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "x": public_jwk(key)["x"], "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            "not a key",
            public_jwk(key),
        ]
    }
    assert PublicKeySet.from_jwks(document).kids == {key.kid}
    assert len(PublicKeySet.from_jwks({"keys": "nope"})) == 0


# --- attacks -----------------------------------------------------------------------------------


def test_alg_none_token_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": key.kid}
    token = f"{segment(header)}.{segment(claims())}."
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verify(token, jwks)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", "eddsa"])
def test_alg_spelling_variants_are_rejected(
    key: SigningKey, jwks: dict[str, Any], alg: str
) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    valid_signature = issue(key).split(".")[2]
    token = f"{segment(header)}.{segment(claims())}.{valid_signature}"
    with pytest.raises(InvalidTokenError):
        verify(token, jwks)


@pytest.mark.parametrize("secret_source", ["raw_x", "jwk_json"])
def test_hs256_token_signed_with_the_public_key_as_hmac_secret_is_rejected(
    key: SigningKey, jwks: dict[str, Any], secret_source: str
) -> None:
    jwk = public_jwk(key)
    secret = (
        base64.urlsafe_b64decode(jwk["x"] + "==")
        if secret_source == "raw_x"
        else json.dumps(jwk).encode()
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}
    signing_input = f"{segment(header)}.{segment(claims(role='admin'))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verify(f"{signing_input}.{b64(signature)}", jwks)


def test_rs256_token_is_rejected_even_with_a_known_kid(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        claims(role="admin"), attacker, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"}
    )
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verify(token, jwks)


def test_token_signed_by_another_ed25519_key_under_the_same_kid_is_rejected(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    impostor = SigningKey(
        kid=key.kid, private_key=Ed25519PrivateKey.generate(), created_at=key.created_at
    )
    with pytest.raises(InvalidTokenError, match="signature"):
        verify(issue(impostor, role="admin"), jwks)


def test_embedded_jwk_header_is_not_trusted(key: SigningKey, jwks: dict[str, Any]) -> None:
    impostor = generate_signing_key(kid=key.kid)
    token = jwt.encode(
        claims(role="admin"),
        impostor.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt", "jwk": public_jwk(impostor)},
    )
    with pytest.raises(InvalidTokenError, match="signature"):
        verify(token, jwks)


def test_tampered_payload_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    header, _, signature = issue(key).split(".")
    forged = f"{header}.{segment(claims(role='admin'))}.{signature}"
    with pytest.raises(InvalidTokenError, match="signature"):
        verify(forged, jwks)


def test_expired_token_is_rejected_as_expired(key: SigningKey, jwks: dict[str, Any]) -> None:
    token = issue(key, now=datetime.now(UTC) - timedelta(minutes=20))
    with pytest.raises(ExpiredTokenError):
        verify(token, jwks)


def test_token_expired_within_the_leeway_still_verifies(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    token = issue(key, now=datetime.now(UTC) - timedelta(seconds=900 + 5))
    assert verify(token, jwks)["sub"] == "user-1"


def test_token_not_valid_yet_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    token = issue(key, now=datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(InvalidTokenError, match="not valid yet"):
        verify(token, jwks)


def test_token_for_another_audience_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidTokenError, match="audience"):
        verify(issue(key, audience="someone-else"), jwks)


def test_token_with_a_list_audience_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    token = jwt.encode(
        claims(aud=[AUDIENCE, "other"]),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    with pytest.raises(InvalidTokenError, match="audience"):
        verify(token, jwks)


def test_token_from_another_issuer_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidTokenError, match="issuer"):
        verify(issue(key, issuer="evil"), jwks)


def test_token_without_kid_is_rejected_without_a_key_lookup(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(claims(), key.private_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidTokenError, match="signing key") as info:
        verify(token, jwks)
    assert not isinstance(info.value, UnknownKeyError)


def test_token_with_unknown_kid_raises_unknown_key_naming_it(jwks: dict[str, Any]) -> None:
    stranger = generate_signing_key(kid="kid-from-the-future")
    with pytest.raises(UnknownKeyError) as info:
        verify(issue(stranger), jwks)
    assert info.value.kid == "kid-from-the-future"


def test_opaque_refresh_token_is_rejected(jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidTokenError):
        verify(secrets.token_urlsafe(48), jwks)


def test_jwt_with_token_use_refresh_is_not_an_access_token(
    key: SigningKey, jwks: dict[str, Any]
) -> None:
    token = jwt.encode(
        claims(token_use="refresh"),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    with pytest.raises(InvalidTokenError, match="access token"):
        verify(token, jwks)


def test_plain_jwt_type_is_not_an_access_token(key: SigningKey, jwks: dict[str, Any]) -> None:
    token = jwt.encode(claims(), key.private_key, algorithm="EdDSA", headers={"kid": key.kid})
    with pytest.raises(InvalidTokenError, match="access token"):
        verify(token, jwks)


@pytest.mark.parametrize("missing", ["exp", "nbf", "iat", "sub", "jti", "role", "sid", "token_use"])
def test_token_lacking_a_required_claim_is_rejected(
    key: SigningKey, jwks: dict[str, Any], missing: str
) -> None:
    token = jwt.encode(
        claims(**{missing: None}),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    with pytest.raises(InvalidTokenError):
        verify(token, jwks)


def test_non_string_role_is_rejected(key: SigningKey, jwks: dict[str, Any]) -> None:
    token = jwt.encode(
        claims(role=["admin"]),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    with pytest.raises(InvalidTokenError, match="role"):
        verify(token, jwks)


def test_oversized_token_is_rejected_before_parsing(jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidTokenError):
        verify("a." + "b" * 10_000 + ".c", jwks)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300) | st.from_regex(r"\A[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\Z")
)
def test_any_garbage_fails_as_a_token_error_never_anything_else(garbage: str) -> None:
    jwks = build_jwks([generate_signing_key(kid="k1")])
    with pytest.raises(TokenError):
        verify(garbage, jwks)


@settings(max_examples=100, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=10)
        | st.lists(st.text(max_size=5)),
    )
)
def test_any_forged_header_over_a_valid_payload_is_rejected(header: dict[str, Any]) -> None:
    key = generate_signing_key(kid="k1")
    signature = issue(key).split(".")[2]
    token = f"{segment(header)}.{segment(claims())}.{signature}"
    with pytest.raises(TokenError):
        verify(token, build_jwks([key]))
