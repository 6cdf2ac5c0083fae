"""Catalog throughput and latency in the embedded shape, with a same-run baseline.

    .venv/bin/python bench/catalog_bench.py [--seconds 5] [--connections 64] [--import-rows 100000]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Seeds the demo catalogue into a temporary data directory, then starts ``ecosistema up`` twice:
once with the read cache off (every product read goes to SQLite) and once with it on. Measures
with wrk: GET /healthz (the baseline: the same app, no database), GET /api/v1/products/{id}
(a product with its variants and prices), and a ranked search. Then imports a generated CSV of
``--import-rows`` products in a subprocess and reports rows/s and its peak resident memory.
With ``--postgres`` the same runs use PostgreSQL (schemas with a unique prefix, dropped at the
end) instead of SQLite files. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, ensure_wrk, free_port

ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")

SEED_SCRIPT = """
import asyncio
from ecosistema.catalog import seed_demo
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services

async def main():
    runtime = Runtime(Settings(), load_services(["catalog"]))
    await runtime.start(background=False)
    try:
        print(await seed_demo(runtime.contexts["catalog"]))
        await runtime.drain_outboxes()
    finally:
        await runtime.stop()

asyncio.run(main())
"""

IMPORT_SCRIPT = """
import asyncio, json, resource, sys, time
from pathlib import Path
from ecosistema.catalog.transfer import import_file
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services

async def main():
    runtime = Runtime(Settings(), load_services(["catalog"]))
    await runtime.start(background=False)
    try:
        start = time.perf_counter()
        report = await import_file(
            runtime.contexts["catalog"], Path(sys.argv[1]), format="csv", mode=sys.argv[2]
        )
        elapsed = time.perf_counter() - start
    finally:
        await runtime.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "peak_rss_mib": peak, **report.summary()}))

asyncio.run(main())
"""


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def run_wrk(wrk: str, url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def serve(tmp: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [ECOSISTEMA, "up", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz")
    return proc


def measure(
    wrk: str, tmp: str, env: dict[str, str], seconds: int, connections: int
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = serve(tmp, env, port)
    try:
        product_id = httpx.get(f"{base}/api/v1/products", params={"limit": 1}).json()["items"][0][
            "id"
        ]
        product_url = f"{base}/api/v1/products/{product_id}"
        httpx.get(product_url).raise_for_status()
        return {
            "healthz": run_wrk(wrk, f"{base}/healthz", seconds, connections),
            "product_by_id": run_wrk(wrk, product_url, seconds, connections),
            "search": run_wrk(
                wrk, f"{base}/api/v1/products?q=leather&limit=20", seconds, connections
            ),
        }
    finally:
        proc.terminate()
        proc.wait()


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("slug,name,description,status,sku,options,weight_grams,price_EUR,price_USD\n")
        for n in range(rows):
            out.write(
                f"bench-product-{n},Bench Product {n},A product made for measuring,active,"
                f"BENCH-{n:06d},size=M;colour=Blue,{100 + n % 900},{990 + n % 5000},"
                f"{1090 + n % 5000}\n"
            )


def bench_import(tmp: str, env: dict[str, str], rows: int) -> dict[str, Any]:
    path = Path(tmp) / "import.csv"
    write_csv(path, rows)
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, str(path), "all-or-nothing"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rows_per_s"] = rows / result["seconds"]
    result["file_mib"] = path.stat().st_size / 1024 / 1024
    return result


def drop_schemas(url: str, prefix: str) -> None:
    import asyncio

    import asyncpg

    async def _drop() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", prefix + "%"
            )
            for row in rows:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(_drop())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="URL", help="Use PostgreSQL at URL, not SQLite.")
    args = parser.parse_args()
    wrk = ensure_wrk()
    results: dict[str, Any] = {
        "machine": describe(),
        "database": "postgresql" if args.postgres else "sqlite",
    }
    prefix = f"bench{os.getpid()}_"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ECOSISTEMA_DATA_DIR=tmp, ECOSISTEMA_LOG_LEVEL="WARNING")
        if args.postgres:
            env.update(
                ECOSISTEMA_DATABASE_URL=args.postgres, ECOSISTEMA_DATABASE_SCHEMA_PREFIX=prefix
            )
        try:
            run_all(args, wrk, tmp, env, results)
        finally:
            if args.postgres:
                drop_schemas(args.postgres, prefix)
    report(args, results)


def run_all(
    args: argparse.Namespace, wrk: str, tmp: str, env: dict[str, str], results: dict[str, Any]
) -> None:
    """Seed, measure uncached and cached reads, then the import."""
    seeded = subprocess.run(
        [sys.executable, "-c", SEED_SCRIPT],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    results["seeded"] = seeded.stdout.strip().splitlines()[-1]
    uncached = {**env, "ECOSISTEMA_CATALOG_CACHE_SECONDS": "0"}
    results["uncached"] = measure(wrk, tmp, uncached, args.seconds, args.connections)
    results["cached"] = measure(wrk, tmp, env, args.seconds, args.connections)
    if args.import_rows:
        results["import"] = bench_import(tmp, env, args.import_rows)
    results["bench_process_peak_rss_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print(json.dumps(results, indent=2))
    print(
        f"\n{results['machine']}; {results['database']}; "
        f"wrk -t2 -c{args.connections} -d{args.seconds}s"
    )
    for mode in ("uncached", "cached"):
        base_rps = results[mode]["healthz"]["rps"]
        for name, r in results[mode].items():
            print(
                f"{mode:<9} {name:<14} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms  ({r['rps'] / base_rps:.2f}x /healthz)"
            )
    if "import" in results:
        imp = results["import"]
        print(
            f"import {args.import_rows:,} CSV rows ({imp['file_mib']:.1f} MiB): "
            f"{imp['rows_per_s']:,.0f} rows/s, peak RSS {imp['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
