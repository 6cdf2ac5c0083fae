"""Catalog throughput and latency, with same-run baselines.

    .venv/bin/python bench/catalog_bench.py [--seconds 10] [--connections 64] [--import-rows 100000]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Seeds the demo catalogue into a temporary data directory, then serves the FastAPI app itself
(``ecosistema.asgi:embedded_app`` on uvicorn with uvloop and httptools, one process, no access
log from the server: the app writes its own), twice: once with the read cache off (every
product read and search goes to the database) and once with it on. ``ecosistema up`` puts the
gateway, with its own response cache and rate limits, in front of the same app; this bench
measures the app. With wrk at ``--connections``: a bare ASGI app on the same server stack (the
ceiling), GET /healthz (the app's shared request path, no database), GET /api/v1/products/{id}
anonymously (a product with its variants and prices, cycling through every demo product) and
ranked searches (cycling through a few queries). Then imports a generated CSV of
``--import-rows`` products in a subprocess and reports rows/s and its peak resident memory.
With ``--postgres`` the same runs use PostgreSQL (schemas with a unique prefix, dropped at the
end) instead of SQLite files. Prints figures with the load average around each run; asserts
nothing.
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
from machine import BARE_APP, describe, ensure_wrk, free_port

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
import asyncio, csv, json, resource, sys, time
from pathlib import Path
import sqlalchemy as sa
from ecosistema.catalog.transfer import import_file
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services

async def baseline(ctx, path):
    # Same-run ceiling: the CSV's rows written with plain Core executemany (1,000 a batch) into
    # a bare scratch table of the same database, no validation, no variants, prices or search.
    scratch = sa.Table(
        "bench_import_scratch", sa.MetaData(),
        sa.Column("sku", sa.String(64), primary_key=True), sa.Column("slug", sa.String(200)),
        sa.Column("name", sa.String(200)), sa.Column("price", sa.Integer),
    )
    async with ctx.db.engine.begin() as conn:
        await conn.run_sync(scratch.create)
    start = time.perf_counter()
    with path.open(encoding="utf-8") as stream:
        rows = [
            {"sku": r["sku"], "slug": r["slug"], "name": r["name"], "price": int(r["price_EUR"])}
            for r in csv.DictReader(stream)
        ]
    async with ctx.db.transaction() as session:
        for at in range(0, len(rows), 1000):
            await session.execute(sa.insert(scratch), rows[at : at + 1000])
    elapsed = time.perf_counter() - start
    async with ctx.db.engine.begin() as conn:
        await conn.run_sync(scratch.drop)
    return len(rows) / elapsed

async def main():
    runtime = Runtime(Settings(), load_services(["catalog"]))
    await runtime.start(background=False)
    try:
        load_before = Path("/proc/loadavg").read_text().split()[0]
        cpu = time.process_time()
        start = time.perf_counter()
        report = await import_file(
            runtime.contexts["catalog"], Path(sys.argv[1]), format="csv", mode=sys.argv[2]
        )
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        floor = await baseline(runtime.contexts["catalog"], Path(sys.argv[1]))
    finally:
        await runtime.stop()
    print(json.dumps({
        "seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mib": peak,
        "baseline_core_rows_per_s": floor, "load_before": float(load_before),
        "load_after": float(Path("/proc/loadavg").read_text().split()[0]), **report.summary(),
    }))

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


def run_wrk(wrk: str, url: str, seconds: int, connections: int, *extra: str) -> dict[str, float]:
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
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


# wrk cycles through these paths, one per request, so reads do not all hit one row.
ROTATE_LUA = """
local paths = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n %% #paths) + 1])
end
"""

SEARCHES = ("leather", "wool jacket", "cotton", "linen shirt", "ceramic")


def uvicorn_command(target: str, port: int, *, factory: bool) -> list[str]:
    """The server stack of ``ecosistema serve``: uvicorn, uvloop, httptools, one process."""
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    command += ["--log-level", "warning", "--backlog", "2048"]
    return [*command, "--factory"] if factory else command


def serve(tmp: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        uvicorn_command("ecosistema.asgi:embedded_app", port, factory=True),
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz")
    return proc


def rotating(tmp: str, name: str, paths: list[str]) -> str:
    """A wrk script requesting ``paths`` in turn."""
    script = Path(tmp) / f"{name}.lua"
    script.write_text(ROTATE_LUA % ", ".join(json.dumps(p) for p in paths))
    return str(script)


WARMUP_SECONDS = 2


def run_wrk_load(
    wrk: str, url: str, seconds: int, connections: int, *extra: str
) -> dict[str, float]:
    """``run_wrk`` after a warm-up of the same load (not counted), with the load average before
    and after. Without it the figures would fold in the server's first seconds: the first
    requests through each code path (imports, caches, compiled statements) under concurrency."""
    if WARMUP_SECONDS:
        run_wrk(wrk, url, WARMUP_SECONDS, connections, *extra)
    before = os.getloadavg()[0]
    result = run_wrk(wrk, url, seconds, connections, *extra)
    result["load_before"] = round(before, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def measure_bare(wrk: str, tmp: str, env: dict[str, str], seconds: int, connections: int) -> Any:
    """The ceiling: a bare ASGI app on the same server stack."""
    Path(tmp, "bare_asgi.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen(uvicorn_command("bare_asgi:app", port, factory=False), cwd=tmp, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        return run_wrk_load(wrk, f"http://127.0.0.1:{port}/healthz", seconds, connections)
    finally:
        proc.terminate()
        proc.wait()


def measure(
    wrk: str, tmp: str, env: dict[str, str], seconds: int, connections: int, *, healthz: bool
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = serve(tmp, env, port)
    try:
        ids: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{base}/api/v1/products", params=params).json()
            ids += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        product_paths = [f"/api/v1/products/{i}" for i in ids]
        search_paths = [f"/api/v1/products?q={q.replace(' ', '+')}&limit=20" for q in SEARCHES]
        for path in (product_paths[0], search_paths[0]):
            httpx.get(base + path).raise_for_status()
        results: dict[str, Any] = {}
        if healthz:
            results["healthz"] = run_wrk_load(wrk, f"{base}/healthz", seconds, connections)
        results["product_by_id"] = run_wrk_load(
            wrk, base, seconds, connections, "-s", rotating(tmp, "products", product_paths)
        )
        results["search"] = run_wrk_load(
            wrk, base, seconds, connections, "-s", rotating(tmp, "searches", search_paths)
        )
        results["products_rotated"] = len(product_paths)
        return results
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
    parser.add_argument("--seconds", type=int, default=10)
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
    results["bare_asgi"] = measure_bare(wrk, tmp, env, args.seconds, args.connections)
    uncached = {**env, "ECOSISTEMA_CATALOG_CACHE_SECONDS": "0"}
    results["uncached"] = measure(wrk, tmp, uncached, args.seconds, args.connections, healthz=True)
    cached = {**env, "ECOSISTEMA_CATALOG_CACHE_SECONDS": "300"}
    results["cached"] = measure(wrk, tmp, cached, args.seconds, args.connections, healthz=False)
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
    bare = results["bare_asgi"]
    rows = [("baseline", "bare ASGI", bare)]
    rows += [
        (mode, name, r)
        for mode in ("uncached", "cached")
        for name, r in results[mode].items()
        if isinstance(r, dict)
    ]
    for mode, name, r in rows:
        print(
            f"{mode:<9} {name:<14} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms  ({r['rps'] / bare['rps']:.2f}x bare)  "
            f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
            + (f"  non-2xx {r['non_2xx']:.0f}" if r["non_2xx"] else "")
        )
    if "import" in results:
        imp = results["import"]
        print(
            f"import {args.import_rows:,} CSV rows ({imp['file_mib']:.1f} MiB): "
            f"{imp['rows_per_s']:,.0f} rows/s ({args.import_rows / imp['cpu_seconds']:,.0f} "
            f"per CPU-second), peak RSS {imp['peak_rss_mib']:.0f} MiB; baseline plain Core "
            f"insert of the same rows {imp['baseline_core_rows_per_s']:,.0f} rows/s; "
            f"load {imp['load_before']:.2f}->{imp['load_after']:.2f}"
        )


if __name__ == "__main__":
    main()
