"""The response cache over a real upstream process: hits never reach it, what may not be stored
is not, ETags answer 304, and events published on a real bus purge what they name in every
worker, through broadcast subscriptions that leave nothing on the broker."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.server import GatewayServer
from ecosistema.platform.events import EventEnvelope, create_bus
from ecosistema.platform.events.bus import EventBus, MemoryBus
from tests.conftest import NATS_URL, REDIS_URL, requires_nats, requires_redis, unique
from tests.integration.test_gateway_upstream import start_upstream, stop


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    proc, url = start_upstream("cache")
    yield url
    stop(proc)


def table(url: str, **cache: Any) -> dict[str, Any]:
    return {
        "services": {"shop": {"instances": [url], "health_path": None}},
        "routes": [
            {
                "prefix": "/cacheable",
                "service": "shop",
                "public": True,
                "cache": {"ttl_seconds": 60, "vary": ["accept-language"], **cache},
            },
            {"prefix": "/admin", "service": "shop", "public": True},
        ],
        "rate_limits": {"enabled": False},
        "access_log": False,
    }


async def start(
    url: str, bus: EventBus | None = None, cache: dict[str, Any] | None = None, **extra: Any
) -> GatewayServer:
    config_table = table(url, **(cache or {}))
    config_table.update(extra)
    return await serve(gateway_config(config_table), port=0, access_log=io.StringIO(), bus=bus)


@pytest.fixture
async def gateway(upstream: str) -> AsyncIterator[GatewayServer]:
    server = await start(upstream)
    yield server
    await server.close(1)


def client(server: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10)


async def upstream_count(c: httpx.AsyncClient) -> int:
    count: int = (await c.get("/admin/cacheable-count")).json()["count"]
    return count


async def wait_until_gone(server: GatewayServer, target: str, timeout: float = 10.0) -> None:
    cache = server.gateway.cache
    assert cache is not None
    deadline = time.monotonic() + timeout
    while target.encode() in cache:
        if time.monotonic() > deadline:
            raise AssertionError(f"{target} was not purged within {timeout} s")
        await asyncio.sleep(0.02)


async def test_a_second_anonymous_get_is_a_hit_that_never_reaches_the_upstream(
    gateway: GatewayServer,
) -> None:
    async with client(gateway) as c:
        before = await upstream_count(c)
        first = await c.get("/cacheable/h1")
        second = await c.get("/cacheable/h1")
        head = await c.head("/cacheable/h1")
        after = await upstream_count(c)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert head.headers["x-cache"] == "HIT" and head.content == b""
    assert second.json() == first.json()
    assert int(second.headers["age"]) >= 0
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert second.headers["x-content-type-options"] == "nosniff"
    assert after - before == 1


KEY = "eco_cachekey_s3cret"


async def _only_key(key: str) -> bool:
    return key == KEY


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer"},
        {"Authorization": "ApiKey eco_unknown_s3cret"},
        {"Authorization": "Bearer eco_unknown_s3cret"},
        {"X-API-Key": "eco_unknown_s3cret"},
        {"X-API-Key": "not-a-key"},
        {"X-API-Key": KEY, "Authorization": "Bearer eco_other_s3cret"},
    ],
)
async def test_bad_credentials_on_a_cached_route_are_a_401_not_a_hit(
    upstream: str, headers: dict[str, str]
) -> None:
    server = await serve(
        gateway_config(table(upstream)),
        port=0,
        access_log=io.StringIO(),
        api_key_check=_only_key,
    )
    try:
        async with client(server) as c:
            stored = await c.get("/cacheable/c1")
            hit = await c.get("/cacheable/c1")
            before = await upstream_count(c)
            refused = await c.get("/cacheable/c1", headers=headers)
            refused_head = await c.head("/cacheable/c1", headers=headers)
            after = await upstream_count(c)
    finally:
        await server.close(1)
    assert stored.headers["x-cache"] == "MISS" and hit.headers["x-cache"] == "HIT"
    assert refused.status_code == 401 and refused_head.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "x-cache" not in refused.headers
    assert refused.json()["type"].endswith("/unauthorized")
    assert after == before


async def test_valid_credentials_bypass_the_cache(upstream: str) -> None:
    server = await serve(
        gateway_config(table(upstream)),
        port=0,
        access_log=io.StringIO(),
        api_key_check=_only_key,
    )
    try:
        async with client(server) as c:
            await c.get("/cacheable/c2")
            before = await upstream_count(c)
            by_header = await c.get("/cacheable/c2", headers={"X-API-Key": KEY})
            by_bearer = await c.get("/cacheable/c2", headers={"Authorization": f"Bearer {KEY}"})
            after = await upstream_count(c)
    finally:
        await server.close(1)
    assert by_header.status_code == 200 and by_bearer.status_code == 200
    assert "x-cache" not in by_header.headers and "x-cache" not in by_bearer.headers
    assert after - before == 2


@pytest.mark.parametrize(
    "query",
    [
        "cc=no-store",
        "cc=private,%20max-age=60",
        "cc=public,%20max-age=0",
        "cc=public,%20s-maxage=0,%20max-age=60",
        "cc=public,%20no-cache",
        "cookie=1",
        "vary=cookie",
        "status=203",
    ],
)
async def test_responses_that_may_not_be_shared_are_not_stored(
    gateway: GatewayServer, query: str
) -> None:
    async with client(gateway) as c:
        before = await upstream_count(c)
        await c.get(f"/cacheable/n1?{query}")
        second = await c.get(f"/cacheable/n1?{query}")
        after = await upstream_count(c)
    assert second.headers["x-cache"] == "MISS"
    assert after - before == 2


async def test_no_cache_is_stored_when_events_revalidate(upstream: str) -> None:
    server = await start(upstream, cache={"revalidate_by_events": True})
    try:
        async with client(server) as c:
            await c.get("/cacheable/e1?cc=public,%20no-cache")
            second = await c.get("/cacheable/e1?cc=public,%20no-cache")
        assert second.headers["x-cache"] == "HIT"
        assert second.headers["cache-control"] == "public, no-cache"
    finally:
        await server.close(1)


async def test_if_none_match_on_a_stored_etag_is_a_304_from_the_cache(
    gateway: GatewayServer,
) -> None:
    async with client(gateway) as c:
        await c.get('/cacheable/t1?etag="v1"')
        before = await upstream_count(c)
        fresh = await c.get('/cacheable/t1?etag="v1"', headers={"If-None-Match": 'W/"v1"'})
        other = await c.get('/cacheable/t1?etag="v1"', headers={"If-None-Match": '"v0"'})
        after = await upstream_count(c)
    assert fresh.status_code == 304 and fresh.content == b""
    assert fresh.headers["etag"] == '"v1"' and fresh.headers["x-cache"] == "HIT"
    assert other.status_code == 200 and other.headers["x-cache"] == "HIT"
    assert after == before


async def test_configured_vary_headers_select_separate_copies(gateway: GatewayServer) -> None:
    async with client(gateway) as c:
        es = await c.get("/cacheable/v1?vary=accept-language", headers={"Accept-Language": "es"})
        en = await c.get("/cacheable/v1?vary=accept-language", headers={"Accept-Language": "en"})
        es_again = await c.get(
            "/cacheable/v1?vary=accept-language", headers={"Accept-Language": "es"}
        )
    assert (es.headers["x-cache"], en.headers["x-cache"]) == ("MISS", "MISS")
    assert es_again.headers["x-cache"] == "HIT"
    assert es_again.json()["n"] == es.json()["n"]


async def test_entries_expire_with_the_upstreams_max_age(gateway: GatewayServer) -> None:
    cache = gateway.gateway.cache
    assert cache is not None
    async with client(gateway) as c:
        await c.get("/cacheable/x1?cc=public,%20max-age=1")
        assert (await c.get("/cacheable/x1?cc=public,%20max-age=1")).headers["x-cache"] == "HIT"
        entry = cache.get(b"/cacheable/x1?cc=public,%20max-age=1", time.monotonic())
        assert entry is not None
        assert entry.expires_at - entry.stored_at == 1
        entry.expires_at = time.monotonic() - 0.001  # as it will be one second from now
        again = await c.get("/cacheable/x1?cc=public,%20max-age=1")
    assert again.headers["x-cache"] == "MISS"


async def test_an_event_on_the_memory_bus_purges_the_resource_and_the_lists(
    upstream: str,
) -> None:
    bus = MemoryBus()
    server = await start(upstream, bus=bus)
    try:
        async with client(server) as c:
            for target in ("/cacheable/p1", "/cacheable/p2", "/cacheable"):
                await c.get(target)
                assert (await c.get(target)).headers["x-cache"] == "HIT"
            await bus.publish(
                EventEnvelope(type="ProductUpdated", source="catalog", payload={"product_id": "p1"})
            )
            p1 = await c.get("/cacheable/p1")
            listing = await c.get("/cacheable")
            p2 = await c.get("/cacheable/p2")
        assert p1.headers["x-cache"] == "MISS"
        assert listing.headers["x-cache"] == "MISS"
        assert p2.headers["x-cache"] == "HIT"
    finally:
        await server.close(1)


async def test_stock_changed_purges_the_products_carrying_the_sku(upstream: str) -> None:
    bus = MemoryBus()
    server = await start(upstream, bus=bus)
    try:
        async with client(server) as c:
            await c.get("/cacheable/s1")
            await bus.publish(
                EventEnvelope(type="StockChanged", source="catalog", payload={"sku": "SKU-s1"})
            )
            assert (await c.get("/cacheable/s1")).headers["x-cache"] == "MISS"
    finally:
        await server.close(1)


async def _purge_through(upstream: str, bus_url: str, stream: str) -> None:
    """Two gateways (two workers, each with its own cache) on one broker: an event purges both,
    and once they close the broker keeps no consumer or group of theirs."""
    cache = {"bus_url": bus_url, "bus_stream": stream, "max_bytes": 1 << 20}
    publisher = create_bus(bus_url, stream=stream)
    await publisher.start()
    # An event from before the workers started names nothing they hold and is not replayed.
    await publisher.publish(
        EventEnvelope(type="ProductUpdated", source="catalog", payload={"product_id": "old"})
    )
    workers = [await start(upstream, response_cache=cache) for _ in range(2)]
    try:
        for server in workers:
            async with client(server) as c:
                await c.get("/cacheable/d1")
                assert (await c.get("/cacheable/d1")).headers["x-cache"] == "HIT"
        await publisher.publish(
            EventEnvelope(
                type="ProductArchived",
                source="catalog",
                payload={"product_id": "other", "slug": "slug-d1"},
            )
        )
        for server in workers:
            await wait_until_gone(server, "/cacheable/d1")
            async with client(server) as c:
                assert (await c.get("/cacheable/d1")).headers["x-cache"] == "MISS"
    finally:
        for server in workers:
            await server.close(1)
    assert await consumers_kept(publisher) == []
    await publisher.stop()


async def consumers_kept(bus: EventBus) -> list[str]:
    """The durable or ephemeral consumers (NATS) or consumer groups (Redis) on the stream."""
    from ecosistema.platform.events.nats_bus import NatsBus
    from ecosistema.platform.events.redis_bus import RedisStreamsBus

    if isinstance(bus, NatsBus):
        return [str(info.name) for info in await bus.jetstream.consumers_info(bus.stream)]
    assert isinstance(bus, RedisStreamsBus)
    groups = await bus.redis.xinfo_groups(bus.key)  # type: ignore[no-untyped-call]
    return [str(g["name"]) for g in groups]


@requires_nats
async def test_an_event_on_nats_purges_the_cache(upstream: str) -> None:
    from ecosistema.platform.events.nats_bus import NatsBus

    stream = f"eco_{unique()}"
    try:
        await _purge_through(upstream, NATS_URL, stream)
    finally:
        bus = NatsBus(NATS_URL, stream=stream)
        await bus.start()
        await bus.delete_stream()
        await bus.stop()


@requires_redis
async def test_an_event_on_redis_streams_purges_the_cache(upstream: str) -> None:
    import redis.asyncio as aioredis

    stream = f"eco_{unique()}"
    try:
        await _purge_through(upstream, REDIS_URL, stream)
    finally:
        r = aioredis.from_url(REDIS_URL)
        keys = [k async for k in r.scan_iter(f"*{stream}*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
