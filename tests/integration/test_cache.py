"""One cache interface, the same behaviour in memory and in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from ecosistema.platform.cache import Cache, MemoryCache, RedisCache, create_cache
from tests.conftest import REDIS_URL, SERVICES_UP


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "redis" and not SERVICES_UP["redis"]:
        pytest.skip("Redis not reachable on 127.0.0.1:6379")
    backend: Cache = (
        MemoryCache()
        if request.param == "memory"
        else RedisCache(REDIS_URL, prefix=f"t{uuid.uuid4().hex}:")
    )
    yield backend
    await backend.close()


async def test_set_get_delete(cache: Cache) -> None:
    assert await cache.get("k") is None
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    await cache.delete("k")
    assert await cache.get("k") is None


async def test_values_expire_after_their_ttl(cache: Cache) -> None:
    await cache.set("short", b"v", ttl=0.05)
    async with asyncio.timeout(5):
        while await cache.get("short") is not None:
            await asyncio.sleep(0.02)


async def test_add_only_sets_a_missing_key(cache: Cache) -> None:
    assert await cache.add("once", b"1", ttl=10)
    assert not await cache.add("once", b"2", ttl=10)
    assert await cache.get("once") == b"1"


async def test_concurrent_increments_are_all_counted(cache: Cache) -> None:
    await asyncio.gather(*(cache.incr("n", ttl=60) for _ in range(100)))
    assert await cache.get("n") == b"100"
    remaining = await cache.ttl("n")
    assert remaining is not None and 0 < remaining <= 60


def test_unknown_cache_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="memory://, redis://, rediss:// or unix://"):
        create_cache("memcached://x")
