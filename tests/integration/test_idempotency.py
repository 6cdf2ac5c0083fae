"""Idempotency keys on SQLite and PostgreSQL: replay, reuse, concurrency, release and expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Header, Request
from starlette.responses import JSONResponse

from ecosistema.platform.cache import create_cache
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database, new_metadata, utcnow
from ecosistema.platform.errors import Conflict, install_error_handlers
from ecosistema.platform.events import Outbox
from ecosistema.platform.events.bus import MemoryBus
from ecosistema.platform.idempotency import (
    IdempotencyKeyHeader,
    count_keys,
    idempotency_table,
    idempotent_response,
    purge_idempotency_keys,
    request_fingerprint,
    run_idempotent,
)
from ecosistema.platform.service import Service, ServiceContext
from tests.conftest import drop_test_schemas

metadata = new_metadata()
outbox = Outbox("idemtest", metadata)
keys = idempotency_table(metadata)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@dataclass
class Charges:
    """What the test handler did: how often it ran, and a gate it waits on."""

    runs: int = 0
    arrived: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail_next: list[BaseException] = field(default_factory=list)


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[ServiceContext]:
    service = Service(name="idemtest", metadata=metadata, outbox=outbox, migrations=None)  # type: ignore[arg-type]
    db = Database(
        "idemtest",
        settings.database_url_for("idemtest"),
        schema_prefix=settings.database_schema_prefix,
    )
    if db.schema:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"')
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    context = ServiceContext(
        service=service,
        settings=settings,
        db=db,
        bus=MemoryBus(),
        cache=create_cache("memory://"),
        runtime=None,  # type: ignore[arg-type]
    )
    try:
        yield context
    finally:
        await db.dispose()
        await drop_test_schemas(settings)


def charging_app(ctx: ServiceContext, charges: Charges, *, wait_seconds: float = 10.0) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/charges")
    async def charge(
        request: Request,
        idempotency_key: IdempotencyKeyHeader = None,
        principal: str = Header(alias="X-Principal", default="alice"),
    ) -> JSONResponse:
        charges.arrived += 1
        body = await request.body()
        payload: dict[str, Any] = await request.json()

        async def handler() -> tuple[int, dict[str, Any]]:
            charges.runs += 1
            run = charges.runs
            await charges.gate.wait()
            if charges.fail_next:
                raise charges.fail_next.pop()
            return 201, {"charge": run, "amount": payload["amount"]}

        result = await run_idempotent(
            ctx,
            keys,
            key=idempotency_key,
            principal_id=principal,
            method=request.method,
            path=request.url.path,
            body=body,
            handler=handler,
            wait_seconds=wait_seconds,
        )
        return idempotent_response(result)

    return app


@pytest.fixture
def charges() -> Charges:
    return Charges()


@pytest.fixture
async def http(ctx: ServiceContext, charges: Charges) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=charging_app(ctx, charges))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def post(
    http: httpx.AsyncClient, key: str | None, body: dict[str, Any], principal: str = "alice"
) -> Awaitable[httpx.Response]:
    headers = {"X-Principal": principal}
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post("/charges", json=body, headers=headers)


async def test_same_key_and_body_replays_status_and_body(
    http: httpx.AsyncClient, charges: Charges
) -> None:
    charges.gate.set()
    first = await post(http, "k1", {"amount": 500, "currency": "EUR"})
    again = await http.post(
        "/charges",
        content=b'{ "currency": "EUR",  "amount": 500 }',
        headers={"Idempotency-Key": "k1", "Content-Type": "application/json"},
    )

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 201
    assert again.json() == first.json() == {"charge": 1, "amount": 500}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert charges.runs == 1


async def test_same_key_with_different_body_is_refused_as_key_reuse(
    http: httpx.AsyncClient, charges: Charges
) -> None:
    charges.gate.set()
    await post(http, "k1", {"amount": 500})
    reused = await post(http, "k1", {"amount": 999})

    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["type"].endswith("/idempotency-key-reuse")
    assert [(e["field"], e["in"], e["code"]) for e in reused.json()["errors"]] == [
        ("Idempotency-Key", "header", "key_reused")
    ]
    assert charges.runs == 1


async def test_keys_belong_to_their_principal(http: httpx.AsyncClient, charges: Charges) -> None:
    charges.gate.set()
    alice = await post(http, "shared", {"amount": 500}, principal="alice")
    bob = await post(http, "shared", {"amount": 700}, principal="bob")

    assert alice.status_code == bob.status_code == 201
    assert bob.json() == {"charge": 2, "amount": 700}


async def test_requests_without_a_key_always_run(http: httpx.AsyncClient, charges: Charges) -> None:
    charges.gate.set()
    await post(http, None, {"amount": 1})
    await post(http, None, {"amount": 1})
    assert charges.runs == 2


async def test_twenty_simultaneous_identical_requests_run_the_handler_once(
    http: httpx.AsyncClient, charges: Charges
) -> None:
    requests = [asyncio.ensure_future(post(http, "pay-once", {"amount": 4200})) for _ in range(20)]
    await eventually(lambda: charges.arrived == 20 and charges.runs >= 1)
    charges.gate.set()
    responses = await asyncio.gather(*requests)

    assert charges.runs == 1
    assert {r.status_code for r in responses} == {201}
    assert all(r.json() == {"charge": 1, "amount": 4200} for r in responses)
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19


async def test_waiting_request_answers_409_in_progress_after_bounded_wait(
    ctx: ServiceContext, charges: Charges
) -> None:
    transport = httpx.ASGITransport(app=charging_app(ctx, charges, wait_seconds=0.05))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        first = asyncio.ensure_future(post(http, "slow", {"amount": 1}))
        await eventually(lambda: charges.runs == 1)
        second = await post(http, "slow", {"amount": 1})
        charges.gate.set()
        assert (await first).status_code == 201

    assert second.status_code == 409
    assert second.json()["type"].endswith("/idempotency-request-in-progress")
    # Retry-After is when the first request's claim runs out: by then a retry is answered
    # whatever became of it (finished, or cut off by a crash and taken over).
    assert 100 <= int(second.headers["Retry-After"]) <= 120
    assert "crash" in second.json()["detail"]
    assert charges.runs == 1


async def test_failing_handler_releases_the_key_for_a_retry(
    ctx: ServiceContext, http: httpx.AsyncClient, charges: Charges
) -> None:
    charges.gate.set()
    charges.fail_next.append(RuntimeError("provider connection reset"))
    with pytest.raises(RuntimeError):
        await post(http, "retry-me", {"amount": 300})
    async with ctx.db.read() as session:
        assert await count_keys(session, keys) == 0

    retried = await post(http, "retry-me", {"amount": 300})
    assert retried.status_code == 201
    assert retried.json() == {"charge": 2, "amount": 300}
    assert "Idempotent-Replayed" not in retried.headers


async def test_problem_answer_is_kept_and_replayed(
    http: httpx.AsyncClient, charges: Charges
) -> None:
    charges.gate.set()
    charges.fail_next.append(Conflict("card declined", type="card-declined", decline_code="x"))
    first = await post(http, "declined", {"amount": 300})
    again = await post(http, "declined", {"amount": 300})

    assert first.status_code == again.status_code == 409
    assert again.json()["type"] == first.json()["type"]
    assert again.json()["decline_code"] == "x"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert charges.runs == 1


async def test_keys_expire_after_24_hours_by_purge(
    ctx: ServiceContext, http: httpx.AsyncClient, charges: Charges
) -> None:
    charges.gate.set()
    await post(http, "old", {"amount": 100})

    assert await purge_idempotency_keys(ctx, keys, now=utcnow() + timedelta(hours=23)) == 0
    assert (await post(http, "old", {"amount": 100})).headers["Idempotent-Replayed"] == "true"
    later = utcnow() + timedelta(hours=24, seconds=1)
    assert await purge_idempotency_keys(ctx, keys, now=later) == 1

    fresh = await post(http, "old", {"amount": 100})
    assert fresh.status_code == 201
    assert "Idempotent-Replayed" not in fresh.headers
    assert charges.runs == 2


def test_fingerprint_ignores_key_order_and_whitespace_but_not_path_or_values() -> None:
    a = request_fingerprint("POST", "/p", b'{"a": 1, "b": [1, 2]}')
    assert a == request_fingerprint("post", "/p", {"b": [1, 2], "a": 1})
    assert a != request_fingerprint("POST", "/q", {"b": [1, 2], "a": 1})
    assert a != request_fingerprint("POST", "/p", {"b": [2, 1], "a": 1})
