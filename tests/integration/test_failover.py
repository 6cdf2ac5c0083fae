"""Failover: two catalog processes behind the gateway (all real processes, PostgreSQL, Redis and
NATS); one is killed with SIGKILL in the middle of 2,000 GETs, and every GET still succeeds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ecosistema.distributed import plan_instances, process_specs, route_table
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services
from ecosistema.supervisor import Supervisor
from tests.conftest import (
    drop_test_schemas,
    make_settings,
    requires_nats,
    requires_postgres,
    requires_redis,
)
from tests.integration.test_distributed_support import (
    SECRET,
    child_environment,
    consecutive_free_ports,
    free_ports,
    metric_samples,
)

pytestmark = [requires_postgres, requires_redis, requires_nats]

TOTAL = 2000
CONCURRENCY = 16
KILL_AFTER = 500


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings("distributed", tmp_path, gateway_secret=SECRET)
    yield settings
    asyncio.run(drop_test_schemas(settings))


async def _seed_catalog(settings: Settings) -> list[str]:
    runtime = Runtime(settings, load_services(["catalog"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["catalog"]
        assert ctx.service.seed_demo is not None
        await ctx.service.seed_demo(ctx)
        await runtime.drain_outboxes()
    finally:
        await runtime.stop()
    return []


def test_killing_one_catalog_replica_during_2000_gets_fails_none(
    settings: Settings, tmp_path: Path
) -> None:
    asyncio.run(_seed_catalog(settings))
    base = consecutive_free_ports(2)
    (gateway_port,) = free_ports(1)
    instances = plan_instances({"catalog": 2}, base_port=base)
    table = route_table(instances, rate_limits={"enabled": False})
    table["services"]["catalog"]["health_interval_seconds"] = 0.5
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(table))
    specs = process_specs(
        instances,
        routes_file=routes,
        gateway_host="127.0.0.1",
        gateway_port=gateway_port,
        gateway_workers=2,
        env=child_environment(settings),
    )
    # No identity here: the gateway is ready when it routes to catalog.
    specs[-1] = dataclasses.replace(
        specs[-1], ready_url=f"http://127.0.0.1:{gateway_port}/api/v1/products?limit=1"
    )
    supervisor = Supervisor(specs)
    try:
        supervisor.start(ready_timeout=120)
        statuses, killed_at, settled = asyncio.run(_load(gateway_port, supervisor))
        samples = metric_samples(
            f"http://127.0.0.1:{gateway_port}/metrics", "ecosistema_gateway_upstream_requests_total"
        )
    finally:
        supervisor.stop()
    per_instance: Counter[str] = Counter()
    for labels, value in samples:
        per_instance[f"{labels['instance']} {labels['outcome']}"] += int(value)
    report = {
        "gets": TOTAL,
        "statuses": dict(statuses),
        "killed": f"catalog-1 after {killed_at} responses",
        "ok attempts per instance once the kill settled": settled,
        "upstream attempts": dict(sorted(per_instance.items())),
    }
    print("\nfailover:", json.dumps(report, indent=2))
    assert statuses == Counter({200: TOTAL})
    served = {k.split()[0]: v for k, v in per_instance.items() if k.endswith(" ok")}
    assert set(served) == {instances[0].url, instances[1].url}, per_instance
    # Once what was in flight at the kill has ended, the dead instance answers nothing more.
    assert served[instances[0].url] == settled.get(instances[0].url, 0), (settled, served)


def _ok_attempts(port: int) -> dict[str, int]:
    samples = metric_samples(
        f"http://127.0.0.1:{port}/metrics", "ecosistema_gateway_upstream_requests_total"
    )
    return {labels["instance"]: int(v) for labels, v in samples if labels["outcome"] == "ok"}


async def _load(port: int, supervisor: Supervisor) -> tuple[Counter[int], int, dict[str, int]]:
    statuses: Counter[int] = Counter()
    killed_at = -1
    settled: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as client:

        async def worker() -> None:
            nonlocal killed_at
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                # A distinct query each time (a declared filter), so no GET is a cache hit.
                response = await client.get("/api/v1/products", params={"limit": 5, "min_price": i})
                statuses[response.status_code] += 1
                if killed_at < 0 and sum(statuses.values()) >= KILL_AFTER:
                    killed_at = sum(statuses.values())
                    supervisor.kill("catalog-1", signal.SIGKILL)
                    # The others keep loading meanwhile: the requests in flight at the kill end,
                    # and every gateway worker hands its counts to /metrics (each 0.1 s).
                    await asyncio.sleep(0.5)
                    settled.update(await asyncio.to_thread(_ok_attempts, port))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, killed_at, settled
