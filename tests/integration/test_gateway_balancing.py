"""Load balancing, health checks, breaking, retries, timeouts and failover over real upstreams."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecosistema.gateway import gateway_config, serve
from ecosistema.gateway.balancer import BreakerState
from ecosistema.gateway.server import GatewayServer
from tests.integration.test_gateway_upstream import (
    free_port,
    start_gateway,
    start_upstream,
    stop,
)


@pytest.fixture(scope="module")
def pair() -> Iterator[list[str]]:
    procs = [start_upstream("a"), start_upstream("b")]
    yield [url for _, url in procs]
    for proc, _ in procs:
        stop(proc)


def table(instances: list[str], **service: Any) -> dict[str, Any]:
    route = service.pop("route", {})
    return {
        "services": {"svc": {"instances": instances, "health_path": None, **service}},
        "routes": [{"prefix": "/", "service": "svc", "public": True, **route}],
        "rate_limits": {"enabled": False},
        "metrics_path": None,
    }


async def start(config: dict[str, Any]) -> GatewayServer:
    return await serve(gateway_config(config), port=0, access_log=io.StringIO())


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Any]:
    started: list[GatewayServer] = []

    async def make(config: dict[str, Any]) -> GatewayServer:
        server = await start(config)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.close(1)


def client(server: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)


async def test_round_robin_alternates_between_instances(
    pair: list[str], gateway_factory: Any
) -> None:
    server = await gateway_factory(table(pair))
    async with client(server) as c:
        seen = Counter([(await c.get("/echo")).json()["instance"] for _ in range(10)])
    assert seen == Counter({"a": 5, "b": 5})


async def test_least_outstanding_avoids_the_busy_instance(
    pair: list[str], gateway_factory: Any
) -> None:
    server = await gateway_factory(table(pair, balancer="least_outstanding"))
    busy = server.gateway.balancers["svc"].instances
    async with client(server) as c:
        slow = asyncio.create_task(c.get("/slow?seconds=2"))
        deadline = time.monotonic() + 10
        while not any(i.outstanding for i in busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        held = next(i for i in busy if i.outstanding)
        fast = Counter([(await c.get("/echo")).json()["instance"] for _ in range(6)])
        slow_instance = (await slow).json()["instance"]
    assert len(fast) == 1 and slow_instance not in fast
    assert held.url in pair


async def test_unready_instance_is_taken_out_by_active_health_checks(
    gateway_factory: Any,
) -> None:
    (proc_a, a), (proc_b, b) = start_upstream("a"), start_upstream("b")
    try:
        server = await gateway_factory(
            table([a, b], health_path="/readyz", health_interval_seconds=0.1, unhealthy_threshold=1)
        )
        httpx.post(f"{b}/admin/unready")
        instance_b = server.gateway.balancers["svc"].instances[1]
        deadline = time.monotonic() + 10
        while instance_b.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with client(server) as c:
            seen = Counter([(await c.get("/echo")).json()["instance"] for _ in range(6)])
    finally:
        stop(proc_a)
        stop(proc_b)
    assert not instance_b.healthy
    assert seen == Counter({"a": 6})


async def test_upstream_down_is_a_502_and_all_broken_is_a_503(gateway_factory: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = await gateway_factory(table([dead], breaker_failures=2, route={"retries": 0}))
    async with client(server) as c:
        first = await c.get("/echo")
        second = await c.get("/echo")
        third = await c.get("/echo")
    assert (first.status_code, second.status_code) == (502, 502)
    assert first.headers["content-type"] == "application/problem+json"
    assert third.status_code == 503 and "retry-after" in third.headers
    assert third.json()["type"].endswith("/service-unavailable")


async def test_breaker_opens_then_a_half_open_probe_closes_it(gateway_factory: Any) -> None:
    port = free_port()
    server = await gateway_factory(
        table(
            [f"http://127.0.0.1:{port}"],
            breaker_failures=3,
            breaker_open_seconds=30,
            route={"retries": 0},
        )
    )
    breaker = server.gateway.balancers["svc"].instances[0].breaker
    async with client(server) as c:
        statuses = [(await c.get("/echo")).status_code for _ in range(4)]
        assert statuses == [502, 502, 502, 503]
        assert breaker.state is BreakerState.OPEN
        # Waiting the breaker's 30 s out is replaced by moving its clock back.
        breaker.opened_at -= 31
        failed_probe = await c.get("/echo")
        assert failed_probe.status_code == 502 and breaker.state is BreakerState.OPEN
        breaker.opened_at -= 31
        proc, _ = start_upstream("revived", port=port)
        try:
            probe = await c.get("/echo")
            after = await c.get("/echo")
        finally:
            stop(proc)
    assert probe.status_code == 200 and after.status_code == 200
    assert breaker.state is BreakerState.CLOSED


async def test_only_idempotent_requests_are_retried_on_another_instance(
    pair: list[str], gateway_factory: Any
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = await gateway_factory(table([dead, pair[0]], breaker_failures=1000))
    async with client(server) as c:
        gets = [(await c.get("/echo")).status_code for _ in range(6)]
        posts = [(await c.post("/echo", content=b"p")).status_code for _ in range(6)]
        keyed = [
            (await c.post("/echo", content=b"k", headers={"idempotency-key": f"k{i}"})).status_code
            for i in range(6)
        ]
    assert gets == [200] * 6
    assert keyed == [200] * 6
    assert 502 in posts and 200 in posts


async def test_slow_upstream_is_a_504(pair: list[str], gateway_factory: Any) -> None:
    server = await gateway_factory(table([pair[0]], route={"timeout_seconds": 0.3}))
    async with client(server) as c:
        response = await c.get("/slow?seconds=5")
        after = await c.get("/echo")
    assert response.status_code == 504
    assert response.json()["type"].endswith("/gateway-timeout")
    assert after.status_code == 200


async def test_upstream_failure_statuses_count_towards_the_breaker(
    pair: list[str], gateway_factory: Any
) -> None:
    server = await gateway_factory(table([pair[0]], breaker_failures=2))
    async with client(server) as c:
        answered = [(await c.get("/status/503")).status_code for _ in range(2)]
        refused = await c.get("/echo")
    assert answered == [503, 503]
    assert refused.status_code == 503 and refused.json()["detail"].startswith("No healthy")


@pytest.mark.slow
async def test_failover_keeps_every_get_succeeding_when_a_replica_dies(
    gateway_factory: Any,
) -> None:
    (proc_a, a), (proc_b, b) = start_upstream("a"), start_upstream("b")
    server = await gateway_factory(
        table([a, b], health_path="/readyz", health_interval_seconds=0.5, route={"retries": 2})
    )
    results: Counter[int] = Counter()
    served_by: Counter[str] = Counter()
    total, concurrency = 2000, 16
    done = 0
    try:
        async with client(server) as c:

            async def worker(n: int) -> None:
                nonlocal done
                for _ in range(n):
                    try:
                        response = await c.get("/echo")
                        results[response.status_code] += 1
                        if response.status_code == 200:
                            served_by[response.json()["instance"]] += 1
                    except httpx.HTTPError:
                        results[-1] += 1
                    done += 1
                    if done == total // 4:
                        proc_b.send_signal(signal.SIGKILL)

            await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    finally:
        stop(proc_a)
        stop(proc_b)
    print(f"failover: {dict(results)} served by {dict(served_by)}")
    assert results == Counter({200: total})
    assert served_by["a"] > served_by["b"] > 0


@pytest.mark.slow
def test_dead_worker_is_replaced_and_the_port_keeps_serving(
    pair: list[str], tmp_path: Path
) -> None:
    proc, port = start_gateway(table(pair), tmp_path, workers=2)
    try:
        children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")

        def workers() -> list[int]:
            return [int(p) for p in children_file.read_text().split()]

        deadline = time.monotonic() + 20
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = workers()
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (len(workers()) < 2 or first[0] in workers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        replaced = workers()
        statuses = Counter(
            httpx.get(f"http://127.0.0.1:{port}/echo", timeout=10).status_code for _ in range(20)
        )
    finally:
        stop(proc)
    assert len(replaced) == 2 and first[0] not in replaced and first[1] in replaced
    assert statuses == Counter({200: 20})
    assert proc.returncode == 0


async def _half_answering_upstream(
    *, length: int, sent: int, stall: bool = False
) -> tuple[asyncio.Server, str]:
    """An instance that answers every request with a head announcing ``length`` bytes, sends
    ``sent`` of them, then dies (closes the connection) or, with ``stall``, goes quiet."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: %d\r\n\r\n" % length + b"x" * sent)
        await writer.drain()
        if stall:
            await asyncio.sleep(30)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_an_instance_dying_mid_response_is_retried_not_a_truncated_answer(
    pair: list[str], gateway_factory: Any
) -> None:
    upstream, dying = await _half_answering_upstream(length=2265, sent=100)
    try:
        server = await gateway_factory(table([dying, pair[0]], breaker_failures=1000))
        async with client(server) as c:
            gets = [await c.get("/echo") for _ in range(6)]
            posts = [await c.post("/echo", content=b"p") for _ in range(6)]
    finally:
        upstream.close()
    # Nothing of the dying instance's answer reached the client, so each GET went on to the
    # other instance; a POST without an idempotency key is not repeated and gets a clear 502.
    assert [r.status_code for r in gets] == [200] * 6
    assert {r.json()["instance"] for r in gets} == {"a"}
    assert sorted({r.status_code for r in posts}) == [200, 502]
    failed = [r for r in posts if r.status_code == 502]
    assert all(r.json()["type"].endswith("/bad-gateway") for r in failed)


async def test_a_large_response_streams_so_an_instance_dying_mid_way_cuts_it(
    gateway_factory: Any,
) -> None:
    # Above the hold limit the head goes out at once: the client sees the cut, not a retry.
    upstream, dying = await _half_answering_upstream(length=1 << 20, sent=100)
    try:
        server = await gateway_factory(table([dying]))
        async with client(server) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get("/big")
    finally:
        upstream.close()


async def test_an_instance_stalling_mid_response_is_a_504(gateway_factory: Any) -> None:
    upstream, stalling = await _half_answering_upstream(length=2265, sent=100, stall=True)
    try:
        server = await gateway_factory(
            table([stalling], route={"timeout_seconds": 0.3, "retries": 0})
        )
        async with client(server) as c:
            response = await c.get("/echo")
    finally:
        upstream.close()
    assert response.status_code == 504
    assert response.json()["type"].endswith("/gateway-timeout")
