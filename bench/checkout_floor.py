"""The floor under an embedded checkout on this machine: what the server stack and SQLite cost
before any of the platform's own code runs.

A three-request checkout in the embedded shape (see ``checkout_bench.py``) is three HTTP
requests served by one process, and the SQL statements and write transactions that
``checkout_bench.py --statements`` counts, run on SQLite files in WAL mode with
``synchronous=NORMAL`` (the platform's settings). This measures, in the same run:

- **server**: a bare ASGI app (no framework, no routing, a fixed body) on the same server stack
  the platform uses (uvicorn, uvloop, httptools, one process), driven by the same lean keep-alive
  client as ``checkout_bench.py`` at the same concurrency: the server's and the client's CPU per
  request;
- **SQLite**: the standard library's ``sqlite3`` running that many statements in that many
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` transactions (point reads by primary key and inserts of
  about 150 bytes into a table of 100,000 rows), with no ORM, no SQLAlchemy and no driver layer
  in between: its CPU per checkout.

Their sum is a lower bound on one process's CPU per checkout: no parsing of JSON, validation,
authentication, pricing, events, encryption or logging is in it. The benchmark prints it against
a target rate (500 checkouts/s by default): the share of one core the floor alone takes at that
rate, and the ceiling in checkouts per second it leaves.

    .venv/bin/python bench/checkout_floor.py --seconds 5 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop
from machine import (
    BARE_APP,
    LeanClient,
    describe,
    free_port,
    process_cpu_seconds,
    run_lean_clients,
)

# What the architecture asks of every endpoint: a FastAPI route taking and returning Pydantic
# models, here doing nothing else.
FRAMEWORK_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

class Line(BaseModel):
    sku: str
    quantity: int

class Basket(BaseModel):
    currency: str
    country: str
    items: list[Line]

class Answer(BaseModel):
    id: str
    status: str
    items: list[Line]

app = FastAPI()

@app.post("/api/v1/carts", status_code=201)
async def create(basket: Basket) -> Answer:
    return Answer(id="c_1", status="active", items=basket.items)
"""

BASKET = {"currency": "EUR", "country": "ES", "items": [{"sku": "BENCH-CHECKOUT-1", "quantity": 1}]}

ROWS = 100_000


async def _get(client: LeanClient, _token: str) -> None:
    await client.json("GET", "/healthz")


async def _post(client: LeanClient, _token: str) -> None:
    await client.json("POST", "/api/v1/carts", BASKET)


def served(app: str, seconds: float, concurrency: int) -> dict[str, float]:
    """Server and client CPU per request of ``app`` on the platform's server stack: a GET of the
    bare app, a POST of a basket to the framework's."""
    operation = _post if "FastAPI" in app else _get
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bare.py").write_text(app)
        port = free_port()
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bare:app", "--port", str(port)),
                *("--loop", "uvloop", "--http", "httptools", "--no-access-log"),
                *("--log-level", "warning"),
            ],
            cwd=tmp,
            env=dict(os.environ, PYTHONPATH=tmp),
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            uvloop.run(run_lean_clients("127.0.0.1", port, ["-"], concurrency, 1.0, operation))
            before = process_cpu_seconds(server.pid)
            result = uvloop.run(
                run_lean_clients("127.0.0.1", port, ["-"], concurrency, seconds, operation)
            )
            spent = process_cpu_seconds(server.pid) - before
            if result["errors"]:
                raise RuntimeError(f"{result['errors']} requests failed")
        finally:
            server.terminate()
            server.wait()
    return {
        "requests_per_s": result["per_s"],
        "server_cpu_ms_per_request": round(spent * 1000 / result["count"], 3),
        "client_cpu_ms_per_request": result["client_cpu_ms_per_op"],
    }


def bare_sqlite(statements: int, transactions: int, checkouts: int) -> dict[str, float]:
    """CPU per checkout of ``statements`` plain statements in ``transactions`` write
    transactions, on a WAL file with the platform's pragmas."""
    # As evenly as they go: every transaction reads about as much as it writes.
    per_tx = [
        statements // transactions + (tx < statements % transactions) for tx in range(transactions)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp, "floor.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT)")
        conn.execute("CREATE INDEX t_b ON t (b)")
        conn.executemany(
            "INSERT INTO t (a, b, c) VALUES (?, ?, ?)",
            (("x" * 40, i, "y" * 100) for i in range(ROWS)),
        )
        key = ROWS
        start = time.process_time()
        for n in range(checkouts):
            for tx, count in enumerate(per_tx):
                conn.execute("BEGIN IMMEDIATE")
                for r in range(count // 2):
                    row_id = 1 + (n * 131 + tx * 17 + r) % ROWS
                    conn.execute("SELECT a, b, c FROM t WHERE id = ?", (row_id,)).fetchone()
                for _ in range(count - count // 2):
                    key += 1
                    conn.execute(
                        "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", ("x" * 40, key, "y" * 100)
                    )
                conn.execute("COMMIT")
        spent = time.process_time() - start
        conn.close()
    return {
        "statements": sum(per_tx),
        "write_transactions": transactions,
        "cpu_ms_per_checkout": round(spent * 1000 / checkouts, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3, help="HTTP requests per checkout")
    parser.add_argument(
        "--statements",
        type=int,
        default=130,
        help="statements per checkout (checkout_bench.py --statements, three-request flow)",
    )
    parser.add_argument("--transactions", type=int, default=14, help="write transactions")
    parser.add_argument("--checkouts", type=int, default=2000, help="SQLite checkouts to time")
    parser.add_argument("--target", type=float, default=500.0, help="checkouts per second")
    args = parser.parse_args()

    bare = served(BARE_APP, args.seconds, args.concurrency)
    framework = served(FRAMEWORK_APP, args.seconds, args.concurrency)
    database = bare_sqlite(args.statements, args.transactions, args.checkouts)
    result: dict[str, Any] = {
        "machine": describe(),
        "loadavg": Path("/proc/loadavg").read_text().strip(),
        "bare_server": bare,
        "fastapi_pydantic_route": framework,
        "bare_sqlite": database,
        "target_per_s": args.target,
    }
    print(
        f"per request: bare server {bare['server_cpu_ms_per_request']:.3f} ms CPU, FastAPI route "
        f"with Pydantic models {framework['server_cpu_ms_per_request']:.3f} ms (client "
        f"{bare['client_cpu_ms_per_request']:.3f} and {framework['client_cpu_ms_per_request']:.3f})"
    )
    print(
        f"per checkout: bare SQLite {database['cpu_ms_per_checkout']:.3f} ms CPU for "
        f"{database['statements']} statements in {args.transactions} write transactions"
    )
    for name, per_request in (("bare server", bare), ("FastAPI route", framework)):
        floor_ms = args.requests * per_request["server_cpu_ms_per_request"]
        floor_ms += database["cpu_ms_per_checkout"]
        share = floor_ms * args.target / 1000
        result[f"floor_ms_{name.replace(' ', '_').lower()}"] = round(floor_ms, 3)
        print(
            f"floor of a {args.requests}-request checkout on the {name}: {floor_ms:.2f} ms of one "
            f"process's CPU; at {args.target:.0f}/s {share:.0%} of a core before any application "
            f"code; a ceiling of {1000 / floor_ms:.0f} checkouts/s"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
