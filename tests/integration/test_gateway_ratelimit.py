"""Rate limits at the edge: 429 with headers, and one shared budget across gateway processes."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.gateway import gateway_config, serve
from tests.conftest import REDIS_URL, requires_redis
from tests.integration.test_gateway_upstream import start_gateway, start_upstream, stop


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    proc, url = start_upstream("a")
    yield url
    stop(proc)


def table(url: str, **limits: Any) -> dict[str, Any]:
    return {
        "services": {"svc": {"instances": [url], "health_path": None}},
        "routes": [
            {
                "prefix": "/api/v1/auth/",
                "service": "svc",
                "public": True,
                "rate_limit": {"rate": 0.001, "burst": 3},
            },
            {"prefix": "/api/", "service": "svc", "public": True},
        ],
        "rate_limits": {"anonymous": {"rate": 0.001, "burst": 5}, **limits},
        "access_log": False,
    }


async def test_exhausted_bucket_is_a_429_problem_with_rate_limit_headers(upstream: str) -> None:
    server = await serve(gateway_config(table(upstream)), port=0, access_log=io.StringIO())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            auth = [await c.post("/api/v1/auth/login", content=b"{}") for _ in range(4)]
            other = [await c.get("/api/things") for _ in range(6)]
    finally:
        await server.close(1)
    assert [r.status_code for r in auth] == [200, 200, 200, 429]
    assert auth[0].headers["ratelimit-limit"] == "3"
    assert auth[0].headers["ratelimit-remaining"] == "2"
    refused = auth[3]
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1
    assert refused.json()["type"].endswith("/too-many-requests")
    # Each route has its own bucket: the login limit did not spend the general one.
    assert [r.status_code for r in other] == [200] * 5 + [429]


@requires_redis
@pytest.mark.slow
def test_two_gateway_processes_share_one_budget_in_redis(upstream: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:rl:"
    routes = table(upstream, backend_url=REDIS_URL, key_prefix=prefix)
    first, first_port = start_gateway(routes, tmp_path)
    second, second_port = start_gateway(routes, tmp_path)
    try:
        statuses: Counter[int] = Counter()
        per_gateway: Counter[int] = Counter()
        for i in range(20):
            port = first_port if i % 2 == 0 else second_port
            response = httpx.get(f"http://127.0.0.1:{port}/api/things", timeout=10)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                per_gateway[port] += 1
    finally:
        stop(first)
        stop(second)
    print(f"shared budget of 5: {dict(statuses)}, admitted per gateway {dict(per_gateway)}")
    assert statuses == Counter({200: 5, 429: 15})
    assert len(per_gateway) == 2


async def test_an_upstreams_own_429_keeps_its_retry_after_without_the_gateways_limits(
    upstream: str,
) -> None:
    routes = table(upstream)
    routes["routes"].insert(0, {"prefix": "/status/", "service": "svc", "public": True})
    server = await serve(gateway_config(routes), port=0, access_log=io.StringIO())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            admitted = await c.get("/status/200")
            throttled = await c.get("/status/429", params={"retry_after": "42"})
    finally:
        await server.close(1)
    assert admitted.headers["ratelimit-remaining"] == "4"
    assert throttled.status_code == 429
    assert throttled.headers["x-upstream"] == "a"
    assert throttled.headers["retry-after"] == "42"
    # The gateway's budget (3 of 5 left) says nothing about the service's own limit.
    assert not any(name.startswith("ratelimit-") for name in throttled.headers)
