"""Calls between services over several instances of the callee, all real servers on loopback:
the calls spread over the instances, survive one of them stopping mid-run, are sent again to
another instance only when the failure left them unprocessed, and are counted per instance;
access tokens are checked with the key set of whichever identity instance answers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ecosistema.platform.auth import TokenVerifier
from ecosistema.platform.http import (
    INSTANCE,
    RETRY_SAFE,
    SERVICE_CALL_METRICS,
    DependencyUnavailable,
    service_client,
    service_instances,
)
from ecosistema.platform.tokens import generate_signing_key
from tests.integration.test_auth_verifier import JwksServer, issue
from tests.integration.test_auth_verifier import make_settings as auth_settings
from tests.integration.test_distributed_principal import ServedApp
from tests.integration.test_distributed_support import free_ports


class Callee:
    """A small service answering ``/api/v1/who`` with its name, counting what it was sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: Counter[str] = Counter()
        app = Starlette(
            routes=[
                Route("/api/v1/who", self._who, methods=["GET", "POST", "PUT"]),
                Route("/api/v1/slow", self._slow),
            ]
        )
        self.served = ServedApp(app)  # type: ignore[arg-type]
        self.url = self.served.url

    async def _who(self, request: Request) -> JSONResponse:
        self.seen[request.method] += 1
        await asyncio.sleep(0.001)
        return JSONResponse({"name": self.name})

    async def _slow(self, request: Request) -> JSONResponse:
        """Slow on the instance named "one" only."""
        self.seen["slow"] += 1
        await asyncio.sleep(2.0 if self.name == "one" else 0.0)
        return JSONResponse({"name": self.name})

    def stop(self) -> None:
        self.served.stop()


@pytest.fixture
def callees() -> Iterator[tuple[Callee, Callee]]:
    first, second = Callee("one"), Callee("two")
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
async def resetting() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A server that reads each request and drops the connection without a byte of answer."""
    seen: Counter[str] = Counter()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen[head.split(b" ", 1)[0].decode()] += 1
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


def _service() -> str:
    """A service name of this test alone, so no other test shares its instances' state."""
    return f"callee-{uuid.uuid4().hex[:8]}"


async def test_calls_spread_over_two_instances_and_all_succeed_when_one_stops_mid_run(
    callees: tuple[Callee, Callee],
) -> None:
    first, second = callees
    service = _service()
    total, stop_after, concurrency = 400, 100, 8
    served: Counter[str] = Counter()
    failures: list[BaseException] = []
    done = 0
    stopped = asyncio.Event()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait("PUT" if i % 3 == 0 else "GET")
    async with service_client([first.url, second.url], service=service) as client:

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                method = queue.get_nowait()
                try:
                    response = await client.request(method, "/who")
                    assert response.status_code == 200
                    served[response.extensions[INSTANCE]] += 1
                except Exception as exc:
                    failures.append(exc)
                done += 1
                if done == stop_after:
                    await asyncio.to_thread(first.stop)
                    stopped.set()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert stopped.is_set()
    assert failures == []
    assert sum(served.values()) == total
    # Both instances served before the stop; the one left served every call after it.
    assert first.seen.total() > 0 and second.seen.total() > total - stop_after
    instances = service_instances(service, [first.url, second.url]).instances
    assert instances[0].ejections >= 1
    assert instances[0].outcomes["connect_failed"] >= 1


async def test_a_post_to_an_instance_refusing_connections_is_sent_to_another(
    callees: tuple[Callee, Callee],
) -> None:
    _, alive = callees
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    service = _service()
    async with service_client([dead, alive.url], service=service) as client:
        answers = [await client.post("/who", json={"n": i}) for i in range(5)]
    assert [a.json()["name"] for a in answers] == ["two"] * 5
    assert {a.extensions[INSTANCE] for a in answers} == {alive.url}
    assert alive.seen["POST"] == 5
    pool = service_instances(service, [dead, alive.url])
    # Tried once, then left out for its cool-down.
    assert pool.instances[0].outcomes == Counter({"connect_failed": 1})
    assert pool.instances[0].ejected_until > 0
    assert pool.retries == 1


async def test_a_post_cut_off_before_an_answer_is_a_503_and_is_not_sent_again(
    callees: tuple[Callee, Callee], resetting: tuple[str, Counter[str]]
) -> None:
    _, alive = callees
    cutting, seen = resetting
    async with service_client([cutting, alive.url], service=_service()) as client:
        with pytest.raises(DependencyUnavailable) as caught:
            await client.post("/who", json={})
    assert caught.value.status == 503
    assert seen["POST"] == 1
    # The callee may have acted on it: it is not sent to the other instance.
    assert alive.seen["POST"] == 0


@pytest.mark.parametrize(
    ("method", "headers", "extensions"),
    [
        ("GET", {}, {}),
        ("PUT", {}, {}),
        ("POST", {"Idempotency-Key": "k-1"}, {}),
        ("POST", {}, {RETRY_SAFE: True}),
    ],
)
async def test_an_idempotent_call_cut_off_before_an_answer_is_sent_to_another_instance(
    callees: tuple[Callee, Callee],
    resetting: tuple[str, Counter[str]],
    method: str,
    headers: dict[str, str],
    extensions: dict[str, bool],
) -> None:
    _, alive = callees
    cutting, seen = resetting
    async with service_client([cutting, alive.url], service=_service()) as client:
        response = await client.request(method, "/who", headers=headers, extensions=extensions)
    assert response.json() == {"name": "two"}
    assert seen[method] == 1 and alive.seen[method] == 1


async def test_a_call_that_times_out_is_a_503_not_sent_again_and_its_instance_is_ejected(
    callees: tuple[Callee, Callee],
) -> None:
    slow, fast = callees
    service = _service()
    async with service_client([slow.url, fast.url], service=service, timeout=0.5) as client:
        with pytest.raises(DependencyUnavailable) as caught:
            await client.get("/slow")
        after = [(await client.get("/who")).json()["name"] for _ in range(4)]
    assert caught.value.detail.startswith(f"{service} did not answer in time")
    # The callee may still be working on it: it is not asked of the other instance.
    assert slow.seen["slow"] == 1 and fast.seen["slow"] == 0
    # The instance that timed out is left out for its cool-down.
    assert after == ["two"] * 4
    assert service_instances(service, [slow.url, fast.url]).instances[0].outcomes["timeout"] == 1


async def test_when_no_instance_can_be_reached_the_call_is_a_503_naming_the_service() -> None:
    dead = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    service = _service()
    async with service_client(dead, service=service) as client:
        with pytest.raises(DependencyUnavailable) as caught:
            await client.get("/who")
    assert caught.value.detail.startswith(f"{service} cannot be reached")
    assert caught.value.headers == {"Retry-After": "5"}
    pool = service_instances(service, dead)
    assert [i.outcomes["connect_failed"] for i in pool.instances] == [1, 1]


async def test_calls_are_counted_per_instance_in_the_metrics(
    callees: tuple[Callee, Callee],
) -> None:
    first, second = callees
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    service = _service()
    async with service_client([first.url, second.url, dead], service=service) as client:
        for _ in range(6):
            await client.get("/who")
    registry = CollectorRegistry()
    registry.register(SERVICE_CALL_METRICS)
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if f'service="{service}"' in line
    ]
    ok = {
        url: float(line.rsplit(" ", 1)[1])
        for url in (first.url, second.url)
        for line in lines
        if line.startswith("ecosistema_service_calls_total")
        and f'instance="{url}"' in line
        and 'outcome="ok"' in line
    }
    assert sum(ok.values()) == 6 and all(count >= 2 for count in ok.values())
    assert any(
        line.startswith("ecosistema_service_calls_total")
        and f'instance="{dead}"' in line
        and 'outcome="connect_failed"' in line
        for line in lines
    )
    assert f'ecosistema_service_instance_ejected{{instance="{dead}",service="{service}"}} 1.0' in (
        lines
    )


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()


async def test_access_tokens_are_checked_with_the_keys_of_the_identity_instance_that_answers(
    tmp_path: Path, jwks: JwksServer
) -> None:
    (dead_port,) = free_ports(1)
    # The first instance listed is down: the key set comes from the other one.
    settings = auth_settings(tmp_path, identity_url=f"http://127.0.0.1:{dead_port},{jwks.url}")
    key = generate_signing_key()
    jwks.publish(key)
    verifier = TokenVerifier(settings, cache=None)
    principal = await verifier.verify_access_token(issue(settings, key, role="sales"))
    assert principal.role == "sales"
    assert jwks.hits == 1
