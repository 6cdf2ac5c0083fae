"""Checkouts per second end to end, embedded shape (``ecosistema up``: one process, SQLite, the
gateway in front with its rate limits turned off), over HTTP.

One checkout is what a signed-in customer's browser does to buy: POST /carts, POST
/carts/{id}/items, POST /orders (Idempotency-Key), POST /payments (Idempotency-Key), POST
/payments/{id}/confirm with the sandbox card 4242 4242 4242 4242 (Idempotency-Key): five
requests, the order placed with stock reserved, the card charged, the journal written and the
invoice issued. Each concurrent client is its own customer and checks out one after another.

Same-run baseline: GET /healthz from the same client at the same concurrency, i.e. what this
server and this client reach per request on this machine with no work behind it. The client
runs on the same cores as the server; its CPU time is printed.

    .venv/bin/python bench/checkout_bench.py --seconds 10 --concurrency 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from machine import bearer, describe, free_port, run_clients

ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")
ADMIN = ("bench-admin@example.com", "bench admin passphrase 2026")
PASSWORD = "bench customer passphrase"
SKU = "BENCH-CHECKOUT-1"
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


async def checkout(client: httpx.AsyncClient, token: str) -> None:
    """One purchase, start to finish; raises on any answer that is not the expected one."""
    who = bearer(token)
    cart = await client.post(
        "/api/v1/carts", json={"currency": "EUR", "country": "ES"}, headers=who
    )
    cart.raise_for_status()
    cart_id = cart.json()["id"]
    added = await client.post(
        f"/api/v1/carts/{cart_id}/items", json={"sku": SKU, "quantity": 1}, headers=who
    )
    added.raise_for_status()
    order = await client.post(
        "/api/v1/orders",
        json={"cart_id": cart_id, "shipping_method": "standard"},
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )
    order.raise_for_status()
    payment = await client.post(
        "/api/v1/payments",
        json={"order_id": order.json()["id"]},
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )
    payment.raise_for_status()
    confirmed = await client.post(
        f"/api/v1/payments/{payment.json()['id']}/confirm",
        json={"payment_method": CARD},
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )
    confirmed.raise_for_status()
    if confirmed.json()["status"] != "succeeded":
        raise RuntimeError(f"payment not succeeded: {confirmed.text}")


async def healthz(client: httpx.AsyncClient, _token: str) -> None:
    """The baseline: the cheapest request the server answers."""
    (await client.get("/healthz")).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
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
                await run_clients(base, tokens, 1, 1.0, checkout)  # warm-up
                for level in args.concurrency:
                    results[f"healthz_c{level}"] = await run_clients(
                        base, tokens, level, args.seconds / 2, healthz
                    )
                    results[f"checkout_c{level}"] = await run_clients(
                        base, tokens, level, args.seconds, checkout
                    )

            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            asyncio.run(_all())
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            results["client_cpu_s"] = round(
                (cpu_after.ru_utime - cpu_before.ru_utime)
                + (cpu_after.ru_stime - cpu_before.ru_stime),
                1,
            )
        finally:
            server.terminate()
            server.wait()
    results["loadavg_after"] = Path("/proc/loadavg").read_text()
    print(json.dumps(results, indent=2))
    for level in args.concurrency:
        base_r, r = results[f"healthz_c{level}"], results[f"checkout_c{level}"]
        print(
            f"c={level:<3} checkout {r['per_s']:>7,.1f}/s  p50 {r['p50_ms']:.1f} ms  "
            f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}   baseline GET /healthz "
            f"{base_r['per_s']:>7,.0f}/s p50 {base_r['p50_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
