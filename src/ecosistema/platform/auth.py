"""Authentication for every service: who is calling (``Principal``) and how we know it.

Identity issues access tokens and API keys; every service verifies them here. Access tokens are
checked locally against identity's public keys (JWKS): from an in-process provider when identity
runs in the same process, otherwise fetched from ``{identity_url}/.well-known/jwks.json``. The
parsed keys are kept in memory, so a verification is one signature check and no I/O. API keys
(``eco_<key id>_<secret>``) are resolved by the resolver identity registers; in a process without
identity they are resolved by asking identity (``{identity_url}/api/v1/auth/whoami``), and the
answer is kept for ``API_KEY_CACHE_SECONDS``, which bounds how long a revoked key still works there.

Behind the gateway, a request also carries ``X-Ecosistema-Principal``: the user the gateway has
already authenticated, signed with the shared ``gateway_secret`` (HMAC-SHA256), valid for a short
time and, when the gateway binds it, for that one request only. A service that holds the secret
accepts a valid one instead of verifying the access token again; a forged, tampered, expired or
misdirected one is ignored, and the request's own credentials decide (none: 401).

FastAPI routes depend on ``current_principal``, ``optional_principal`` or ``require(permission)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import httpx
import structlog
from fastapi import APIRouter, Depends, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ecosistema.gateway.principal import (
    PRINCIPAL_HEADER,
    InvalidPrincipal,
    request_binding,
    verify_principal,
)
from ecosistema.platform.balancing import base_urls
from ecosistema.platform.cache import Cache
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import ServiceUnavailable, Unauthorized
from ecosistema.platform.http import BalancingTransport, service_instances
from ecosistema.platform.policy import (
    ROLES,
    check_permission,
    effective_permissions,
    ensure_any,
    permissions_for,
)
from ecosistema.platform.tokens import (
    ExpiredTokenError,
    PublicKeySet,
    TokenError,
    UnknownKeyError,
    decode_access_token,
    token_kid,
)

log = structlog.get_logger(__name__)

API_KEY_PREFIX = "eco_"
# Cache key under which identity marks an ended session until its access tokens expire.
REVOKED_SESSION_KEY = "auth:revoked-session:{session_id}"
API_KEY_HEADER = "X-API-Key"
NOT_AN_API_KEY = "Not a valid API key."
NOT_A_CREDENTIAL = "Not a valid access token or API key."
JWKS_PATH = "/.well-known/jwks.json"
JWKS_CACHE_KEY = "auth:jwks"
TOKEN_LEEWAY_SECONDS = 30
MAX_API_KEY_LENGTH = 256
# Clients present the same access token on every request for its whole life, so a verified
# token is remembered until it expires (or its key leaves the JWKS): one signature check per
# token, not per request. Bounded; the oldest entries go first.
VERIFIED_TOKENS_CACHED = 10_000
# API keys resolved through identity over HTTP are remembered this long (and at most this many).
API_KEY_CACHE_SECONDS = 30.0
API_KEYS_CACHED = 10_000
WHOAMI_PATH = "/api/v1/auth/whoami"

JwksProvider = Callable[[], Awaitable[Mapping[str, Any]]]
ApiKeyResolver = Callable[[str], Awaitable["Principal | None"]]


# How records of changes name an API key as the actor: ``api_key:<key id>``.
API_KEY_ACTOR_PREFIX = "api_key:"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a user (by access token) or a machine client (by API key).

    ``subject`` is the user id; for an API key it is the id of the user who created it, so
    ownership rules treat the key as its creator. ``permissions`` are what the caller may do now.
    """

    subject: str
    kind: Literal["user", "api_key"]
    role: str
    permissions: frozenset[str]
    session_id: str | None = None
    scopes: frozenset[str] = frozenset()
    api_key_id: str | None = None

    def has(self, permission: str) -> bool:
        """Whether the caller holds ``permission``."""
        return permission in self.permissions

    @property
    def actor(self) -> str:
        """Who did it, as records of changes name them (movements, histories, refunds): the
        user's id, or ``api_key:<key id>`` for a machine client, so an integration's changes
        are told apart from its creator's own."""
        if self.kind == "api_key" and self.api_key_id:
            return f"{API_KEY_ACTOR_PREFIX}{self.api_key_id}"
        return self.subject

    @classmethod
    def for_user(cls, subject: str, role: str, session_id: str | None = None) -> Principal:
        """A signed-in user, holding every permission of their role."""
        return cls(
            subject=subject,
            kind="user",
            role=role,
            permissions=permissions_for(role),
            session_id=session_id,
        )

    @classmethod
    def for_api_key(
        cls, subject: str, role: str, scopes: Iterable[str], api_key_id: str
    ) -> Principal:
        """A machine client: its key's scopes, limited by its creator's current role."""
        granted = frozenset(scopes)
        return cls(
            subject=subject,
            kind="api_key",
            role=role,
            permissions=effective_permissions(role, granted),
            scopes=granted,
            api_key_id=api_key_id,
        )


def format_api_key(key_id: str, secret: str) -> str:
    """The API key string a machine client presents: ``eco_<key id>_<secret>``."""
    if not key_id or "_" in key_id or not key_id.isascii() or not key_id.isalnum():
        raise ValueError("an API key id must be non-empty ASCII letters and digits")
    if not secret:
        raise ValueError("an API key secret must not be empty")
    return f"{API_KEY_PREFIX}{key_id}_{secret}"


def parse_api_key(value: str) -> tuple[str, str] | None:
    """Split a presented API key into ``(key_id, secret)``, or ``None`` if it is not one."""
    if not value.startswith(API_KEY_PREFIX) or len(value) > MAX_API_KEY_LENGTH:
        return None
    key_id, sep, secret = value[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret or not key_id.isascii() or not key_id.isalnum():
        return None
    if not secret.isascii() or not secret.isprintable() or " " in secret:
        return None
    return key_id, secret


def is_api_key(value: str) -> bool:
    """Whether a credential is meant as an API key (rather than an access token)."""
    return value.startswith(API_KEY_PREFIX)


def _looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2


def _invalid(detail: str) -> Unauthorized:
    quoted = detail.replace('"', "'")
    return Unauthorized(
        detail,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'},
    )


class _JwksUnavailable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    kid: str
    expires_at: float


class TokenVerifier:
    """Verifies access tokens and API keys; one per process, shared by every hosted service.

    Keys come from in-process JWKS providers when any is registered, else from identity over
    HTTP. The last good key set is kept for ``jwks_cache_seconds`` (and, in the distributed shape,
    shared through the cache so replicas do not each ask identity). A token naming an unknown
    ``kid`` triggers one refresh, at most once per ``jwks_refresh_min_interval_seconds``, so forged
    kids cannot make the verifier hammer identity.
    """

    def __init__(self, settings: Settings, cache: Cache | None = None) -> None:
        self._settings = settings
        self._cache = cache
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl = max(0.0, settings.jwks_cache_seconds)
        self._min_refresh = max(0.0, settings.jwks_refresh_min_interval_seconds)
        self._providers: list[JwksProvider] = []
        self._resolver: ApiKeyResolver | None = None
        self._keys = PublicKeySet()
        self._fresh_until = -math.inf
        self._last_forced_refresh = -math.inf
        self._ever_loaded = False
        self._lock = asyncio.Lock()
        self._verified: dict[str, _Verified] = {}
        self._remote_keys: dict[str, tuple[Principal, float]] = {}

    def add_local_jwks(self, provider: JwksProvider) -> None:
        """Register an in-process JWKS source (identity does at start); HTTP is then not used."""
        self._providers.append(provider)
        self.invalidate()

    def set_api_key_resolver(self, resolver: ApiKeyResolver) -> None:
        """Register the function that turns a presented API key into a principal (identity's)."""
        self._resolver = resolver

    def invalidate(self) -> None:
        """Forget the cached key set's freshness, so the next verification re-reads it."""
        self._fresh_until = -math.inf

    @property
    def jwks_url(self) -> str | None:
        """Where identity publishes its keys, when it does not run in this process."""
        base = self._settings.identity_url
        return f"{base_urls(base)[0]}{JWKS_PATH}" if base else None

    def _identity_transport(self) -> BalancingTransport:
        """Calls to identity, spread over its instances and moving on from one that is down."""
        instances = service_instances("identity", self._settings.identity_url or "")
        return BalancingTransport(instances, httpx.AsyncHTTPTransport())

    async def verify(self, credential: str, *, sent_as_api_key: bool = False) -> Principal:
        """Authenticate a presented credential: an API key or an access token.

        ``sent_as_api_key``: it came in the API key header, which only carries API keys.
        """
        if is_api_key(credential):
            return await self.verify_api_key(credential)
        if sent_as_api_key:
            raise _invalid(NOT_AN_API_KEY)
        if not _looks_like_jwt(credential):
            # A bearer credential may be either; this one is neither.
            raise _invalid(NOT_A_CREDENTIAL)
        return await self.verify_access_token(credential)

    async def verify_gateway_principal(self, value: str, *, binding: str) -> Principal | None:
        """The user a gateway-signed principal header vouches for, or ``None`` when it must not
        be believed (no shared secret here, or forged, tampered, expired or for another request).
        """
        secret = self._settings.gateway_secret
        if secret is None or not secret.get_secret_value():
            return None
        try:
            vouched = verify_principal(value, secret.get_secret_value().encode(), binding=binding)
        except InvalidPrincipal as exc:
            log.warning("gateway_principal_rejected", reason=str(exc))
            return None
        if vouched.kind != "user" or vouched.role not in ROLES or not vouched.sub:
            log.warning("gateway_principal_rejected", reason="not a user with a known role")
            return None
        if await self._session_revoked(vouched.session_id):
            return None
        return Principal.for_user(vouched.sub, vouched.role, vouched.session_id)

    async def verify_access_token(self, token: str) -> Principal:
        """The user an access token speaks for; ``Unauthorized`` if it must not be accepted."""
        seen = self._verified.get(token)
        if (
            seen is not None
            and time.time() < seen.expires_at
            and seen.kid in self._keys
            and time.monotonic() < self._fresh_until
        ):
            principal = seen.principal
        else:
            claims = await self.access_token_claims(token)
            role = claims["role"]
            if role not in ROLES:
                raise _invalid("The token names an unknown role.")
            principal = Principal.for_user(claims["sub"], role, claims["sid"])
            self._remember(token, principal, claims)
        if await self._session_revoked(principal.session_id):
            raise _invalid("The session has ended.")
        return principal

    async def _session_revoked(self, session_id: str | None) -> bool:
        # Logout, password change, role change and disabling publish the ended session here for
        # the lifetime of its access tokens, so every service refuses them at once, not at expiry.
        if self._cache is None or not session_id:
            return False
        return await self._cache.get(REVOKED_SESSION_KEY.format(session_id=session_id)) is not None

    def _remember(self, token: str, principal: Principal, claims: Mapping[str, Any]) -> None:
        if len(self._verified) >= VERIFIED_TOKENS_CACHED:
            del self._verified[next(iter(self._verified))]
        kid = token_kid(token)
        self._verified[token] = _Verified(
            principal, kid, float(claims["exp"]) + TOKEN_LEEWAY_SECONDS
        )

    async def access_token_claims(self, token: str) -> dict[str, Any]:
        """The verified claims of an access token; ``Unauthorized`` if it must not be accepted."""
        if time.monotonic() < self._fresh_until:
            keys = self._keys
        else:
            # A token that could never verify must not cost a key fetch.
            try:
                token_kid(token)
            except TokenError as exc:
                raise _invalid(str(exc)) from exc
            keys = await self._reload()
        try:
            return self._decode(token, keys)
        except UnknownKeyError as exc:
            if not await self._refresh_for(exc.kid):
                if not self._ever_loaded:
                    raise ServiceUnavailable(
                        "The keys that verify access tokens are unavailable; try again shortly."
                    ) from exc
                raise _invalid(str(exc)) from exc
        try:
            return self._decode(token, self._keys)
        except UnknownKeyError as exc:
            raise _invalid(str(exc)) from exc

    def _decode(self, token: str, keys: PublicKeySet) -> dict[str, Any]:
        try:
            return decode_access_token(
                token,
                keys,
                issuer=self._issuer,
                audience=self._audience,
                leeway=TOKEN_LEEWAY_SECONDS,
            )
        except UnknownKeyError:
            raise
        except ExpiredTokenError as exc:
            raise _invalid("The access token has expired.") from exc
        except TokenError as exc:
            raise _invalid(str(exc)) from exc

    async def verify_api_key(self, credential: str) -> Principal:
        """The machine client an API key speaks for; ``Unauthorized`` if unknown or revoked."""
        if parse_api_key(credential) is None:
            raise _invalid("The API key is malformed.")
        resolver = self._resolver
        if resolver is None and self._settings.identity_url:
            resolver = self._resolve_api_key_remotely
        if resolver is None:
            raise _invalid("API keys are not accepted here.")
        principal = await resolver(credential)
        if principal is None:
            raise _invalid("The API key is unknown or revoked.")
        # The scope rule is enforced here as well, whatever the resolver computed.
        return replace(
            principal,
            kind="api_key",
            permissions=effective_permissions(principal.role, principal.scopes),
        )

    async def _resolve_api_key_remotely(self, credential: str) -> Principal | None:
        """Ask identity who an API key speaks for; answers are kept ``API_KEY_CACHE_SECONDS``."""
        digest = hashlib.sha256(credential.encode()).hexdigest()
        seen = self._remote_keys.get(digest)
        if seen is not None and time.monotonic() < seen[1]:
            return seen[0]
        base = base_urls(self._settings.identity_url or "")[0]
        try:
            async with httpx.AsyncClient(
                timeout=5.0, follow_redirects=False, transport=self._identity_transport()
            ) as client:
                response = await client.get(
                    f"{base}{WHOAMI_PATH}",
                    headers={API_KEY_HEADER: credential, "Accept": "application/json"},
                )
        except httpx.HTTPError as exc:
            log.warning("api_key_resolution_failed", error=repr(exc))
            raise ServiceUnavailable(
                "API keys cannot be checked right now (identity is unreachable); try again shortly."
            ) from exc
        if response.status_code == 401:
            return None
        if response.status_code != 200:
            log.warning("api_key_resolution_failed", status=response.status_code)
            raise ServiceUnavailable("API keys cannot be checked right now; try again shortly.")
        try:
            body = response.json()
            principal = Principal.for_api_key(
                str(body["subject"]),
                str(body["role"]),
                [str(s) for s in body["scopes"]],
                str(body["api_key_id"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceUnavailable("identity answered an API key check unreadably.") from exc
        if principal.role not in ROLES:
            return None
        if len(self._remote_keys) >= API_KEYS_CACHED:
            del self._remote_keys[next(iter(self._remote_keys))]
        self._remote_keys[digest] = (principal, time.monotonic() + API_KEY_CACHE_SECONDS)
        return principal

    async def _reload(self) -> PublicKeySet:
        async with self._lock:
            if time.monotonic() < self._fresh_until:
                return self._keys
            try:
                await self._load(wanted_kid=None)
            except _JwksUnavailable as exc:
                log.warning("jwks_unavailable", error=str(exc), stale_keys=len(self._keys))
                # Keep the stale keys, and wait a little before asking again.
                self._fresh_until = time.monotonic() + self._min_refresh
            return self._keys

    async def _refresh_for(self, kid: str) -> bool:
        async with self._lock:
            if kid in self._keys:
                return True
            now = time.monotonic()
            if now - self._last_forced_refresh < self._min_refresh:
                return False
            self._last_forced_refresh = now
            try:
                await self._load(wanted_kid=kid)
            except _JwksUnavailable as exc:
                log.warning("jwks_unavailable", error=str(exc), kid=kid)
                return False
            return kid in self._keys

    async def _load(self, *, wanted_kid: str | None) -> None:
        keys = await self._fetch_keys(wanted_kid)
        self._keys = keys
        self._ever_loaded = True
        self._fresh_until = time.monotonic() + self._ttl

    async def _fetch_keys(self, wanted_kid: str | None) -> PublicKeySet:
        if self._providers:
            entries: list[Any] = []
            for provider in self._providers:
                try:
                    document = await provider()
                except Exception as exc:
                    raise _JwksUnavailable(f"local JWKS provider failed: {exc!r}") from exc
                found = document.get("keys") if isinstance(document, Mapping) else None
                entries.extend(found if isinstance(found, list) else [])
            return PublicKeySet.from_jwks({"keys": entries})
        shared = await self._shared_jwks()
        if shared is not None and (wanted_kid is None or wanted_kid in shared):
            return shared
        document = await self._fetch_http()
        await self._share_jwks(document)
        return PublicKeySet.from_jwks(document)

    async def _fetch_http(self) -> Mapping[str, Any]:
        url = self.jwks_url
        if url is None:
            raise _JwksUnavailable("no local JWKS provider and ECOSISTEMA_IDENTITY_URL is not set")
        try:
            async with httpx.AsyncClient(
                timeout=5.0, follow_redirects=False, transport=self._identity_transport()
            ) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _JwksUnavailable(f"fetching {url} failed: {exc!r}") from exc
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise _JwksUnavailable(f"{url} did not answer with a JWKS document")
        return document

    async def _shared_jwks(self) -> PublicKeySet | None:
        if self._cache is None:
            return None
        try:
            raw = await self._cache.get(JWKS_CACHE_KEY)
            return PublicKeySet.from_jwks(json.loads(raw)) if raw else None
        except Exception as exc:
            log.warning("jwks_shared_cache_unreadable", error=repr(exc))
            return None

    async def _share_jwks(self, document: Mapping[str, Any]) -> None:
        if self._cache is None or self._ttl <= 0:
            return
        try:
            await self._cache.set(JWKS_CACHE_KEY, json.dumps(document).encode(), ttl=self._ttl)
        except Exception as exc:
            log.warning("jwks_shared_cache_unwritable", error=repr(exc))


bearer_scheme = HTTPBearer(
    bearerFormat="JWT",
    scheme_name="AccessToken",
    description="An access token from identity (`Authorization: Bearer <token>`); "
    "an API key is accepted here too.",
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description=f"An API key for machine clients (`{API_KEY_PREFIX}...`).",
    auto_error=False,
)


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.runtime.verifier
    return verifier


def _request_binding(request: Request) -> str:
    """The binding the gateway signs for this request: method, raw target and request id."""
    target: bytes = request.scope.get("raw_path") or request.url.path.encode()
    query: bytes = request.scope.get("query_string") or b""
    if query:
        target = target + b"?" + query
    return request_binding(request.method, target, request.headers.get("x-request-id", ""))


async def optional_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal | None:
    """The caller if credentials were sent, ``None`` if none were; bad credentials are a 401."""
    vouched = request.headers.get(PRINCIPAL_HEADER)
    if vouched:
        principal = await _verifier(request).verify_gateway_principal(
            vouched, binding=_request_binding(request)
        )
        if principal is not None:
            request.state.principal = principal
            return principal
    token = bearer.credentials if bearer is not None else None
    if token is None and api_key is None:
        # ``Authorization: ApiKey <key>``, the scheme some API clients send a key with.
        scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "apikey" and value.strip():
            api_key = value.strip()
    if token and api_key and token != api_key:
        raise _invalid(f"Send one credential: either Authorization or {API_KEY_HEADER}.")
    credential = token or api_key
    if not credential:
        return None
    principal = await _verifier(request).verify(credential, sent_as_api_key=token is None)
    request.state.principal = principal
    return principal


async def current_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    """The authenticated caller; a 401 (with ``WWW-Authenticate``) when there is none."""
    if principal is None:
        raise Unauthorized(
            f"Send an access token (Authorization: Bearer) or an API key ({API_KEY_HEADER})."
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


def require(permission: str, *alternatives: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency yielding the caller: 401 without credentials, 403 without ``permission``
    or any of ``alternatives`` (``orders:read_own`` or ``orders:read_all``: a key made for an
    integration holds only the second)."""
    for name in (permission, *alternatives):
        check_permission(name)

    async def _require(principal: CurrentPrincipal) -> Principal:
        ensure_any(principal, permission, *alternatives)
        return principal

    _require.__name__ = f"require_{permission.replace(':', '_')}"
    return _require


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _dependency_calls(dependency)


def document_optional_credentials(router: APIRouter) -> APIRouter:
    """Add the empty security requirement (``{}``) to the OpenAPI operations of ``router`` that
    anonymous callers may call (``OptionalPrincipal`` without ``CurrentPrincipal``), so generated
    clients let them call without credentials. Call it before the router is included."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        calls = set(_dependency_calls(route.dependant))
        if optional_principal not in calls or current_principal in calls:
            continue
        extra = dict(route.openapi_extra or {})
        # FastAPI appends a list given here to the security requirements it derives.
        if {} not in extra.get("security", []):
            extra["security"] = [*extra.get("security", []), {}]
        route.openapi_extra = extra
    return router
