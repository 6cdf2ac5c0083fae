"""One cache interface, in memory (embedded) or in Redis (distributed)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import redis.asyncio as aioredis


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool: ...
    async def delete(self, *keys: str) -> None: ...
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int: ...
    async def ttl(self, key: str) -> float | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """A process-local cache with per-key expiry; the embedded shape's default."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._max = max_entries
        self._lock = asyncio.Lock()

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item

    def _evict(self) -> None:
        if len(self._data) < self._max:
            return
        now = time.monotonic()
        for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]
        while len(self._data) >= self._max:
            del self._data[next(iter(self._data))]

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return time.monotonic() + ttl if ttl else None

    async def get(self, key: str) -> bytes | None:
        item = self._live(key)
        return item[0] if item else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._evict()
        self._data[key] = (value, self._expiry(ttl))

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        async with self._lock:
            item = self._live(key)
            value = int(item[0]) + amount if item else amount
            expiry = item[1] if item else self._expiry(ttl)
            self._data[key] = (str(value).encode(), expiry)
            return value

    async def ttl(self, key: str) -> float | None:
        item = self._live(key)
        if item is None or item[1] is None:
            return None
        return max(0.0, item[1] - time.monotonic())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """The same interface over Redis, shared by every process of the distributed shape."""

    def __init__(self, url: str, prefix: str = "eco:") -> None:
        self._redis = aioredis.from_url(url)
        self._prefix = prefix

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._k(key))
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._redis.set(self._k(key), value, px=int(ttl * 1000) if ttl else None)

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        ok = await self._redis.set(
            self._k(key), value, px=int(ttl * 1000) if ttl else None, nx=True
        )
        return bool(ok)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._redis.delete(*(self._k(k) for k in keys))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self._k(key), amount)
            if ttl:
                # NX: the window starts with the first increment and is not extended by later ones.
                pipe.pexpire(self._k(key), int(ttl * 1000), nx=True)
            result = await pipe.execute()
        return int(result[0])

    async def ttl(self, key: str) -> float | None:
        ms = await self._redis.pttl(self._k(key))
        return ms / 1000 if ms and ms > 0 else None

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


# The URLs ``create_cache`` takes, by prefix; settings are checked against these at start.
CACHE_URL_PREFIXES = ("memory://", "redis://", "rediss://", "unix://")
CACHE_URL_RULE = "must start with memory://, redis://, rediss:// or unix://"


def create_cache(url: str, prefix: str = "eco:") -> Cache:
    """Pick the backend by URL: ``memory://`` or ``redis://host:port/db``."""
    if url.startswith("memory://"):
        return MemoryCache()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(url, prefix=prefix)
    # The URL is not repeated: it may hold a password.
    raise ValueError(f"ECOSISTEMA_CACHE_URL {CACHE_URL_RULE}")
