import pytest

from ecosistema.gateway.config import RateLimitRule
from ecosistema.gateway.ratelimit import (
    Decision,
    MemoryRateLimiter,
    create_rate_limiter,
    take_token,
)

RULE = RateLimitRule(rate=2.0, burst=3)


def test_new_bucket_starts_full_and_allows_a_burst() -> None:
    level: float | None = None
    allowed = []
    for _ in range(4):
        decision, level = take_token(level, 100.0, 100.0, RULE)
        allowed.append(decision.allowed)
    assert allowed == [True, True, True, False]


def test_refused_request_says_when_a_token_will_be_back() -> None:
    decision, _level = take_token(0.0, 100.0, 100.0, RULE)
    assert not decision.allowed
    assert decision.remaining == 0
    assert decision.retry_after == pytest.approx(0.5)
    assert decision.reset == pytest.approx(1.5)
    assert (b"Retry-After", b"1") in decision.headers()


def test_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    decision, level = take_token(0.0, 100.0, 101.0, RULE)
    assert decision.allowed and level == pytest.approx(1.0)
    decision, level = take_token(0.0, 100.0, 1000.0, RULE)
    assert decision.remaining == 2 and level == pytest.approx(2.0)


def test_headers_of_an_allowed_request_carry_no_retry_after() -> None:
    decision, _ = take_token(None, 0.0, 0.0, RULE)
    names = [name for name, _ in decision.headers()]
    assert names == [b"RateLimit-Limit", b"RateLimit-Remaining", b"RateLimit-Reset"]
    assert decision.limit == 3 and decision.remaining == 2


async def test_memory_limiter_keeps_one_bucket_per_key() -> None:
    limiter = MemoryRateLimiter()
    slow = RateLimitRule(rate=0.001, burst=2)
    results = [(await limiter.hit("a", slow)).allowed for _ in range(3)]
    assert results == [True, True, False]
    assert (await limiter.hit("b", slow)).allowed


async def test_memory_limiter_bounds_the_number_of_buckets() -> None:
    limiter = MemoryRateLimiter(max_keys=10)
    rule = RateLimitRule(rate=0.001, burst=5)
    for i in range(50):
        await limiter.hit(f"k{i}", rule)
    assert len(limiter._buckets) <= 10


def test_admit_gives_the_headers_take_would_and_the_decision_only_when_refused() -> None:
    admitting, taking = MemoryRateLimiter(), MemoryRateLimiter()
    answers = [admitting.admit("k", RULE) for _ in range(5)]
    decisions = [taking.take("k", RULE) for _ in range(5)]
    for answer, decision in zip(answers, decisions, strict=True):
        if decision.allowed:
            assert answer == decision.header_bytes()
        else:
            assert isinstance(answer, Decision) and not answer.allowed
            assert answer.header_bytes() == decision.header_bytes()
    assert [isinstance(a, bytes) for a in answers] == [True, True, True, False, False]


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        create_rate_limiter("mongodb://x")
