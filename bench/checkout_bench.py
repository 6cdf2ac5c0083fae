"""Checkouts per second end to end, embedded shape (``ecosistema up``: one process, SQLite, the
gateway in front with its rate limits turned off), over HTTP.

One checkout is what a signed-in customer's browser does to buy: POST /carts, POST
/carts/{id}/items, POST /orders (Idempotency-Key), POST /payments (Idempotency-Key), POST
/payments/{id}/confirm with the sandbox card 4242 4242 4242 4242 (Idempotency-Key): five
requests, the order placed with stock reserved, the card charged, the journal written and the
invoice issued. Each concurrent client is its own customer and checks out one after another.

Same-run baseline: GET /healthz from the same client at the same concurrency, i.e. what this
server and this client reach per request on this machine with no work behind it. The client is a
lean HTTP/1.1 keep-alive client (asyncio streams and httptools, one connection per customer), so
its own CPU stays small beside the server's; both are printed per checkout (the server's from its
process CPU time), which keeps figures comparable on a machine shared with other work.

    .venv/bin/python bench/checkout_bench.py --seconds 10 --concurrency 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvloop
from machine import (
    LeanClient,
    LeanOperation,
    bearer,
    describe,
    free_port,
    process_cpu_seconds,
    run_lean_clients,
)

ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")
ADMIN = ("bench-admin@example.com", "bench admin passphrase 2026")
PASSWORD = "bench customer passphrase"
SKU = "BENCH-CHECKOUT-1"
CART = {"currency": "EUR", "country": "ES"}
ITEM = {"sku": SKU, "quantity": 1}
CARD = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


def wait_ready(url: str, timeout: float = 180.0) -> None:
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


async def checkout(client: LeanClient, token: str) -> None:
    """One purchase, start to finish; raises on any answer that is not the expected one."""
    who = auth_header(token)
    cart = await client.json("POST", "/api/v1/carts", CART, headers=who)
    await client.json("POST", f"/api/v1/carts/{cart['id']}/items", ITEM, headers=who)
    order = await client.json(
        "POST",
        "/api/v1/orders",
        {"cart_id": cart["id"], "shipping_method": "standard"},
        headers=who + f"Idempotency-Key: {uuid.uuid4().hex}\r\n".encode(),
    )
    payment = await client.json(
        "POST",
        "/api/v1/payments",
        {"order_id": order["id"]},
        headers=who + f"Idempotency-Key: {uuid.uuid4().hex}\r\n".encode(),
    )
    confirmed = await client.json(
        "POST",
        f"/api/v1/payments/{payment['id']}/confirm",
        {"payment_method": CARD},
        headers=who + f"Idempotency-Key: {uuid.uuid4().hex}\r\n".encode(),
    )
    if confirmed["status"] != "succeeded":
        raise RuntimeError(f"payment not succeeded: {confirmed}")


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
    server_pid: int, port: int, tokens: list[str], level: int, args: argparse.Namespace
) -> None:
    """Checkouts at ``level`` clients while py-spy samples the server (not part of the figures:
    sampling slows the server)."""
    spy = str(Path(sys.executable).parent / "py-spy")
    sampler = await asyncio.create_subprocess_exec(
        *(spy, "record", "--pid", str(server_pid), "--format", "raw", "--rate", "250"),
        *("--output", args.profile, "--duration", str(int(args.seconds))),
        stdout=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)
    await run_lean_clients("127.0.0.1", port, tokens, level, args.seconds - 1, checkout)
    await sampler.wait()


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
    args = parser.parse_args()
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
                await run_lean_clients("127.0.0.1", port, tokens, 1, 1.0, checkout)  # warm-up
                for level in args.concurrency:
                    results[f"healthz_c{level}"] = await measure(
                        server.pid, port, tokens, level, args.seconds / 2, healthz
                    )
                    results[f"checkout_c{level}"] = await measure(
                        server.pid, port, tokens, level, args.seconds, checkout
                    )
                if args.profile:
                    await profile(server.pid, port, tokens, max(args.concurrency), args)

            # uvloop: the client's own event loop costs a fraction of asyncio's default one.
            uvloop.run(_all())
        finally:
            server.terminate()
            server.wait()
    results["loadavg_after"] = Path("/proc/loadavg").read_text()
    print(json.dumps(results, indent=2))
    for level in args.concurrency:
        base_r, r = results[f"healthz_c{level}"], results[f"checkout_c{level}"]
        print(
            f"c={level:<3} checkout {r['per_s']:>7,.1f}/s  p50 {r['p50_ms']:.1f} ms  "
            f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  server CPU "
            f"{r['server_cpu_ms_per_op']:.2f} ms/checkout, client CPU "
            f"{r['client_cpu_ms_per_op']:.2f} ms/checkout   baseline GET /healthz "
            f"{base_r['per_s']:>7,.0f}/s p50 {base_r['p50_ms']:.1f} ms, server CPU "
            f"{base_r['server_cpu_ms_per_op']:.3f} ms/request, client CPU "
            f"{base_r['client_cpu_ms_per_op']:.3f} ms/request"
        )


if __name__ == "__main__":
    main()
