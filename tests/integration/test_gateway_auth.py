"""Edge authentication against a real identity-like upstream serving its JWKS."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.gateway import PRINCIPAL_HEADER, gateway_config, serve, verify_principal
from ecosistema.gateway.principal import InvalidPrincipal, request_binding
from ecosistema.gateway.server import GatewayServer
from ecosistema.platform.tokens import (
    SigningKey,
    build_jwks,
    encode_access_token,
    generate_signing_key,
)
from tests.integration.test_gateway_upstream import start_upstream, stop

SECRET = "gateway-secret-for-tests-0123456789"
# The API keys the identity stand-in knows; each test that revokes one uses its own.
LIVE_KEY = "eco_live_abc"
API_KEYS = (LIVE_KEY, "eco_revoked1_abc", "eco_revoked2_abc")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    key = generate_signing_key()
    jwks_file = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks_file.write_text(json.dumps(build_jwks([key])))
    return jwks_file, key


@pytest.fixture(scope="module")
def identity(keys: tuple[Path, SigningKey]) -> Iterator[str]:
    env = {"JWKS_FILE": str(keys[0]), "API_KEYS": ",".join(API_KEYS)}
    proc, url = start_upstream("identity", env=env)
    yield url
    stop(proc)


def table(url: str, **auth: Any) -> dict[str, Any]:
    return {
        "services": {
            "identity": {"instances": [url], "health_path": None},
            "orders": {"instances": [url], "health_path": None},
        },
        "routes": [
            {"prefix": "/.well-known/jwks.json", "service": "identity", "public": True},
            {"prefix": "/api/v1/auth/", "service": "identity", "public": True},
            {"prefix": "/api/v1/orders", "service": "orders"},
            {"prefix": "/api/v1/products", "service": "orders", "public": True},
        ],
        "auth": {"principal_secret": SECRET, "jwks_min_refresh_seconds": 60, **auth},
        "rate_limits": {"enabled": False},
    }


@pytest.fixture
async def gateway(identity: str) -> AsyncIterator[GatewayServer]:
    server = await serve(gateway_config(table(identity)), port=0, access_log=io.StringIO())
    yield server
    await server.close(1)


def token(key: SigningKey, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "subject": "user-1",
        "role": "customer",
        "session_id": "sess-1",
        "issuer": "ecosistema",
        "audience": "ecosistema-api",
        "ttl_seconds": 300,
    }
    claims.update(overrides)
    return encode_access_token(key, **claims)


def client(server: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)


async def test_protected_route_without_credentials_is_a_401(gateway: GatewayServer) -> None:
    async with client(gateway) as c:
        response = await c.get("/api/v1/orders")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"].endswith("/unauthorized")


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ],
)
async def test_malformed_token_is_a_401(gateway: GatewayServer, bad: str) -> None:
    async with client(gateway) as c:
        response = await c.get("/api/v1/orders", headers={"authorization": f"Bearer {bad}"})
    assert response.status_code == 401


async def test_expired_or_foreign_tokens_are_401(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    key = keys[1]
    async with client(gateway) as c:
        foreign = await c.get(
            "/api/v1/orders",
            headers={"authorization": f"Bearer {token(key, audience='someone-else')}"},
        )
        from datetime import UTC, datetime, timedelta

        old = token(key, now=datetime.now(UTC) - timedelta(hours=1))
        expired = await c.get("/api/v1/orders", headers={"authorization": f"Bearer {old}"})
    assert foreign.status_code == 401
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


async def test_valid_token_passes_with_a_signed_principal_and_forgeries_are_stripped(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    headers = {
        "authorization": f"Bearer {token(keys[1])}",
        PRINCIPAL_HEADER: "v1.forged.forged",
        "x-ecosistema-role": "admin",
    }
    async with client(gateway) as c:
        response = await c.get("/api/v1/orders/1", headers=headers)
    assert response.status_code == 200
    seen = response.json()["headers"]
    assert "x-ecosistema-role" not in seen
    [vouched] = seen[PRINCIPAL_HEADER.lower()]
    [request_id] = seen["x-request-id"]
    binding = request_binding("GET", "/api/v1/orders/1", request_id)
    principal = verify_principal(vouched, SECRET.encode(), binding=binding)
    assert (principal.sub, principal.role, principal.session_id) == ("user-1", "customer", "sess-1")


async def test_signed_principal_is_bound_to_its_request_and_cannot_be_replayed(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    authorization = {"authorization": f"Bearer {token(keys[1])}"}
    async with client(gateway) as c:
        first = (await c.get("/api/v1/orders/1?limit=5", headers=authorization)).json()
        second = (await c.get("/api/v1/orders/1?limit=5", headers=authorization)).json()
    [captured] = first["headers"][PRINCIPAL_HEADER.lower()]
    [request_id] = first["headers"]["x-request-id"]
    own = request_binding("GET", "/api/v1/orders/1?limit=5", request_id)
    assert verify_principal(captured, SECRET.encode(), binding=own).sub == "user-1"
    [next_request_id] = second["headers"]["x-request-id"]
    assert next_request_id != request_id
    replays = [
        None,  # a service that does not know which request it serves
        request_binding("GET", "/api/v1/orders/1?limit=5", next_request_id),
        request_binding("GET", "/api/v1/orders/2?limit=5", request_id),
        request_binding("GET", "/api/v1/orders/1?limit=500", request_id),
        request_binding("DELETE", "/api/v1/orders/1?limit=5", request_id),
    ]
    for binding in replays:
        with pytest.raises(InvalidPrincipal, match="bound to another request"):
            verify_principal(captured, SECRET.encode(), binding=binding)


async def test_the_client_request_id_is_part_of_the_binding_the_service_recomputes(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    headers = {"authorization": f"Bearer {token(keys[1])}", "x-request-id": "client-chosen-id-1"}
    async with client(gateway) as c:
        seen = (await c.post("/api/v1/orders", content=b"{}", headers=headers)).json()["headers"]
    assert seen["x-request-id"] == ["client-chosen-id-1"]
    [vouched] = seen[PRINCIPAL_HEADER.lower()]
    binding = request_binding("POST", "/api/v1/orders", "client-chosen-id-1")
    assert verify_principal(vouched, SECRET.encode(), binding=binding).role == "customer"


async def test_public_route_strips_a_forged_principal(gateway: GatewayServer) -> None:
    async with client(gateway) as c:
        response = await c.post(
            "/api/v1/auth/login", content=b"{}", headers={PRINCIPAL_HEADER: "v1.a.b"}
        )
    assert response.status_code == 200
    assert PRINCIPAL_HEADER.lower() not in response.json()["headers"]


@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/products"])
@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": LIVE_KEY},
        {"authorization": f"ApiKey {LIVE_KEY}"},
        {"authorization": f"Bearer {LIVE_KEY}"},
    ],
)
async def test_a_valid_api_key_is_checked_with_identity_and_forwarded_untouched(
    gateway: GatewayServer, path: str, headers: dict[str, str]
) -> None:
    async with client(gateway) as c:
        response = await c.get(path, headers=headers)
    seen = response.json()["headers"]
    assert response.status_code == 200
    for name, value in headers.items():
        assert seen[name] == [value]
    assert PRINCIPAL_HEADER.lower() not in seen


@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/products"])
@pytest.mark.parametrize(
    "headers, detail",
    [
        ({"x-api-key": "eco_unknown_abc"}, "unknown or revoked"),
        ({"authorization": "ApiKey eco_unknown_abc"}, "unknown or revoked"),
        ({"authorization": "Bearer eco_unknown_abc"}, "unknown or revoked"),
        ({"x-api-key": "live_abc"}, "malformed"),
        ({"x-api-key": LIVE_KEY, "authorization": "Bearer eco_unknown_abc"}, "one credential"),
    ],
)
async def test_an_unknown_api_key_is_a_401_on_public_and_protected_routes(
    gateway: GatewayServer, path: str, headers: dict[str, str], detail: str
) -> None:
    async with client(gateway) as c:
        response = await c.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


async def test_identity_is_asked_about_a_key_once_per_api_key_cache_period(
    gateway: GatewayServer, identity: str
) -> None:
    async with httpx.AsyncClient(base_url=identity) as upstream, client(gateway) as c:
        before = (await upstream.get("/admin/whoami-count")).json()["count"]
        statuses = [
            (await c.get("/api/v1/products", headers={"x-api-key": key})).status_code
            for key in (LIVE_KEY, LIVE_KEY, "eco_nobody_abc", "eco_nobody_abc", LIVE_KEY)
        ]
        after = (await upstream.get("/admin/whoami-count")).json()["count"]
    assert statuses == [200, 200, 401, 401, 200]
    assert after - before == 2
    assert gateway.gateway.auth.api_key_lookups == 2


async def test_a_revoked_api_key_is_refused_once_the_answer_kept_for_it_expires(
    gateway: GatewayServer, identity: str
) -> None:
    auth = gateway.gateway.auth
    key = "eco_revoked1_abc"
    async with httpx.AsyncClient(base_url=identity) as upstream, client(gateway) as c:
        before = await c.get("/api/v1/products", headers={"x-api-key": key})
        await upstream.get("/admin/revoke", params={"key": key})
        # Within API_KEY_CACHE_SECONDS the gateway still holds identity's earlier answer, as a
        # service without identity in its process does.
        cached = await c.get("/api/v1/products", headers={"x-api-key": key})
        auth._api_key_answers = {d: (v, 0.0) for d, (v, _) in auth._api_key_answers.items()}
        after = await c.get("/api/v1/products", headers={"x-api-key": key})
        protected = await c.get("/api/v1/orders", headers={"x-api-key": key})
    assert (before.status_code, cached.status_code) == (200, 200)
    assert after.status_code == 401 and protected.status_code == 401


async def test_api_keys_are_a_503_when_identity_cannot_say(identity: str) -> None:
    config = table(identity)
    config["services"]["identity"]["instances"] = ["http://127.0.0.1:9"]
    server = await serve(gateway_config(config), port=0, access_log=io.StringIO())
    try:
        async with client(server) as c:
            response = await c.get("/api/v1/products", headers={"x-api-key": LIVE_KEY})
            anonymous = await c.get("/api/v1/products")
    finally:
        await server.close(1)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "API keys" in response.json()["detail"]
    assert anonymous.status_code == 200


async def test_public_route_refuses_bad_bearer_tokens_and_serves_valid_and_anonymous_ones(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    from datetime import UTC, datetime, timedelta

    key = keys[1]
    bad = {
        "expired": token(key, now=datetime.now(UTC) - timedelta(hours=1)),
        "foreign audience": token(key, audience="someone-else"),
        "foreign issuer": token(key, issuer="someone-else"),
        "unknown key": token(generate_signing_key()),
        "garbage": "not-a-jwt",
    }
    async with client(gateway) as c:
        refused = {
            name: await c.get("/api/v1/products", headers={"authorization": f"Bearer {value}"})
            for name, value in bad.items()
        }
        refused["empty"] = await c.get("/api/v1/products", headers={"authorization": "Bearer"})
        valid = await c.get("/api/v1/products", headers={"authorization": f"Bearer {token(key)}"})
        again = await c.get("/api/v1/products", headers={"authorization": f"Bearer {token(key)}"})
        anonymous = await c.get("/api/v1/products")
        other_scheme = await c.get("/api/v1/products", headers={"authorization": "Basic eDp5"})
    for name, response in refused.items():
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert response.json()["type"].endswith("/unauthorized"), name
    assert "expired" in refused["expired"].json()["detail"]
    assert valid.status_code == 200 and again.status_code == 200
    [vouched] = valid.json()["headers"][PRINCIPAL_HEADER.lower()]
    [request_id] = valid.json()["headers"]["x-request-id"]
    binding = request_binding("GET", "/api/v1/products", request_id)
    assert verify_principal(vouched, SECRET.encode(), binding=binding).sub == "user-1"
    assert anonymous.status_code == 200
    assert PRINCIPAL_HEADER.lower() not in anonymous.json()["headers"]
    # Not a credential of this platform: the route serves it as it serves anyone.
    assert other_scheme.status_code == 200


async def test_unknown_kid_refetches_the_jwks_once_within_the_interval(
    identity: str, keys: tuple[Path, SigningKey]
) -> None:
    jwks_file, first = keys
    server = await serve(
        gateway_config(table(identity, jwks_min_refresh_seconds=0)),
        port=0,
        access_log=io.StringIO(),
    )
    rotated = generate_signing_key()
    try:
        async with client(server) as c:
            before = await c.get(
                "/api/v1/orders", headers={"authorization": f"Bearer {token(first)}"}
            )
            jwks_file.write_text(json.dumps(build_jwks([first, rotated])))
            after = await c.get(
                "/api/v1/orders", headers={"authorization": f"Bearer {token(rotated)}"}
            )
    finally:
        jwks_file.write_text(json.dumps(build_jwks([first])))
        await server.close(1)
    assert before.status_code == 200 and after.status_code == 200
    assert server.gateway.auth.fetches == 2


async def test_unknown_kids_cannot_make_the_gateway_hammer_identity(
    gateway: GatewayServer, keys: tuple[Path, SigningKey]
) -> None:
    strangers = [generate_signing_key() for _ in range(5)]
    async with client(gateway) as c:
        await c.get("/api/v1/orders", headers={"authorization": f"Bearer {token(keys[1])}"})
        statuses = [
            (
                await c.get("/api/v1/orders", headers={"authorization": f"Bearer {token(k)}"})
            ).status_code
            for k in strangers
        ]
    assert statuses == [401] * 5
    assert gateway.gateway.auth.fetches == 1
