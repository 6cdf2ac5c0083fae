"""``ecosistema up`` as a client meets it: real HTTP to the gateway, which serves every route
from the embedded app in process, on both shapes. Login, a cached product read purged by the
product's own event, the stricter rate limit on auth endpoints, and problem+json at the edge."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.gateway.embedded import EmbeddedGateway, embedded_route_table, serve_embedded
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.services import SERVICE_NAMES, load_services
from tests.conftest import drop_test_schemas
from tests.default_model import DefaultModelCache
from tests.integration.test_identity_support import fast_settings

API = "/api/v1"


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path, gateway_auth_burst=4, gateway_auth_rate=0.01)


@pytest.fixture
async def edge(
    settings: Settings, default_model_cache: DefaultModelCache
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    default_model_cache.seed(settings)
    services = load_services()
    app = create_app(services, settings)
    running: EmbeddedGateway = await serve_embedded(
        settings, port=0, app=app, services=services, access_log=io.StringIO()
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{running.port}", timeout=30
        ) as client:
            yield app, client
    finally:
        await running.close(2)
        await drop_test_schemas(settings)


async def login(app: Any, client: httpx.AsyncClient, role: str) -> dict[str, str]:
    from ecosistema.identity.service import seed_demo

    accounts = await seed_demo(app.state.runtime.contexts["identity"])
    creds = accounts[role]
    response = await client.post(
        f"{API}/auth/login", json={"email": creds["email"], "password": creds["password"]}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_the_route_table_covers_every_registered_service() -> None:
    from ecosistema.platform.config import Settings as Fresh

    table = embedded_route_table(load_services(), Fresh())
    served = {route["service"] for route in table["routes"]}
    assert set(SERVICE_NAMES) <= served
    prefixes = {route["prefix"]: route for route in table["routes"]}
    assert prefixes[f"{API}/auth"]["rate_limit"] == {"rate": 1.0, "burst": 10}
    assert prefixes[f"{API}/products"]["cache"]["revalidate_by_events"] is True
    assert "/.well-known/jwks.json" in prefixes


async def test_login_through_the_gateway_then_an_authenticated_call(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = edge
    headers = await login(app, client, "customer")
    me = await client.get(f"{API}/users/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["email"].startswith("customer")
    assert len(me.headers["x-request-id"]) == 32
    assert me.headers["x-content-type-options"] == "nosniff"
    assert me.headers["x-frame-options"] == "DENY"
    assert "ratelimit-remaining" in me.headers
    anonymous = await client.get(f"{API}/users/me")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


async def test_a_product_read_is_a_hit_the_second_time_and_its_update_purges_it(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = edge
    staff = await login(app, client, "staff")
    created = await client.post(
        f"{API}/products",
        json={
            "name": "Gateway Lamp",
            "status": "active",
            "variants": [
                {"sku": "LAMP-1", "options": {}, "prices": [{"currency": "EUR", "amount": 4900}]}
            ],
        },
        headers=staff,
    )
    assert created.status_code == 201, created.text
    product_id = created.json()["id"]
    url = f"{API}/products/{product_id}"
    first = await client.get(url)
    second = await client.get(url)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    revalidated = await client.get(url, headers={"If-None-Match": second.headers["etag"]})
    assert revalidated.status_code == 304
    # Staff reads are never served from, nor stored in, the shared cache.
    assert "x-cache" not in (await client.get(url, headers=staff)).headers

    renamed = await client.patch(url, json={"name": "Gateway Lamp II"}, headers=staff)
    assert renamed.status_code == 200, renamed.text
    # The catalog's ProductUpdated event, relayed from its outbox over the shape's bus,
    # purges the entry; until then the old copy may still be served.
    deadline = time.monotonic() + 15
    while True:
        current = await client.get(url)
        if current.json()["name"] == "Gateway Lamp II":
            break
        assert time.monotonic() < deadline, "the update never reached the cache"
        await asyncio.sleep(0.05)
    assert current.headers["x-cache"] == "MISS"
    assert (await client.get(url)).headers["x-cache"] == "HIT"


async def _eventually_served(
    client: httpx.AsyncClient, url: str, shows: Any, what: str
) -> httpx.Response:
    """The anonymous read of ``url`` once ``shows(response)`` holds; catalog's events purge
    the shared cache, and until they arrive the old copy may still be served."""
    deadline = time.monotonic() + 15
    while True:
        current = await client.get(url)
        if shows(current):
            return current
        assert time.monotonic() < deadline, f"{what} never reached the cache"
        await asyncio.sleep(0.05)


async def test_category_writes_purge_the_cached_categories_and_searches(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = edge
    staff = await login(app, client, "staff")
    listed = f"{API}/categories"
    assert (await client.get(listed)).status_code == 200
    assert (await client.get(listed)).headers["x-cache"] == "HIT"

    created = await client.post(listed, json={"name": "Quuxology"}, headers=staff)
    assert created.status_code == 201, created.text
    category = created.json()
    await _eventually_served(
        client,
        listed,
        lambda r: any(c["id"] == category["id"] for c in r.json()),
        "the new category",
    )
    product = await client.post(
        f"{API}/products",
        json={
            "name": "Cached Lamp",
            "status": "active",
            "category_id": category["id"],
            "variants": [
                {"sku": "QX-1", "options": {}, "prices": [{"currency": "EUR", "amount": 900}]}
            ],
        },
        headers=staff,
    )
    assert product.status_code == 201, product.text
    one = f"{listed}/{category['id']}"
    search = f"{API}/products?q=quuxology"
    await _eventually_served(client, search, lambda r: len(r.json()["items"]) == 1, "the product")
    assert (await client.get(one)).json()["name"] == "Quuxology"
    for url in (one, search):
        assert (await client.get(url)).headers["x-cache"] == "HIT"

    renamed = await client.patch(one, json={"name": "Frobnicate"}, headers=staff)
    assert renamed.status_code == 200, renamed.text
    await _eventually_served(client, one, lambda r: r.json()["name"] == "Frobnicate", "the name")
    await _eventually_served(client, search, lambda r: r.json()["items"] == [], "the rename")

    empty = await client.post(listed, json={"name": "Soon Gone"}, headers=staff)
    gone = f"{listed}/{empty.json()['id']}"
    await _eventually_served(client, gone, lambda r: r.status_code == 200, "the other category")
    assert (await client.get(gone)).headers["x-cache"] == "HIT"
    assert (await client.delete(gone, headers=staff)).status_code == 204
    await _eventually_served(client, gone, lambda r: r.status_code == 404, "the deletion")


async def test_auth_endpoints_answer_429_past_their_burst(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = edge
    statuses = []
    for attempt in range(6):
        # A different account each time, so identity's own per-account throttle stays out of it.
        response = await client.post(
            f"{API}/auth/login",
            json={"email": f"nobody{attempt}@example.com", "password": "wrong pass"},
        )
        statuses.append(response.status_code)
    assert statuses[:4] == [401] * 4, statuses
    assert statuses[4:] == [429, 429]
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-limit"] == "4"
    assert response.headers["ratelimit-remaining"] == "0"
    assert response.json()["status"] == 429


async def test_unknown_paths_and_methods_are_problem_json_at_the_edge(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = edge
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"].endswith("/not-found")
    wrong = await client.delete("/healthz")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD"
    assert wrong.json()["status"] == 405
    unknown_product = await client.get(f"{API}/products/does-not-exist")
    assert unknown_product.status_code == 404
    assert unknown_product.headers["content-type"] == "application/problem+json"
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Ecosistema"


async def test_metrics_expose_the_gateways_and_the_apps_series_in_one_exposition(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = edge
    assert (await client.get(f"{API}/products")).status_code == 200

    scraped = await client.get("/metrics")
    head = await client.head("/metrics")

    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    # The gateway's own series...
    assert 'ecosistema_gateway_requests_total{method="GET",route="/api/v1/products"' in text
    # ...and the app's, which only the app in process knows: its request counts by route
    # template, the outbox backlog of every service and the consumer lag.
    assert 'ecosistema_http_requests_total{method="GET",route="/api/v1/products"' in text
    assert 'ecosistema_outbox_backlog{service="catalog"}' in text
    assert "# TYPE ecosistema_consumer_lag gauge" in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), "a metric family is exposed twice"
    assert head.status_code == 200
    assert head.content == b""


async def test_identitys_own_login_throttle_passes_without_the_gateways_limit_headers(
    shape: str, tmp_path: Path, default_model_cache: DefaultModelCache
) -> None:
    # The gateway's auth budget is generous here; identity locks the account after 2 failures.
    settings = fast_settings(
        shape,
        tmp_path,
        gateway_auth_burst=10,
        lockout_threshold=2,
        login_delay_after_failures=100,
    )
    default_model_cache.seed(settings)
    running = await serve_embedded(settings, port=0, access_log=io.StringIO())
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{running.port}", timeout=30
        ) as client:
            attempts = [
                await client.post(
                    f"{API}/auth/login",
                    json={"email": "someone@example.com", "password": "wrong pass"},
                )
                for _ in range(3)
            ]
    finally:
        await running.close(2)
        await drop_test_schemas(settings)
    assert [r.status_code for r in attempts] == [401, 401, 429], [r.text for r in attempts]
    assert attempts[0].headers["ratelimit-limit"] == "10"
    locked = attempts[2]
    assert locked.headers["content-type"] == "application/problem+json"
    # Identity's Retry-After (its lockout), and no gateway quota that would contradict it.
    assert int(locked.headers["retry-after"]) > 60
    assert not any(name.startswith("ratelimit-") for name in locked.headers)


async def test_docs_and_their_assets_come_through_the_gateway_from_the_app(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = edge
    page = await client.get("/docs")
    css = await client.get("/docs/static/swagger-ui.css")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


async def test_probes_are_never_rate_limited_and_tolerate_query_strings(
    shape: str, tmp_path: Path, default_model_cache: DefaultModelCache
) -> None:
    # Every anonymous caller gets a burst of 3: an API route runs out, the probes never do.
    settings = fast_settings(
        shape, tmp_path, gateway_rate_limits={"anonymous": {"rate": 0.01, "burst": 3}}
    )
    table = embedded_route_table(load_services(), settings)
    probes = {r["prefix"]: r for r in table["routes"] if r["prefix"] in ("/healthz", "/readyz")}
    assert all(route["rate_limited"] is False for route in probes.values())
    default_model_cache.seed(settings)
    services = load_services()
    app = create_app(services, settings)
    running = await serve_embedded(
        settings, port=0, app=app, services=services, access_log=io.StringIO()
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{running.port}", timeout=30
        ) as client:
            api = [(await client.get(f"{API}/categories")).status_code for _ in range(5)]
            assert api[:3] == [200] * 3 and api[3:] == [429, 429], api
            for _ in range(10):
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 200
            # A monitor's cache-buster is not an API parameter: probes answer as usual.
            assert (await client.get("/healthz?probe=1")).status_code == 200
            assert (await client.get("/readyz?verbose=1")).status_code == 200
    finally:
        await running.close(2)
        await drop_test_schemas(settings)


async def test_chunked_bodies_past_the_limit_are_413_for_json_and_for_an_import(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = edge
    staff = await login(app, client, "staff")
    limit = app.state.runtime.settings.max_body_bytes

    def chunked(first: bytes, filler: bytes) -> Any:
        async def parts() -> AsyncIterator[bytes]:
            yield first
            sent = len(first)
            while sent <= limit:
                yield filler
                sent += len(filler)

        return parts()

    big_json = await client.post(
        f"{API}/carts",
        content=chunked(b'{"currency": "EUR", "note": "', b"x" * 65536),
        headers={"content-type": "application/json"},
    )
    rows = "".join(f"b-{i},B {i}\n" for i in range(4000)).encode()
    big_csv = await client.post(
        f"{API}/products/import",
        content=chunked(b"slug,name\n", rows),
        headers={**staff, "content-type": "text/csv"},
    )
    for response in (big_json, big_csv):
        assert response.status_code == 413, response.text
        assert response.json()["type"].endswith("/payload-too-large")
    listed = await client.get(f"{API}/products", params={"q": "B 1"}, headers=staff)
    assert listed.status_code == 200
    assert not [p for p in listed.json()["items"] if p["slug"].startswith("b-")]


async def test_a_sale_starting_shows_at_once_through_the_gateways_cache(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = edge
    staff = await login(app, client, "staff")
    starts = time.time() + 3
    sale_start = datetime.fromtimestamp(starts, UTC).isoformat()
    created = await client.post(
        f"{API}/products",
        json={
            "name": "Sale Lamp",
            "status": "active",
            "variants": [
                {
                    "sku": "SALE-LAMP-1",
                    "options": {},
                    "prices": [{"currency": "EUR", "amount": 4900}],
                    "sale_prices": [{"currency": "EUR", "amount": 2900, "starts_at": sale_start}],
                }
            ],
        },
        headers=staff,
    )
    assert created.status_code == 201, created.text
    url = f"{API}/products/{created.json()['id']}"

    def price(response: httpx.Response) -> int:
        variant = response.json()["variants"][0]
        amount: int = next(p["amount"] for p in variant["current_prices"] if p["currency"] == "EUR")
        return amount

    before = [await client.get(url) for _ in range(2)]
    assert [price(r) for r in before] == [4900, 4900]
    assert before[1].headers["x-cache"] == "HIT"  # kept, but only until the sale starts
    await asyncio.sleep(max(0.0, starts - time.time()) + 0.2)
    after = await client.get(url)
    assert price(after) == 2900, after.json()
