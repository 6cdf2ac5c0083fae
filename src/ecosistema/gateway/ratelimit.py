"""Token-bucket rate limiting, in process memory or atomically in Redis for several gateways."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final, Protocol

import redis.asyncio as aioredis

from ecosistema.gateway.config import RateLimitRule

_monotonic: Final = time.monotonic  # compiled: a static reference, not two lookups


@dataclass(slots=True)  # not frozen: a frozen dataclass costs twice as much to build
class Decision:
    """Whether a request may pass, and what the RateLimit-* headers tell the client."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        """RateLimit-Limit/-Remaining/-Reset, plus Retry-After when refused."""
        out = [
            (b"RateLimit-Limit", str(self.limit).encode()),
            (b"RateLimit-Remaining", str(self.remaining).encode()),
            (b"RateLimit-Reset", str(math.ceil(self.reset)).encode()),
        ]
        if not self.allowed:
            out.append((b"Retry-After", str(max(1, math.ceil(self.retry_after))).encode()))
        return out

    def header_bytes(self) -> bytes:
        """``headers()`` as header lines, ready to send."""
        out = b"ratelimit-limit: %d\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n" % (
            self.limit,
            self.remaining,
            math.ceil(self.reset),
        )
        if not self.allowed:
            out += b"retry-after: %d\r\n" % max(1, math.ceil(self.retry_after))
        return out


def take_token(
    tokens: float | None, updated_at: float, now: float, rule: RateLimitRule, cost: float = 1.0
) -> tuple[Decision, float]:
    """One bucket step: refill since ``updated_at``, then take ``cost`` tokens if there are enough.

    ``tokens`` is None for a bucket never seen, which starts full. Returns the decision and the
    tokens left in the bucket.
    """
    level = float(rule.burst) if tokens is None else tokens
    level = min(float(rule.burst), level + max(0.0, now - updated_at) * rule.rate)
    allowed = level >= cost
    if allowed:
        level -= cost
    retry_after = 0.0 if allowed else (cost - level) / rule.rate
    decision = Decision(
        allowed=allowed,
        limit=rule.burst,
        remaining=math.floor(level),
        retry_after=retry_after,
        reset=(rule.burst - level) / rule.rate,
    )
    return decision, level


class RateLimiter(Protocol):
    async def hit(self, key: str, rule: RateLimitRule) -> Decision: ...
    async def close(self) -> None: ...


class MemoryRateLimiter:
    """Buckets in this process's memory: exact for one gateway process, per process otherwise."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, rule: RateLimitRule) -> Decision:
        """Take one token from ``key``'s bucket."""
        return self.take(key, rule)

    def take(self, key: str, rule: RateLimitRule) -> Decision:
        """``hit`` without waiting: memory needs none."""
        now = _monotonic()
        state = self._buckets.get(key)
        decision, level = take_token(
            state[0] if state else None, state[1] if state else now, now, rule
        )
        if state is None and len(self._buckets) >= self._max_keys:
            self._forget_full(now, rule)
        self._buckets[key] = (level, now)
        return decision

    def admit(self, key: str, rule: RateLimitRule) -> bytes | Decision:
        """``take`` for the hot path: the RateLimit-* header lines when a token was taken, the
        full ``Decision`` only when the request is refused (the same arithmetic as
        ``take_token``, without building a decision per admitted request)."""
        now = _monotonic()
        buckets = self._buckets
        state = buckets.get(key)
        burst = rule.burst
        rate = rule.rate
        level = float(burst) if state is None else state[0] + (now - state[1]) * rate
        if level > burst:
            level = float(burst)
        if level < 1.0 or (state is None and len(buckets) >= self._max_keys):
            decision = self.take(key, rule)
            return decision.header_bytes() if decision.allowed else decision
        level -= 1.0
        buckets[key] = (level, now)
        return b"ratelimit-limit: %d\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n" % (
            burst,
            math.floor(level),
            math.ceil((burst - level) / rate),
        )

    def _forget_full(self, now: float, rule: RateLimitRule) -> None:
        # A bucket that has refilled is the same as one never seen, so it can be dropped.
        rate, burst = rule.rate, rule.burst
        full = [k for k, (lvl, at) in self._buckets.items() if lvl + (now - at) * rate >= burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()


# The same arithmetic as ``take_token``, run atomically by Redis with Redis's own clock so that
# every gateway process sees one bucket. Returns allowed, remaining, retry-after and reset in ms.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local level = burst
if state[1] then
  level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
end
local allowed = 0
if level >= cost then
  allowed = 1
  level = level - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(level), 'at', tostring(now))
local ttl = math.ceil((burst - level) / rate * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
local retry = 0
if allowed == 0 then retry = math.ceil((cost - level) / rate * 1000) end
return {allowed, math.floor(level), retry, math.ceil((burst - level) / rate * 1000)}
"""


class RedisRateLimiter:
    """Buckets in Redis, updated by one Lua script, so limits hold across gateway processes."""

    def __init__(self, url: str, prefix: str = "eco:rl:") -> None:
        self._redis = aioredis.from_url(url)
        self._prefix = prefix
        self._script = self._redis.register_script(_TOKEN_BUCKET_LUA)

    async def hit(self, key: str, rule: RateLimitRule) -> Decision:
        """Take one token from ``key``'s shared bucket."""
        allowed, remaining, retry_ms, reset_ms = await self._script(
            keys=[self._prefix + key], args=[repr(float(rule.rate)), rule.burst, 1]
        )
        return Decision(
            allowed=bool(allowed),
            limit=rule.burst,
            remaining=int(remaining),
            retry_after=int(retry_ms) / 1000,
            reset=int(reset_ms) / 1000,
        )

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._redis.aclose()  # type: ignore[attr-defined]


def create_rate_limiter(url: str, prefix: str = "eco:rl:") -> RateLimiter:
    """``memory://`` or ``redis://host:port/db``."""
    if url.startswith("memory://"):
        return MemoryRateLimiter()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(url, prefix=prefix)
    raise ValueError(f"unsupported rate-limit backend {url!r}: use memory:// or redis://")
