"""Authentication at the edge: access tokens verified against identity's JWKS, cached, and API
keys checked with identity (in process, or over HTTP with answers kept a short time)."""

from __future__ import annotations

import asyncio
import hashlib
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
    token_kid,
)

log = structlog.get_logger(__name__)

_VERIFIED_CACHE_SIZE = 10_000
_API_KEY_HEADER = b"x-api-key"

# Checks an API key where identity runs in the gateway's process (``ecosistema up``): True when
# it is valid, False when it is unknown or revoked; raises ``ApiKeysUnavailable`` when it cannot
# tell. The same lookup the services make, so a revocation counts at once, as it does there.
ApiKeyCheck = Callable[[str], Awaitable[bool]]


class AuthenticationFailed(Exception):
    """The credentials are missing or do not verify; the message is safe to show the client."""


class KeysUnavailable(Exception):
    """Identity's JWKS could not be fetched and no earlier copy is held."""


class ApiKeysUnavailable(Exception):
    """An API key could not be checked: identity is unreachable or answered unreadably."""


def api_key_principal(key: str) -> Principal:
    """The principal of a verified API key: a stable rate-limit identity that does not reveal
    the key itself."""
    digest = hashlib.sha256(key.encode("latin-1")).hexdigest()[:24]
    return Principal(sub=f"key:{digest}", role="api_key", kind="api_key")


class EdgeAuthenticator:
    """Verifies access tokens; fetches the JWKS from identity, keeps it for ``jwks_ttl_seconds``
    and refetches on an unknown ``kid`` at most once per ``jwks_min_refresh_seconds``."""

    def __init__(
        self,
        config: AuthConfig,
        identity: Balancer | None,
        *,
        loader: Callable[[], Awaitable[tuple[int, bytes]]] | None = None,
        api_key_check: ApiKeyCheck | None = None,
    ) -> None:
        # Imported here: ecosistema.platform.auth imports this package's principal module.
        from ecosistema.platform import auth as platform_auth

        self._config = config
        self._identity = identity
        # Fetches the JWKS when identity runs in this process: (status, body).
        self._loader = loader
        self._api_key_check = api_key_check
        self._parse_api_key = platform_auth.parse_api_key
        self._api_key_prefix = platform_auth.API_KEY_PREFIX
        self._whoami_path = platform_auth.WHOAMI_PATH
        # Answers identity gave over HTTP, by the key's SHA-256: (valid, until). Kept as long as
        # a service without identity in its process keeps them, so a revoked key stops working
        # at the edge within the same bound as everywhere else.
        self._api_key_ttl = platform_auth.API_KEY_CACHE_SECONDS
        self._api_key_answers: dict[str, tuple[bool, float]] = {}
        self.api_key_lookups = 0
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

    def is_api_key(self, credential: str) -> bool:
        """Whether a credential is meant as an API key (``eco_…``) rather than an access token."""
        return credential.startswith(self._api_key_prefix)

    def known_api_key(self, key: str) -> bool:
        """Whether identity vouched for this API key over HTTP a short while ago, so it is valid
        without waiting. False: it must be checked (``authenticate_api_key``)."""
        if self._api_key_check is not None:
            return False  # checked in process on every request, as the services check it
        seen = self._api_key_answers.get(hashlib.sha256(key.encode("latin-1")).hexdigest())
        return seen is not None and seen[0] and seen[1] > time.monotonic()

    async def authenticate_api_key(self, key: str) -> Principal:
        """The principal of a valid API key; raises ``AuthenticationFailed`` when it is malformed,
        unknown or revoked, ``ApiKeysUnavailable`` when identity cannot say."""
        if self._parse_api_key(key) is None:
            raise AuthenticationFailed("The API key is malformed.")
        if self._api_key_check is not None:
            valid = await self._api_key_check(key)
        else:
            valid = await self._ask_identity(key)
        if not valid:
            raise AuthenticationFailed("The API key is unknown or revoked.")
        return api_key_principal(key)

    async def _ask_identity(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("latin-1")).hexdigest()
        now = time.monotonic()
        seen = self._api_key_answers.get(digest)
        if seen is not None and seen[1] > now:
            return seen[0]
        instance = self._identity.pick(now) if self._identity is not None else None
        if instance is None:
            raise ApiKeysUnavailable("identity is not reachable from the gateway")
        self.api_key_lookups += 1
        try:
            # The key passed parse_api_key: printable ASCII without spaces, so one header line.
            status, _, _ = await fetch(
                instance,
                self._whoami_path,
                timeout=3.0,
                headers=b"%s: %s\r\n" % (_API_KEY_HEADER, key.encode("ascii")),
            )
        except (OSError, TimeoutError, ValueError, ConnectionError) as exc:
            log.warning("api_key_check_failed", instance=instance.url, error=str(exc))
            instance.breaker.record_failure(time.monotonic())
            raise ApiKeysUnavailable(str(exc)) from None
        instance.breaker.record_success()
        if status == 200:
            valid = True
        elif status == 401:
            # Unknown, revoked, or its owner disabled. Kept like a valid answer: a key id is
            # random, so a key unknown now does not become valid later, a revoked one never
            # returns, and a re-enabled owner's keys work again within the same bound.
            valid = False
        else:
            log.warning("api_key_check_failed", instance=instance.url, status=status)
            raise ApiKeysUnavailable(f"identity answered {status}")
        if len(self._api_key_answers) >= _VERIFIED_CACHE_SIZE:
            del self._api_key_answers[next(iter(self._api_key_answers))]
        self._api_key_answers[digest] = (valid, time.monotonic() + self._api_key_ttl)
        return valid

    async def authenticate_bearer(self, token: str) -> Principal:
        """The principal of a valid access token; raises ``AuthenticationFailed`` otherwise."""
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] > time.time():
                return cached[0]
            del self._verified[token]
        try:
            token_kid(token)
        except TokenError as exc:
            # A token that could never verify needs no keys: a 401 even while they are away.
            raise AuthenticationFailed(str(exc)) from None
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
