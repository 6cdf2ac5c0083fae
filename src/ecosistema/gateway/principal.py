"""The principal the gateway vouches for, passed to services in one header no client can forge.

Format: ``v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(secret, "v1." + payload))>``. The
payload holds ``sub``, ``role``, ``kind``, ``exp`` (Unix seconds) and, when the signer binds it to
one request, ``bnd``: ``request_binding(method, target, request_id)``, so a copied header is good
for that request only (same method, path and query, and ``X-Request-ID``). The gateway strips any
incoming copy of the header before adding its own, and a service accepts it only after
``verify_principal`` with the shared ``gateway_secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

PRINCIPAL_HEADER = "X-Ecosistema-Principal"
_VERSION = "v1"
MAX_PRINCIPAL_LENGTH = 4096


class InvalidPrincipal(Exception):
    """The principal header is missing its signature, forged, malformed or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a user (from an access token) or an API key."""

    sub: str
    role: str
    kind: str = "user"
    session_id: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def request_binding(method: str | bytes, target: str | bytes, request_id: str | bytes) -> str:
    """A short digest naming one request: its method, target (path and query) and request id."""

    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1", "replace")

    digest = hashlib.sha256(b"\n".join((raw(method).upper(), raw(target), raw(request_id))))
    return _b64(digest.digest()[:16])


def sign_principal(
    principal: Principal,
    secret: bytes,
    *,
    ttl_seconds: int = 60,
    now: float | None = None,
    binding: str | None = None,
) -> str:
    """The header value that vouches for ``principal`` until ``now + ttl_seconds``, for the
    request named by ``binding`` (``request_binding``) when given."""
    body: dict[str, object] = {
        "sub": principal.sub,
        "role": principal.role,
        "kind": principal.kind,
        "exp": int((time.time() if now is None else now) + ttl_seconds),
    }
    if principal.session_id is not None:
        body["sid"] = principal.session_id
    if binding is not None:
        body["bnd"] = binding
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed = f"{_VERSION}.{payload}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def verify_principal(
    value: str, secret: bytes, *, now: float | None = None, binding: str | None = None
) -> Principal:
    """The principal a header value vouches for; raises ``InvalidPrincipal`` otherwise.

    A value bound to a request is accepted only with that request's ``binding``."""
    if not value or len(value) > MAX_PRINCIPAL_LENGTH or value.count(".") != 2:
        raise InvalidPrincipal("malformed principal")
    version, payload, signature = value.split(".")
    if version != _VERSION:
        raise InvalidPrincipal("unknown principal version")
    try:
        expected = _mac(secret, f"{version}.{payload}")
        given = _unb64(signature)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidPrincipal("malformed principal") from exc
    if not hmac.compare_digest(expected, given):
        raise InvalidPrincipal("principal signature does not verify")
    try:
        body = json.loads(_unb64(payload))
    except ValueError as exc:
        raise InvalidPrincipal("malformed principal") from exc
    if not isinstance(body, dict):
        raise InvalidPrincipal("malformed principal")
    sub, role, kind, exp = body.get("sub"), body.get("role"), body.get("kind"), body.get("exp")
    if not (isinstance(sub, str) and isinstance(role, str) and isinstance(kind, str)):
        raise InvalidPrincipal("malformed principal")
    if not isinstance(exp, int) or exp < (time.time() if now is None else now):
        raise InvalidPrincipal("principal has expired")
    bound = body.get("bnd")
    if bound is not None and (
        not isinstance(bound, str)
        or binding is None
        or not hmac.compare_digest(bound.encode("ascii", "replace"), binding.encode("ascii"))
    ):
        raise InvalidPrincipal("principal is bound to another request")
    sid = body.get("sid")
    session_id = sid if isinstance(sid, str) else None
    return Principal(sub=sub, role=role, kind=kind, session_id=session_id)
