"""Authentication at the edge: access tokens verified against identity's JWKS, cached."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import structlog

from ecosistema.gateway.balancer import Balancer
from ecosistema.gateway.config import AuthConfig
from ecosistema.gateway.principal import Principal
from ecosistema.gateway.upstream import fetch
from ecosistema.platform.tokens import (
    ExpiredTokenError,
    PublicKeySet,
    TokenError,
    UnknownKeyError,
    decode_access_token,
)

log = structlog.get_logger(__name__)

_VERIFIED_CACHE_SIZE = 10_000


class AuthenticationFailed(Exception):
    """The credentials are missing or do not verify; the message is safe to show the client."""


class KeysUnavailable(Exception):
    """Identity's JWKS could not be fetched and no earlier copy is held."""


class EdgeAuthenticator:
    """Verifies access tokens; fetches the JWKS from identity, keeps it for ``jwks_ttl_seconds``
    and refetches on an unknown ``kid`` at most once per ``jwks_min_refresh_seconds``."""

    def __init__(
        self,
        config: AuthConfig,
        identity: Balancer | None,
        *,
        loader: Callable[[], Awaitable[tuple[int, bytes]]] | None = None,
    ) -> None:
        self._config = config
        self._identity = identity
        # Fetches the JWKS when identity runs in this process: (status, body).
        self._loader = loader
        self._keys: PublicKeySet | None = None
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        # Verifying an Ed25519 signature costs more than proxying a small request, so a token
        # already verified is trusted until its own expiry.
        self._verified: dict[str, tuple[Principal, float]] = {}
        self.fetches = 0

    def known(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired, without waiting."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        return None

    async def authenticate_bearer(self, token: str) -> Principal:
        """The principal of a valid access token; raises ``AuthenticationFailed`` otherwise."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] > time.time():
                return cached[0]
            del self._verified[token]
        keys = await self._key_set()
        try:
            claims = decode_access_token(
                token, keys, issuer=self._config.issuer, audience=self._config.audience
            )
        except UnknownKeyError:
            if not await self._refresh(forced=True) or self._keys is None:
                raise AuthenticationFailed("The token was signed with an unknown key.") from None
            claims = self._decode_after_refresh(token, self._keys)
        except ExpiredTokenError as exc:
            raise AuthenticationFailed(str(exc)) from None
        except TokenError as exc:
            raise AuthenticationFailed(str(exc)) from None
        principal = Principal(
            sub=str(claims["sub"]), role=str(claims["role"]), kind="user", session_id=claims["sid"]
        )
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _decode_after_refresh(self, token: str, keys: PublicKeySet) -> dict[str, object]:
        try:
            return decode_access_token(
                token, keys, issuer=self._config.issuer, audience=self._config.audience
            )
        except TokenError as exc:
            raise AuthenticationFailed(str(exc)) from None

    async def _key_set(self) -> PublicKeySet:
        age = time.monotonic() - self._fetched_at
        if self._keys is None or age > self._config.jwks_ttl_seconds:
            await self._refresh(forced=False)
        if self._keys is None:
            raise KeysUnavailable("identity's signing keys could not be fetched")
        return self._keys

    async def _refresh(self, *, forced: bool) -> bool:
        """Refetch the JWKS; returns whether a new copy was stored."""
        async with self._lock:
            now = time.monotonic()
            if forced and now - self._last_attempt < self._config.jwks_min_refresh_seconds:
                return False
            if (
                not forced
                and self._keys is not None
                and now - self._fetched_at <= (self._config.jwks_ttl_seconds)
            ):
                return True  # another request refreshed it while this one waited
            if now - self._last_attempt < min(1.0, self._config.jwks_min_refresh_seconds):
                return False
            self._last_attempt = now
            keys = await self._fetch()
            if keys is None:
                return False
            self._keys, self._fetched_at = keys, time.monotonic()
            return True

    async def _fetch(self) -> PublicKeySet | None:
        if self._loader is not None:
            self.fetches += 1
            try:
                status, body = await self._loader()
                if status != 200:
                    raise ValueError(f"status {status}")
                return PublicKeySet.from_jwks(json.loads(body))
            except (OSError, ValueError) as exc:
                log.warning("jwks_fetch_failed", instance="in-process", error=str(exc))
                return None
        if self._identity is None:
            return None
        instance = self._identity.pick(time.monotonic())
        if instance is None:
            return None
        self.fetches += 1
        try:
            status, _, body = await fetch(instance, self._config.jwks_path, timeout=3.0)
            if status != 200:
                raise ValueError(f"status {status}")
            document = json.loads(body)
        except (OSError, TimeoutError, ValueError, ConnectionError) as exc:
            log.warning("jwks_fetch_failed", instance=instance.url, error=str(exc))
            instance.breaker.record_failure(time.monotonic())
            return None
        instance.breaker.record_success()
        return PublicKeySet.from_jwks(document)
