"""Credentials that are presented are verified on every route, through the real platform.

On public reads (categories, products, availability, the cached product page) a request that
carries an expired or badly signed access token, a garbage bearer, or an unknown or revoked API
key is a 401 problem+json with ``WWW-Authenticate``, never served as anonymous nor from the
response cache; without credentials, or with valid ones, the same reads answer as before. Both
gateways: the embedded one (``ecosistema up``, the app in process) and the distributed one (the
services over HTTP, the route table ``ecosistema up --distributed`` writes), on both shapes.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ecosistema.distributed import Instance, route_table
from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.embedded import serve_embedded
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.tokens import encode_access_token, generate_signing_key
from ecosistema.services import SERVICE_NAMES, load_services
from tests.conftest import drop_test_schemas
from tests.default_model import DefaultModelCache
from tests.integration.test_distributed_principal import ServedApp
from tests.integration.test_identity_support import fast_settings

API = "/api/v1"
NO_LIMITS = {"enabled": False}


@dataclass
class Shop:
    client: httpx.AsyncClient
    # Whether an API key's revocation counts at the edge on the very next request (identity in
    # the gateway's process) or once the answer kept for it expires (identity over HTTP).
    revocation_is_immediate: bool
    expired_token: str
    foreign_token: str
    staff: dict[str, str]
    customer: dict[str, str]
    admin: dict[str, str]
    product_id: str
    draft_id: str
    accounts: dict[str, dict[str, str]]


@dataclass
class Seeded:
    accounts: dict[str, dict[str, str]]
    expired_token: str


async def _seed_identity(settings: Settings) -> Seeded:
    """Demo accounts, and a token signed with identity's own key that expired an hour ago."""
    from ecosistema.identity.service import active_signing_key, seed_demo
    from ecosistema.platform.runtime import Runtime

    runtime = Runtime(settings, load_services(["identity"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["identity"]
        accounts = await seed_demo(ctx)
        expired = encode_access_token(
            await active_signing_key(ctx),
            subject="someone",
            role="customer",
            session_id="gone",
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=60,
            now=datetime.now(UTC) - timedelta(hours=1),
        )
        return Seeded(accounts, expired)
    finally:
        await runtime.stop()


async def _login(client: httpx.AsyncClient, account: dict[str, str]) -> dict[str, str]:
    response = await client.post(f"{API}/auth/login", json=account)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _product(client: httpx.AsyncClient, staff: dict[str, str], sku: str, status: str) -> str:
    response = await client.post(
        f"{API}/products",
        json={
            "name": f"Credential Lamp {sku}",
            "status": status,
            "variants": [
                {"sku": sku, "options": {}, "prices": [{"currency": "EUR", "amount": 4900}]}
            ],
        },
        headers=staff,
    )
    assert response.status_code == 201, response.text
    product_id: str = response.json()["id"]
    return product_id


async def _open_shop(
    client: httpx.AsyncClient, seeded: Seeded, settings: Settings, *, immediate: bool
) -> Shop:
    staff = await _login(client, seeded.accounts["staff"])
    foreign = encode_access_token(
        generate_signing_key(),
        subject="intruder",
        role="admin",
        session_id="s",
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=300,
    )
    return Shop(
        client=client,
        revocation_is_immediate=immediate,
        expired_token=seeded.expired_token,
        foreign_token=foreign,
        staff=staff,
        customer=await _login(client, seeded.accounts["customer"]),
        admin=await _login(client, seeded.accounts["admin"]),
        product_id=await _product(client, staff, "CRED-1", "active"),
        draft_id=await _product(client, staff, "CRED-2", "draft"),
        accounts=seeded.accounts,
    )


async def _embedded(settings: Settings, seeded: Seeded) -> AsyncIterator[Shop]:
    services = load_services()
    running = await serve_embedded(
        settings,
        port=0,
        app=create_app(services, settings),
        services=services,
        access_log=io.StringIO(),
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{running.port}", timeout=30
        ) as client:
            yield await _open_shop(client, seeded, settings, immediate=True)
    finally:
        await running.close(2)


async def _distributed(settings: Settings, seeded: Seeded) -> AsyncIterator[Shop]:
    # Every service in one process behind the distributed gateway, which reaches them (and
    # identity's key check) over HTTP, with the route table ``up --distributed`` writes.
    served = ServedApp(create_app(load_services(), settings))
    try:
        port = int(served.url.rsplit(":", 1)[1])
        instances = [Instance(name, 1, "127.0.0.1", port) for name in SERVICE_NAMES]
        table = route_table(instances, settings=settings, rate_limits=NO_LIMITS)
        server = await serve(gateway_config(table, settings), port=0, access_log=io.StringIO())
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{server.port}", timeout=30
            ) as client:
                yield await _open_shop(client, seeded, settings, immediate=False)
        finally:
            await server.close(2)
    finally:
        served.stop()


GATEWAYS: dict[str, Callable[[Settings, Seeded], AsyncIterator[Shop]]] = {
    "embedded-gateway": _embedded,
    "distributed-gateway": _distributed,
}


@pytest.fixture(params=sorted(GATEWAYS))
async def shop(
    request: pytest.FixtureRequest,
    shape: str,
    tmp_path: Path,
    default_model_cache: DefaultModelCache,
) -> AsyncIterator[Shop]:
    settings = fast_settings(shape, tmp_path, gateway_rate_limits=NO_LIMITS)
    default_model_cache.seed(settings)
    seeded = await _seed_identity(settings)
    try:
        async for running in GATEWAYS[request.param](settings, seeded):
            yield running
    finally:
        await drop_test_schemas(settings)


async def _api_key(shop: Shop, scopes: list[str]) -> tuple[str, str]:
    response = await shop.client.post(
        f"{API}/api-keys", json={"name": "storefront sync", "scopes": scopes}, headers=shop.admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


async def _revoke(shop: Shop, key_id: str) -> None:
    response = await shop.client.delete(f"{API}/api-keys/{key_id}", headers=shop.admin)
    assert response.status_code == 204, response.text


def _public_reads(shop: Shop) -> list[str]:
    return [
        f"{API}/categories",
        f"{API}/products",
        f"{API}/products/{shop.product_id}",
        f"{API}/availability?sku=CRED-1",
    ]


def _assert_refused(response: httpx.Response, what: str) -> None:
    assert response.status_code == 401, (what, response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", what
    assert response.headers["www-authenticate"].startswith("Bearer"), what
    assert response.json()["type"].endswith("/unauthorized"), what
    assert "x-cache" not in response.headers, what


async def test_bad_bearer_tokens_on_public_reads_are_a_401(shop: Shop) -> None:
    bad = {
        "expired": shop.expired_token,
        "signed by a stranger": shop.foreign_token,
        "garbage": "not-a-token",
        "tampered": shop.customer["Authorization"].removeprefix("Bearer ")[:-4] + "AAAA",
    }
    for path in _public_reads(shop):
        for name, token in bad.items():
            response = await shop.client.get(path, headers={"Authorization": f"Bearer {token}"})
            _assert_refused(response, f"{name} on {path}")
    expired = await shop.client.get(
        f"{API}/categories", headers={"Authorization": f"Bearer {shop.expired_token}"}
    )
    assert "expired" in expired.json()["detail"]


async def test_unknown_and_revoked_api_keys_on_public_reads_are_a_401(shop: Shop) -> None:
    key_id, key = await _api_key(shop, ["catalog:write"])
    await _revoke(shop, key_id)
    unknown = key[:-6] + "zzzzzz"
    for path in _public_reads(shop):
        for name, value in (("revoked", key), ("unknown", unknown)):
            for headers in (
                {"X-API-Key": value},
                {"Authorization": f"ApiKey {value}"},
                {"Authorization": f"Bearer {value}"},
            ):
                response = await shop.client.get(path, headers=headers)
                _assert_refused(response, f"{name} key {headers} on {path}")


async def test_a_key_revoked_while_in_use_is_refused_on_public_reads(shop: Shop) -> None:
    key_id, key = await _api_key(shop, ["catalog:write"])
    headers = {"X-API-Key": key}
    assert (await shop.client.get(f"{API}/categories", headers=headers)).status_code == 200
    await _revoke(shop, key_id)
    if shop.revocation_is_immediate:
        _assert_refused(
            await shop.client.get(f"{API}/categories", headers=headers), "revoked in use"
        )
    # A protected route refuses it at once in both gateways (the service checks it too).
    protected = await shop.client.get(f"{API}/warehouses", headers=headers)
    assert protected.status_code == 401


async def test_no_credentials_and_valid_credentials_are_served_as_before(shop: Shop) -> None:
    _, key = await _api_key(shop, ["catalog:write"])
    callers = {
        "anonymous": {},
        "customer": shop.customer,
        "staff": shop.staff,
        "api key": {"X-API-Key": key},
        "api key as bearer": {"Authorization": f"Bearer {key}"},
    }
    for path in _public_reads(shop):
        for name, headers in callers.items():
            response = await shop.client.get(path, headers=headers)
            assert response.status_code == 200, (name, path, response.text)
    # What the route does with the principal still happens: staff (by token or by a key with
    # catalog:write) see a draft, which anyone else is told does not exist.
    draft = f"{API}/products/{shop.draft_id}"
    assert (await shop.client.get(draft, headers=shop.staff)).status_code == 200
    assert (await shop.client.get(draft, headers={"X-API-Key": key})).status_code == 200
    assert (await shop.client.get(draft, headers=shop.customer)).status_code == 404
    assert (await shop.client.get(draft)).status_code == 404


async def test_a_cached_read_is_a_hit_for_anonymous_callers_and_a_401_for_bad_credentials(
    shop: Shop,
) -> None:
    get = shop.client.get
    for path in (f"{API}/categories", f"{API}/products/{shop.product_id}"):
        first = await get(path)
        second = await get(path)
        assert first.status_code == second.status_code == 200
        assert second.headers["x-cache"] == "HIT", path
        for headers in (
            {"Authorization": f"Bearer {shop.expired_token}"},
            {"Authorization": "Bearer garbage"},
            {"X-API-Key": "eco_unknown_c2VjcmV0"},
        ):
            _assert_refused(await get(path, headers=headers), f"cached {path} with {headers}")
            head = await shop.client.head(path, headers=headers)
            assert head.status_code == 401 and "x-cache" not in head.headers
        customer = await get(path, headers=shop.customer)
        assert customer.status_code == 200 and "x-cache" not in customer.headers
        assert customer.json() == first.json()
        assert (await get(path)).headers["x-cache"] == "HIT"


async def test_sign_in_and_refresh_are_left_to_identity_whatever_token_comes_along(
    shop: Shop,
) -> None:
    """A client that still attaches its expired access token to the refresh (or to a sign-in)
    gets new tokens: identity reads the refresh token and the password, not the header."""
    expired = {"Authorization": f"Bearer {shop.expired_token}"}
    login = await shop.client.post(
        f"{API}/auth/login", json=shop.accounts["customer"], headers=expired
    )
    assert login.status_code == 200, login.text
    refreshed = await shop.client.post(
        f"{API}/auth/refresh",
        json={"refresh_token": login.json()["refresh_token"]},
        headers=expired,
    )
    assert refreshed.status_code == 200, refreshed.text
    fresh = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (await shop.client.get(f"{API}/categories", headers=fresh)).status_code == 200
    # Identity still checks the endpoints that read the caller.
    whoami = await shop.client.get(f"{API}/auth/whoami", headers=expired)
    assert whoami.status_code == 401, whoami.text
