"""TokenVerifier against real key sources (in process, a real HTTP JWKS server) and at the edge."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ecosistema.platform.auth import (
    API_KEY_HEADER,
    JWKS_PATH,
    REVOKED_SESSION_KEY,
    TOKEN_LEEWAY_SECONDS,
    CurrentPrincipal,
    OptionalPrincipal,
    Principal,
    TokenVerifier,
    format_api_key,
    require,
)
from ecosistema.platform.cache import Cache, MemoryCache, RedisCache
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import ServiceUnavailable, Unauthorized, install_error_handlers
from ecosistema.platform.tokens import (
    SigningKey,
    build_jwks,
    encode_access_token,
    generate_signing_key,
)
from tests.conftest import REDIS_URL, requires_redis


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing a JWKS the test can change, counting fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.status = 200
        self.hits = 0
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def publish(self, *keys: SigningKey) -> None:
        self.document = build_jwks(keys)

    async def _jwks(self, request: Request) -> Response:
        self.hits += 1
        if self.status != 200:
            return JSONResponse({"detail": "unavailable"}, status_code=self.status)
        return JSONResponse(self.document)

    def start(self) -> None:
        app = Starlette(routes=[Route(JWKS_PATH, self._jwks)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the JWKS test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def jwks_server_process() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def jwks_server(jwks_server_process: JwksServer) -> JwksServer:
    jwks_server_process.document = {"keys": []}
    jwks_server_process.status = 200
    jwks_server_process.hits = 0
    return jwks_server_process


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "environment": "test",
        "data_dir": tmp_path,
        "jwks_cache_seconds": 300.0,
        "jwks_refresh_min_interval_seconds": 0.0,
    }
    base.update(overrides)
    return Settings(**base)


def issue(settings: Settings, key: SigningKey, *, role: str = "customer", **kw: Any) -> str:
    args: dict[str, Any] = {
        "subject": "user-1",
        "role": role,
        "session_id": "sess-1",
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
        "ttl_seconds": settings.access_token_ttl_seconds,
    }
    args.update(kw)
    return encode_access_token(key, **args)


class LocalKeys:
    """What identity registers in process: its current public keys, counting reads."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.reads = 0

    async def __call__(self) -> dict[str, Any]:
        self.reads += 1
        return build_jwks(self.keys)


# --- in-process keys ---------------------------------------------------------------------------


async def test_local_provider_verifies_and_maps_role_to_permissions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = generate_signing_key()
    provider = LocalKeys(key)
    verifier = TokenVerifier(settings, cache=MemoryCache())
    verifier.add_local_jwks(provider)

    principal = await verifier.verify_access_token(issue(settings, key, role="staff"))

    assert principal.subject == "user-1" and principal.kind == "user"
    assert principal.role == "staff" and principal.session_id == "sess-1"
    assert principal.has("payments:refund") and not principal.has("users:manage")


async def test_token_of_an_ended_session_is_refused_even_when_remembered(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = generate_signing_key()
    cache = MemoryCache()
    verifier = TokenVerifier(settings, cache=cache)
    verifier.add_local_jwks(LocalKeys(key))
    token = issue(settings, key, session_id="sess-ended")
    await verifier.verify_access_token(token)

    await cache.set(REVOKED_SESSION_KEY.format(session_id="sess-ended"), b"1", ttl=60)

    with pytest.raises(Unauthorized):
        await verifier.verify_access_token(token)
    other = await verifier.verify_access_token(issue(settings, key, session_id="sess-live"))
    assert other.session_id == "sess-live"


async def test_key_set_is_read_once_not_per_verification(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = generate_signing_key()
    provider = LocalKeys(key)
    verifier = TokenVerifier(settings, cache=MemoryCache())
    verifier.add_local_jwks(provider)
    token = issue(settings, key)

    for _ in range(200):
        await verifier.verify_access_token(token)

    assert provider.reads == 1


async def test_local_rotation_accepts_new_kid_and_keeps_old_until_removed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    old = generate_signing_key()
    provider = LocalKeys(old)
    verifier = TokenVerifier(settings, cache=MemoryCache())
    verifier.add_local_jwks(provider)
    old_token = issue(settings, old)
    await verifier.verify_access_token(old_token)

    new = generate_signing_key()
    provider.keys = [new, old]
    assert (await verifier.verify_access_token(issue(settings, new))).subject == "user-1"
    assert (await verifier.verify_access_token(old_token)).subject == "user-1"
    assert provider.reads == 2

    provider.keys = [new]
    verifier.invalidate()
    with pytest.raises(Unauthorized):
        await verifier.verify_access_token(old_token)


async def test_local_keys_win_over_http(tmp_path: Path, jwks_server: JwksServer) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    key = generate_signing_key()
    verifier = TokenVerifier(settings, cache=MemoryCache())
    verifier.add_local_jwks(LocalKeys(key))

    await verifier.verify_access_token(issue(settings, key))

    assert jwks_server.hits == 0


# --- keys over HTTP from a real server ---------------------------------------------------------


async def test_http_jwks_is_fetched_once_and_cached(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    key = generate_signing_key()
    jwks_server.publish(key)
    verifier = TokenVerifier(settings, cache=None)
    token = issue(settings, key, role="sales")

    for _ in range(50):
        principal = await verifier.verify_access_token(token)

    assert principal.role == "sales"
    assert jwks_server.hits == 1


async def test_http_rotation_refreshes_on_unknown_kid_and_keeps_old_kid(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    old = generate_signing_key()
    jwks_server.publish(old)
    verifier = TokenVerifier(settings, cache=None)
    old_token = issue(settings, old)
    await verifier.verify_access_token(old_token)
    assert jwks_server.hits == 1

    new = generate_signing_key()
    jwks_server.publish(new, old)
    new_token = issue(settings, new, role="admin")

    assert (await verifier.verify_access_token(new_token)).role == "admin"
    assert jwks_server.hits == 2
    assert (await verifier.verify_access_token(old_token)).role == "customer"
    assert (await verifier.verify_access_token(new_token)).role == "admin"
    assert jwks_server.hits == 2


async def test_token_verified_before_is_refused_once_its_key_is_retired(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    old, new, newest = generate_signing_key(), generate_signing_key(), generate_signing_key()
    jwks_server.publish(new, old)
    verifier = TokenVerifier(settings, cache=None)
    old_token = issue(settings, old)
    await verifier.verify_access_token(old_token)

    jwks_server.publish(newest, new)
    await verifier.verify_access_token(issue(settings, newest))

    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify_access_token(old_token)


async def test_remembered_token_is_refused_once_it_expires(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    settings, key, verifier = keyed
    ttl, leeway = 60, TOKEN_LEEWAY_SECONDS
    issued_at = datetime.now(UTC) - timedelta(seconds=ttl + leeway - 3)
    token = issue(settings, key, ttl_seconds=ttl, now=issued_at)
    accepted = await verifier.verify_access_token(token)
    assert accepted.subject == "user-1"
    last_valid_instant = int(issued_at.timestamp()) + ttl + leeway

    deadline = time.monotonic() + 10
    while time.time() < last_valid_instant + 0.05:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify_access_token(token)


async def test_forged_kids_cannot_force_a_fetch_storm(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(
        tmp_path, identity_url=jwks_server.url, jwks_refresh_min_interval_seconds=3600.0
    )
    key = generate_signing_key()
    jwks_server.publish(key)
    verifier = TokenVerifier(settings, cache=None)
    await verifier.verify_access_token(issue(settings, key))

    forged = [issue(settings, generate_signing_key(kid=uuid.uuid4().hex)) for _ in range(40)]
    results = await asyncio.gather(
        *(verifier.verify_access_token(t) for t in forged), return_exceptions=True
    )

    assert all(isinstance(r, Unauthorized) for r in results)
    assert jwks_server.hits <= 2
    assert (await verifier.verify_access_token(issue(settings, key))).subject == "user-1"


async def test_disallowed_algorithm_never_triggers_a_fetch(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    verifier = TokenVerifier(settings, cache=None)
    none_token = "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0Iiwia2lkIjoieCJ9.eyJzdWIiOiJ4In0."

    with pytest.raises(Unauthorized):
        await verifier.verify_access_token(none_token)
    assert jwks_server.hits == 0


async def test_identity_down_at_first_use_is_unavailable_then_recovers(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    key = generate_signing_key()
    jwks_server.publish(key)
    jwks_server.status = 503
    verifier = TokenVerifier(settings, cache=None)
    token = issue(settings, key)

    with pytest.raises(ServiceUnavailable):
        await verifier.verify_access_token(token)

    jwks_server.status = 200
    assert (await verifier.verify_access_token(token)).subject == "user-1"


async def test_stale_keys_keep_working_while_identity_is_down(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url, jwks_cache_seconds=0.0)
    key = generate_signing_key()
    jwks_server.publish(key)
    verifier = TokenVerifier(settings, cache=None)
    token = issue(settings, key)
    await verifier.verify_access_token(token)

    jwks_server.status = 500
    assert (await verifier.verify_access_token(token)).subject == "user-1"
    assert jwks_server.hits >= 2


async def test_no_key_source_at_all_is_unavailable(tmp_path: Path) -> None:
    verifier = TokenVerifier(make_settings(tmp_path), cache=None)
    token = issue(make_settings(tmp_path), generate_signing_key())
    with pytest.raises(ServiceUnavailable):
        await verifier.verify_access_token(token)


@pytest.fixture(params=["memory", pytest.param("redis", marks=requires_redis)])
async def shared_cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    cache: Cache = (
        MemoryCache()
        if request.param == "memory"
        else RedisCache(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:10]}:")
    )
    yield cache
    await cache.delete("auth:jwks")
    await cache.close()


async def test_replicas_share_the_fetched_jwks_through_the_cache(
    tmp_path: Path, jwks_server: JwksServer, shared_cache: Cache
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    key = generate_signing_key()
    jwks_server.publish(key)
    token = issue(settings, key)
    first, second = TokenVerifier(settings, shared_cache), TokenVerifier(settings, shared_cache)

    await first.verify_access_token(token)
    await second.verify_access_token(token)

    assert jwks_server.hits == 1


async def test_replica_with_stale_shared_jwks_still_finds_a_new_kid(
    tmp_path: Path, jwks_server: JwksServer, shared_cache: Cache
) -> None:
    settings = make_settings(tmp_path, identity_url=jwks_server.url)
    old, new = generate_signing_key(), generate_signing_key()
    jwks_server.publish(old)
    await TokenVerifier(settings, shared_cache).verify_access_token(issue(settings, old))

    jwks_server.publish(new, old)
    principal = await TokenVerifier(settings, shared_cache).verify_access_token(
        issue(settings, new)
    )

    assert principal.subject == "user-1"
    assert jwks_server.hits == 2


# --- rejected tokens -----------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Settings, SigningKey, TokenVerifier]:
    settings = make_settings(tmp_path)
    key = generate_signing_key()
    verifier = TokenVerifier(settings, cache=MemoryCache())
    verifier.add_local_jwks(LocalKeys(key))
    return settings, key, verifier


async def test_expired_token_is_401_with_invalid_token_challenge(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    settings, key, verifier = keyed
    token = issue(settings, key, ttl_seconds=60, now=_minutes_ago(10))
    with pytest.raises(Unauthorized) as info:
        await verifier.verify_access_token(token)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    assert "expired" in info.value.detail


async def test_token_for_another_audience_is_401(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    settings, key, verifier = keyed
    with pytest.raises(Unauthorized):
        await verifier.verify_access_token(issue(settings, key, audience="elsewhere"))


async def test_token_with_unknown_role_is_401(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    settings, key, verifier = keyed
    with pytest.raises(Unauthorized, match="role"):
        await verifier.verify_access_token(issue(settings, key, role="superuser"))


# --- API keys ------------------------------------------------------------------------------------


class KeyStore:
    """Stands in for identity's resolver: real lookups over a dict of issued keys."""

    def __init__(self) -> None:
        self.keys: dict[str, Principal] = {}
        self.calls = 0

    def mint(self, principal: Principal) -> str:
        assert principal.api_key_id is not None
        credential = format_api_key(principal.api_key_id, uuid.uuid4().hex)
        self.keys[credential] = principal
        return credential

    async def __call__(self, credential: str) -> Principal | None:
        self.calls += 1
        return self.keys.get(credential)


async def test_api_key_resolves_to_its_scoped_principal(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    _, _, verifier = keyed
    store = KeyStore()
    verifier.set_api_key_resolver(store)
    credential = store.mint(Principal.for_api_key("u9", "staff", {"catalog:write"}, "key1"))

    principal = await verifier.verify(credential)

    assert principal.kind == "api_key" and principal.subject == "u9"
    assert principal.permissions == {"catalog:write"}


async def test_api_key_can_never_exceed_scopes_even_if_resolver_says_so(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    _, _, verifier = keyed
    store = KeyStore()
    verifier.set_api_key_resolver(store)
    inflated = Principal(
        subject="u9",
        kind="api_key",
        role="sales",
        permissions=frozenset({"users:manage", "leads:write"}),
        scopes=frozenset({"leads:write", "payments:refund"}),
        api_key_id="key2",
    )
    principal = await verifier.verify(store.mint(inflated))
    assert principal.permissions == {"leads:write"}


async def test_unknown_malformed_or_unresolvable_api_keys_are_401(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> None:
    _, _, verifier = keyed
    with pytest.raises(Unauthorized, match="not accepted"):
        await verifier.verify(format_api_key("key1", "secret"))

    store = KeyStore()
    verifier.set_api_key_resolver(store)
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        await verifier.verify(format_api_key("key1", "secret"))
    with pytest.raises(Unauthorized, match="malformed"):
        await verifier.verify("eco_no-separator")
    assert store.calls == 1


# --- the FastAPI edge ----------------------------------------------------------------------------


def _minutes_ago(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


@pytest.fixture
async def edge(
    keyed: tuple[Settings, SigningKey, TokenVerifier],
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings, SigningKey, KeyStore]]:
    settings, key, verifier = keyed
    store = KeyStore()
    verifier.set_api_key_resolver(store)
    app = FastAPI()
    app.state.runtime = SimpleNamespace(verifier=verifier)
    install_error_handlers(app)

    @app.get("/me")
    async def me(principal: CurrentPrincipal) -> dict[str, str]:
        return {"subject": principal.subject, "kind": principal.kind}

    @app.get("/whoami")
    async def whoami(principal: OptionalPrincipal) -> dict[str, str | None]:
        return {"subject": principal.subject if principal else None}

    @app.post("/products")
    async def create_product(
        principal: Principal = Depends(require("catalog:write")),
    ) -> dict[str, str]:
        return {"by": principal.subject}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, settings, key, store


Edge = tuple[httpx.AsyncClient, Settings, SigningKey, KeyStore]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_missing_credentials_are_401_problem_with_challenge(edge: Edge) -> None:
    client, *_ = edge
    response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"].endswith("/unauthorized")


async def test_invalid_token_is_401_even_where_auth_is_optional(edge: Edge) -> None:
    client, *_ = edge
    for path in ("/me", "/whoami"):
        response = await client.get(path, headers=bearer("not-a-token"))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_optional_route_serves_anonymous_callers(edge: Edge) -> None:
    client, *_ = edge
    response = await client.get("/whoami")
    assert response.status_code == 200 and response.json() == {"subject": None}


async def test_valid_token_reaches_the_route(edge: Edge) -> None:
    client, settings, key, _ = edge
    response = await client.get("/me", headers=bearer(issue(settings, key)))
    assert response.status_code == 200
    assert response.json() == {"subject": "user-1", "kind": "user"}


async def test_lacking_permission_is_403_having_it_is_200(edge: Edge) -> None:
    client, settings, key, _ = edge
    customer = await client.post("/products", headers=bearer(issue(settings, key)))
    staff = await client.post("/products", headers=bearer(issue(settings, key, role="staff")))
    anonymous = await client.post("/products")

    assert customer.status_code == 403
    assert customer.json()["type"].endswith("/forbidden")
    assert staff.status_code == 200
    assert anonymous.status_code == 401


async def test_api_key_works_in_either_header_and_within_its_scopes(edge: Edge) -> None:
    client, _, _, store = edge
    writer = store.mint(Principal.for_api_key("u5", "staff", {"catalog:write"}, "kw"))
    reader = store.mint(Principal.for_api_key("u5", "staff", {"catalog:read"}, "kr"))

    assert (await client.post("/products", headers={API_KEY_HEADER: writer})).status_code == 200
    assert (await client.post("/products", headers=bearer(writer))).status_code == 200
    assert (await client.post("/products", headers={API_KEY_HEADER: reader})).status_code == 403
    me = await client.get("/me", headers={API_KEY_HEADER: reader})
    assert me.json() == {"subject": "u5", "kind": "api_key"}


async def test_a_credential_that_is_no_api_key_is_refused_as_such_not_as_a_jwt(
    edge: Edge,
) -> None:
    client, settings, key, _ = edge
    for headers, detail in (
        ({API_KEY_HEADER: "zzz"}, "Not a valid API key."),
        ({API_KEY_HEADER: issue(settings, key)}, "Not a valid API key."),
        (bearer("zzz"), "Not a valid access token or API key."),
    ):
        response = await client.get("/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["detail"] == detail
        assert "JWT" not in response.headers["www-authenticate"]


async def test_two_different_credentials_are_refused(edge: Edge) -> None:
    client, settings, key, store = edge
    credential = store.mint(Principal.for_api_key("u5", "staff", {"catalog:write"}, "kw"))
    headers = {**bearer(issue(settings, key)), API_KEY_HEADER: credential}
    assert (await client.get("/me", headers=headers)).status_code == 401


async def test_non_bearer_authorization_counts_as_no_credentials(edge: Edge) -> None:
    client, *_ = edge
    response = await client.get("/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401


async def test_openapi_offers_bearer_and_api_key_schemes(edge: Edge) -> None:
    client, *_ = edge
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AccessToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["AccessToken"]["description"],
    }
    assert schemes["ApiKey"]["type"] == "apiKey"
    assert schemes["ApiKey"]["in"] == "header" and schemes["ApiKey"]["name"] == API_KEY_HEADER
    security = spec["paths"]["/products"]["post"]["security"]
    assert {"AccessToken": []} in security and {"ApiKey": []} in security


def test_require_refuses_an_undefined_permission() -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        require("catalog:wirte")
