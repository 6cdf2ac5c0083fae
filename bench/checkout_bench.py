"""Checkouts per second end to end, embedded shape (``ecosistema up``: one process, SQLite, the
gateway in front with its rate limits turned off), over HTTP.

One checkout is what a signed-in customer's browser does to buy, in two flows measured in the
same run:

- five requests: POST /carts, POST /carts/{id}/items, POST /orders (Idempotency-Key), POST
  /payments (Idempotency-Key), POST /payments/{id}/confirm with the sandbox card 4242 4242 4242
  4242 (Idempotency-Key);
- three requests (a storefront that knows the basket): POST /carts with its ``items``, POST
  /orders, POST /payments with the ``payment_method``, which confirms at once.

Either way the order is placed with stock reserved, the card charged, the journal written and
the invoice issued. Each concurrent client is its own customer and checks out one after another.

Same-run baseline: GET /healthz from the same client at the same concurrency, i.e. what this
server and this client reach per request on this machine with no work behind it. The client is a
lean HTTP/1.1 keep-alive client (asyncio streams and httptools, one connection per customer), so
its own CPU stays small beside the server's; both are printed per checkout (the server's from its
process CPU time), which keeps figures comparable on a machine shared with other work.

    .venv/bin/python bench/checkout_bench.py --seconds 10 --concurrency 1 4 16

``--flows checkout`` (or ``lean``) measures one flow only, e.g. against a version that has no
``items`` on cart creation. ``--statements N`` counts instead, in process (no HTTP, no server),
the SQL statements and transactions SQLite runs per checkout over N checkouts of each flow, the
events they set off delivered and the buyer's mail sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import uvloop
from machine import (
    LeanClient,
    LeanOperation,
    bearer,
    describe,
    free_port,
    in_process_settings,
    process_cpu_seconds,
    run_lean_clients,
)

ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")
ADMIN = ("bench-admin@example.com", "bench admin passphrase 2026")
PASSWORD = "bench customer passphrase"
SKU = "BENCH-CHECKOUT-1"
CART = {"currency": "EUR", "country": "ES"}
# A parcel needs an address: checkout with a shipping method gives one.
ADDRESS = {"name": "Bench Buyer", "line1": "Calle Mayor 1", "city": "Madrid", "country": "ES"}
ITEM = {"sku": SKU, "quantity": 1}
CARD = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


def wait_ready(url: str, timeout: float = 600.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


async def prepare_shop(client: httpx.AsyncClient, customers: int) -> list[str]:
    """A product with ample stock, and ``customers`` signed-in customers; their tokens."""
    login = await client.post("/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})
    if login.status_code != 200:
        raise RuntimeError(f"admin sign-in failed: {login.status_code} {login.text}")
    admin = bearer(login.json()["access_token"])
    await client.post("/api/v1/warehouses", json={"code": "bench", "name": "Bench"}, headers=admin)
    created = await client.post(
        "/api/v1/products",
        json={
            "name": "Benchmark tee",
            "status": "active",
            "variants": [
                {
                    "sku": SKU,
                    "weight_grams": 200,
                    "prices": [{"currency": "EUR", "amount": 1990}],
                }
            ],
        },
        headers=admin,
    )
    if created.status_code not in (201, 409):
        created.raise_for_status()
    stocked = await client.post(
        f"/api/v1/inventory/{SKU}/adjustments",
        json={"warehouse": "bench", "on_hand": 50_000_000, "reason": "benchmark stock"},
        headers=admin,
    )
    stocked.raise_for_status()
    taxed = await client.put(
        "/api/v1/tax-rates/ES", json={"name": "IVA", "rate_bp": 2100}, headers=admin
    )
    taxed.raise_for_status()
    shipping = await client.post(
        "/api/v1/shipping-methods",
        json={
            "code": "standard",
            "name": "Standard",
            "kind": "flat",
            "rates": {"EUR": [{"amount": 495}]},
            "countries": [],
        },
        headers=admin,
    )
    if shipping.status_code not in (201, 409):
        raise RuntimeError(f"shipping method not created: {shipping.text}")
    tokens = []
    for _ in range(customers):
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        registered.raise_for_status()
        signed = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        if signed.status_code != 200:
            raise RuntimeError(f"customer sign-in failed: {signed.status_code} {signed.text}")
        tokens.append(signed.json()["access_token"])
    return tokens


def auth_header(token: str) -> bytes:
    return f"Authorization: Bearer {token}\r\n".encode()


def idempotent(who: bytes) -> bytes:
    """The caller's headers with a fresh Idempotency-Key."""
    return who + f"Idempotency-Key: {uuid.uuid4().hex}\r\n".encode()


async def place_order(client: LeanClient, who: bytes, cart_id: str) -> Any:
    return await client.json(
        "POST",
        "/api/v1/orders",
        {"cart_id": cart_id, "shipping_method": "standard", "shipping_address": ADDRESS},
        headers=idempotent(who),
    )


async def checkout(client: LeanClient, token: str) -> None:
    """One purchase, start to finish; raises on any answer that is not the expected one."""
    who = auth_header(token)
    cart = await client.json("POST", "/api/v1/carts", CART, headers=who)
    await client.json("POST", f"/api/v1/carts/{cart['id']}/items", ITEM, headers=who)
    order = await place_order(client, who, cart["id"])
    payment = await client.json(
        "POST",
        "/api/v1/payments",
        {"order_id": order["id"]},
        headers=idempotent(who),
    )
    confirmed = await client.json(
        "POST",
        f"/api/v1/payments/{payment['id']}/confirm",
        {"payment_method": CARD},
        headers=idempotent(who),
    )
    if confirmed["status"] != "succeeded":
        raise RuntimeError(f"payment not succeeded: {confirmed}")


async def lean_checkout(client: LeanClient, token: str) -> None:
    """The same purchase in three requests: the cart created with its lines, the payment
    created with its method (and so confirmed)."""
    who = auth_header(token)
    cart = await client.json("POST", "/api/v1/carts", {**CART, "items": [ITEM]}, headers=who)
    order = await place_order(client, who, cart["id"])
    payment = await client.json(
        "POST",
        "/api/v1/payments",
        {"order_id": order["id"], "payment_method": CARD},
        headers=idempotent(who),
    )
    if payment["status"] != "succeeded":
        raise RuntimeError(f"payment not succeeded: {payment}")


FLOWS: dict[str, LeanOperation] = {"checkout": checkout, "lean": lean_checkout}


async def healthz(client: LeanClient, _token: str) -> None:
    """The baseline: the cheapest request the server answers."""
    await client.json("GET", "/healthz")


async def measure(
    server_pid: int,
    port: int,
    tokens: list[str],
    level: int,
    seconds: float,
    operation: LeanOperation,
) -> dict[str, float]:
    """One run of ``operation`` at ``level`` clients, with the server's CPU per operation."""
    cpu_before = process_cpu_seconds(server_pid)
    result = await run_lean_clients("127.0.0.1", port, tokens, level, seconds, operation)
    server_cpu = process_cpu_seconds(server_pid) - cpu_before
    result["server_cpu_ms_per_op"] = (
        round(server_cpu * 1000 / result["count"], 3) if result["count"] else float("nan")
    )
    result["server_cpu_share"] = round(server_cpu / result["elapsed_s"], 2)
    return result


async def profile(
    server_pid: int,
    port: int,
    tokens: list[str],
    level: int,
    args: argparse.Namespace,
    flow: LeanOperation,
) -> None:
    """Checkouts of the last flow measured, at ``level`` clients, while py-spy samples the
    server (not part of the figures: sampling slows the server)."""
    spy = str(Path(sys.executable).parent / "py-spy")
    sampler = await asyncio.create_subprocess_exec(
        *(spy, "record", "--pid", str(server_pid), "--format", "raw", "--rate", "250"),
        *("--output", args.profile, "--duration", str(int(args.seconds))),
        stdout=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)
    await run_lean_clients("127.0.0.1", port, tokens, level, args.seconds - 1, flow)
    await sampler.wait()


class InProcessClient:
    """The flows' client over the app in process, for counting statements."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        headers: bytes = b"",
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        lines = [line for line in headers.decode().split("\r\n") if line]
        named = dict(line.split(": ", 1) for line in lines)
        answer = await self._client.request(method, path, json=payload, headers=named)
        if answer.status_code not in expect:
            raise RuntimeError(f"{method} {path} -> {answer.status_code}: {answer.text[:300]}")
        return answer.json()


async def count_statements(flows: dict[str, LeanOperation], checkouts: int) -> dict[str, Any]:
    """Statements and transactions SQLite runs per checkout of each flow, events delivered and
    mail sent."""
    from ecosistema.identity import create_admin
    from ecosistema.platform.app import create_app
    from ecosistema.services import load_services

    counts = {"statements": 0, "write": 0, "read": 0}
    counting = False
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)

        def trace(sql: str) -> None:
            if counting:
                counts["statements"] += 1
                head = sql.lstrip()[:15].upper()
                if head.startswith("BEGIN"):
                    counts["write" if head == "BEGIN IMMEDIATE" else "read"] += 1

        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = traced  # type: ignore[assignment]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = in_process_settings(tmp)
        app = create_app(load_services(), settings)
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await create_admin(runtime.contexts["identity"], email=ADMIN[0], password=ADMIN[1])
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                [token] = await prepare_shop(http, 1)
                client = cast(LeanClient, InProcessClient(http))

                async def delivered() -> None:
                    # Every outbox published and the buyer's mail sent, read on connections of
                    # their own (not counted).
                    for ctx in runtime.contexts.values():
                        await emptied(ctx, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    if settings.orders_emails and "orders" in runtime.contexts:
                        await emptied(
                            runtime.contexts["orders"],
                            "SELECT count(*) FROM order_emails WHERE status = 'pending'",
                        )

                async def emptied(ctx: Any, counting_query: str) -> None:
                    while True:
                        conn = connect(ctx.db.url.database)
                        try:
                            left = conn.execute(counting_query).fetchone()[0]
                        finally:
                            conn.close()
                        if not left:
                            return
                        await asyncio.sleep(0.05)

                for name, flow in flows.items():
                    for _ in range(3):  # warm-up
                        await flow(client, token)
                    await delivered()
                    counts.update(statements=0, write=0, read=0)
                    counting = True
                    for _ in range(checkouts):
                        await flow(client, token)
                    await delivered()
                    counting = False
                    results[name] = {k: round(v / checkouts, 1) for k, v in counts.items()}
    sqlite3.connect = connect
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="also sample the server with py-spy during a last run at the highest concurrency, "
        "writing collapsed stacks to PATH (py-spy must be installed)",
    )
    parser.add_argument("--flows", nargs="+", choices=sorted(FLOWS), default=list(FLOWS))
    parser.add_argument(
        "--statements",
        type=int,
        metavar="N",
        help="count, in process, the SQL statements and transactions per checkout over N "
        "checkouts of each flow (no HTTP figures)",
    )
    args = parser.parse_args()
    flows = {name: FLOWS[name] for name in args.flows}
    if args.statements:
        counted = asyncio.run(count_statements(flows, args.statements))
        print(json.dumps({"machine": describe(), **counted}, indent=2))
        for name, c in counted.items():
            print(
                f"{name}: {c['statements']} statements, {c['write']} write and {c['read']} read "
                "transactions per checkout"
            )
        return
    results: dict[str, Any] = {"machine": describe(), "loadavg": Path("/proc/loadavg").read_text()}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            ECOSISTEMA_DATA_DIR=tmp,
            ECOSISTEMA_LOG_LEVEL="WARNING",
            ECOSISTEMA_ENVIRONMENT="development",
            # The edge's per-client rate limits would measure the limit, not the checkout.
            ECOSISTEMA_GATEWAY_RATE_LIMITS='{"enabled": false}',
            ECOSISTEMA_GATEWAY_AUTH_RATE="10000",
            ECOSISTEMA_GATEWAY_AUTH_BURST="10000",
            # No lead-scoring model is trained at start: checkouts do not score leads, and
            # training would hold the start-up for minutes on a busy machine.
            ECOSISTEMA_SALES_TRAIN_DEFAULT_MODEL="false",
        )
        subprocess.run(
            [ECOSISTEMA, "users", "create-admin", "--email", ADMIN[0], "--password", ADMIN[1]],
            cwd=tmp,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [ECOSISTEMA, "up", "--port", str(port)], cwd=tmp, env=env, stdout=subprocess.DEVNULL
        )
        try:
            wait_ready(f"{base}/healthz")

            async def _all() -> None:
                async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
                    tokens = await prepare_shop(client, max(args.concurrency))
                for flow in flows.values():  # warm-up
                    await run_lean_clients("127.0.0.1", port, tokens, 1, 1.0, flow)
                for level in args.concurrency:
                    results[f"healthz_c{level}"] = await measure(
                        server.pid, port, tokens, level, args.seconds / 2, healthz
                    )
                    for name, flow in flows.items():
                        results[f"{name}_c{level}"] = await measure(
                            server.pid, port, tokens, level, args.seconds, flow
                        )
                if args.profile:
                    await profile(server.pid, port, tokens, max(args.concurrency), args, flow)

            # uvloop: the client's own event loop costs a fraction of asyncio's default one.
            uvloop.run(_all())
        finally:
            server.terminate()
            server.wait()
    results["loadavg_after"] = Path("/proc/loadavg").read_text()
    print(json.dumps(results, indent=2))
    for level in args.concurrency:
        base_r = results[f"healthz_c{level}"]
        print(
            f"c={level:<3} baseline GET /healthz {base_r['per_s']:>7,.0f}/s "
            f"p50 {base_r['p50_ms']:.1f} ms, server CPU "
            f"{base_r['server_cpu_ms_per_op']:.3f} ms/request, client CPU "
            f"{base_r['client_cpu_ms_per_op']:.3f} ms/request"
        )
        for name, label in (("checkout", "5 requests"), ("lean", "3 requests")):
            if name not in flows:
                continue
            r = results[f"{name}_c{level}"]
            print(
                f"      checkout, {label}: {r['per_s']:>7,.1f}/s  p50 {r['p50_ms']:.1f} ms  "
                f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  server CPU "
                f"{r['server_cpu_ms_per_op']:.2f} ms/checkout, client CPU "
                f"{r['client_cpu_ms_per_op']:.2f} ms/checkout"
            )


if __name__ == "__main__":
    main()
