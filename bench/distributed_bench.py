"""Checkouts per second through the gateway, distributed shape (``ecosistema up --distributed``:
one process per service replica, the gateway in front, PostgreSQL, Redis and NATS).

The platform runs on free ports against local PostgreSQL, Redis and NATS with a fresh schema
prefix, bus stream and cache prefix, all removed afterwards. Each concurrent client is its own
signed-in customer and buys one item after another:

- checkout: POST /carts, POST /carts/{id}/items, POST /orders (Idempotency-Key); the order is
  placed with its stock reserved in catalog and the customer read from identity (three requests,
  five service-to-service calls behind them);
- purchase: the checkout, then POST /payments and POST /payments/{id}/confirm with the sandbox
  card 4242 4242 4242 4242 (five requests). Measured only when a probe purchase succeeds; when
  payments cannot read the order from orders the bench says why and measures checkouts alone.

Same-run baseline: GET /.well-known/jwks.json through the gateway to identity at the same
concurrency (a proxied request with no work behind it). The client runs on the same cores as
the platform; its CPU time and the load average before and after are printed.

    .venv/bin/python bench/distributed_bench.py --seconds 10 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from machine import Operation, bearer, describe, free_port, run_clients

ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")
ADMIN = ("bench-admin@example.com", "bench admin passphrase 2026")
PASSWORD = "bench customer passphrase"
SKU = "BENCH-DIST-1"
# A parcel needs an address: checkout with a shipping method gives one.
ADDRESS = {"name": "Bench Buyer", "line1": "Calle Mayor 1", "city": "Madrid", "country": "ES"}
CARD = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}
BASELINE = "/.well-known/jwks.json"


def consecutive_free_ports(count: int, start: int = 42000) -> int:
    """The first of ``count`` consecutive free loopback ports from ``start``."""
    import socket

    port = start
    while port + count < 65000:
        held: list[socket.socket] = []
        try:
            for p in range(port, port + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            port += count
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ecosistema up --distributed exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


async def prepare_shop(client: httpx.AsyncClient, customers: int) -> list[str]:
    """A product with ample stock, tax and shipping, and signed-in customers; their tokens."""
    login = await client.post("/api/v1/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})
    if login.status_code != 200:
        raise RuntimeError(f"admin sign-in failed: {login.status_code} {login.text}")
    admin = bearer(login.json()["access_token"])
    await client.post("/api/v1/warehouses", json={"code": "bench", "name": "Bench"}, headers=admin)
    product = {
        "name": "Distributed benchmark tee",
        "status": "active",
        "variants": [
            {"sku": SKU, "weight_grams": 200, "prices": [{"currency": "EUR", "amount": 1990}]}
        ],
    }
    created = await client.post("/api/v1/products", json=product, headers=admin)
    if created.status_code not in (201, 409):
        raise RuntimeError(f"product not created: {created.text}")
    stock = {"warehouse": "bench", "on_hand": 50_000_000, "reason": "benchmark stock"}
    (
        await client.post(f"/api/v1/inventory/{SKU}/adjustments", json=stock, headers=admin)
    ).raise_for_status()
    tax = {"name": "IVA", "rate_bp": 2100}
    (await client.put("/api/v1/tax-rates/ES", json=tax, headers=admin)).raise_for_status()
    shipping = {
        "code": "standard",
        "name": "Standard",
        "kind": "flat",
        "rates": {"EUR": [{"amount": 495}]},
        "countries": [],
    }
    made = await client.post("/api/v1/shipping-methods", json=shipping, headers=admin)
    if made.status_code not in (201, 409):
        raise RuntimeError(f"shipping method not created: {made.text}")
    tokens = []
    for _ in range(customers):
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        account = {"email": email, "password": PASSWORD}
        (await client.post("/api/v1/auth/register", json=account)).raise_for_status()
        signed = await client.post("/api/v1/auth/login", json=account)
        if signed.status_code != 200:
            raise RuntimeError(f"customer sign-in failed: {signed.status_code} {signed.text}")
        tokens.append(signed.json()["access_token"])
    return tokens


async def place_order(client: httpx.AsyncClient, token: str) -> str:
    """Cart, item, order; the order's id."""
    who = bearer(token)
    cart = await client.post(
        "/api/v1/carts", json={"currency": "EUR", "country": "ES"}, headers=who
    )
    cart.raise_for_status()
    cart_id = cart.json()["id"]
    item = {"sku": SKU, "quantity": 1}
    (await client.post(f"/api/v1/carts/{cart_id}/items", json=item, headers=who)).raise_for_status()
    order = await client.post(
        "/api/v1/orders",
        json={"cart_id": cart_id, "shipping_method": "standard", "shipping_address": ADDRESS},
        headers={**who, "Idempotency-Key": uuid.uuid4().hex},
    )
    order.raise_for_status()
    return str(order.json()["id"])


async def checkout(client: httpx.AsyncClient, token: str) -> None:
    await place_order(client, token)


async def purchase(client: httpx.AsyncClient, token: str) -> None:
    """A checkout, paid with the sandbox card; raises unless the payment succeeded."""
    who = bearer(token)
    order_id = await place_order(client, token)
    payment = await client.post(
        "/api/v1/payments",
        json={"order_id": order_id},
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


async def baseline(client: httpx.AsyncClient, _token: str) -> None:
    (await client.get(BASELINE)).raise_for_status()


async def probe_purchase(base: str, token: str) -> str | None:
    """None when a purchase goes through; else why not."""
    async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
        try:
            await purchase(client, token)
        except httpx.HTTPStatusError as exc:
            return f"{exc.request.method} {exc.request.url.path}: {exc.response.text[:300]}"
        except (httpx.HTTPError, RuntimeError) as exc:
            return repr(exc)
    return None


async def clean_up(env: dict[str, str]) -> None:
    """Drop the run's schemas, NATS stream and Redis keys."""
    import asyncpg
    from redis.asyncio import Redis

    from ecosistema.platform.events.nats_bus import NatsBus

    prefix = env["ECOSISTEMA_DATABASE_SCHEMA_PREFIX"]
    conn = await asyncpg.connect(
        env["ECOSISTEMA_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    )
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            prefix.replace("_", r"\_") + "%",
        )
        for row in rows:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()
    if env["ECOSISTEMA_BUS_URL"].startswith("nats://"):
        bus = NatsBus(env["ECOSISTEMA_BUS_URL"], stream=env["ECOSISTEMA_BUS_STREAM"])
        await bus.start()
        try:
            await bus.delete_stream()
        finally:
            await bus.stop()
    redis = Redis.from_url(env["ECOSISTEMA_CACHE_URL"])
    try:
        patterns = (f"{env['ECOSISTEMA_CACHE_PREFIX']}*", f"{env['ECOSISTEMA_BUS_STREAM']}:*")
        for pattern in patterns:
            keys = [key async for key in redis.scan_iter(pattern, count=1000)]
            for i in range(0, len(keys), 500):
                await redis.delete(*keys[i : i + 500])
    finally:
        await redis.aclose()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--replicas", nargs="*", default=["catalog=2", "orders=2"])
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "ECOSISTEMA_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--bus-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    run = f"bench{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {
        "machine": describe(),
        "loadavg_before": Path("/proc/loadavg").read_text().strip(),
        "replicas": args.replicas,
        "gateway_workers": args.gateway_workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            ECOSISTEMA_DATA_DIR=tmp,
            ECOSISTEMA_LOG_LEVEL="WARNING",
            ECOSISTEMA_ENVIRONMENT="development",
            ECOSISTEMA_DATABASE_URL=args.database_url,
            ECOSISTEMA_DATABASE_SCHEMA_PREFIX=f"{run}_",
            ECOSISTEMA_BUS_URL=args.bus_url,
            ECOSISTEMA_BUS_STREAM=run,
            ECOSISTEMA_CACHE_URL=args.cache_url,
            ECOSISTEMA_CACHE_PREFIX=f"{run}:",
            # The edge's per-client rate limits would measure the limit, not the checkout.
            ECOSISTEMA_GATEWAY_RATE_LIMITS='{"enabled": false}',
            ECOSISTEMA_GATEWAY_AUTH_RATE="10000",
            ECOSISTEMA_GATEWAY_AUTH_BURST="10000",
            ECOSISTEMA_GATEWAY_ACCESS_LOG="false",
        )
        from ecosistema.services import SERVICE_NAMES

        extra = sum(int(item.partition("=")[2]) - 1 for item in args.replicas)
        instances = len(SERVICE_NAMES) + extra
        port, base_port = free_port(), consecutive_free_ports(instances + 4)
        base = f"http://127.0.0.1:{port}"
        platform: subprocess.Popen[bytes] | None = None
        log = (Path(tmp) / "up.log").open("wb")
        try:
            subprocess.run(
                [ECOSISTEMA, "users", "create-admin", "--email", ADMIN[0], "--password", ADMIN[1]],
                cwd=tmp,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            replicas = [arg for item in args.replicas for arg in ("--replicas", item)]
            platform = subprocess.Popen(
                [
                    *(ECOSISTEMA, "up", "--distributed", "--port", str(port)),
                    *("--base-port", str(base_port), *replicas),
                    *("--gateway-workers", str(args.gateway_workers)),
                ],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            wait_ready(f"{base}{BASELINE}", platform)

            async def _all() -> None:
                async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
                    tokens = await prepare_shop(client, max(args.concurrency))
                why_not = await probe_purchase(base, tokens[0])
                results["purchase_unavailable"] = why_not
                operations: dict[str, Operation] = {"checkout": checkout}
                if why_not is None:
                    operations["purchase"] = purchase
                await run_clients(base, tokens, 1, 1.0, checkout)  # warm-up
                for level in args.concurrency:
                    results[f"baseline_c{level}"] = await run_clients(
                        base, tokens, level, args.seconds / 2, baseline
                    )
                    for name, operation in operations.items():
                        results[f"{name}_c{level}"] = await run_clients(
                            base, tokens, level, args.seconds, operation
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
            if platform is not None:
                stop(platform)
            log.close()
            asyncio.run(clean_up(env))
    results["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
    print(json.dumps(results, indent=2))
    if results.get("purchase_unavailable"):
        print(f"purchase not measured: {results['purchase_unavailable']}")
    for level in args.concurrency:
        base_r = results[f"baseline_c{level}"]
        for name in ("checkout", "purchase"):
            r = results.get(f"{name}_c{level}")
            if r is None:
                continue
            print(
                f"c={level:<3} {name:<8} {r['per_s']:>7,.1f} orders/s  p50 {r['p50_ms']:.1f} ms  "
                f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}   baseline GET {BASELINE} "
                f"{base_r['per_s']:>7,.0f}/s p50 {base_r['p50_ms']:.1f} ms"
            )


if __name__ == "__main__":
    main()
