"""Event latency across replicas: from a commit to its handling by a consumer.

Two processes stand for two replicas of one service on PostgreSQL: both write events to the
same outbox schema, both run the outbox relay (settings defaults: poll 0.5 s), and both
consume under the same consumer name from NATS JetStream (or Redis Streams), so an event
committed on one replica may be relayed and handled by the other. Each replica commits its
share of the events at random moments (gaps up to ``--gap`` seconds, so the bus also sits
idle between events, as it does outside peak hours); the consumer records when it handled each
one. Printed: p50, p99 and max of handled-at minus committed-at, and how many took over 0.25 s
and over 1 s.

    .venv/bin/python bench/event_latency_bench.py --events 200 --bus nats://127.0.0.1:4222

Run it on two revisions (``PYTHONPATH=<other checkout>/src``) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from machine import describe
from sqlalchemy import Column, Float, Integer, String, Table, func, select, text

from ecosistema.platform.db import Database, as_utc_datetime, new_metadata
from ecosistema.platform.events import EventEnvelope, IdempotentConsumer, Outbox, OutboxRelay
from ecosistema.platform.events.bus import EventBus
from ecosistema.platform.events.nats_bus import NatsBus
from ecosistema.platform.events.redis_bus import RedisStreamsBus

metadata = new_metadata()
outbox = Outbox("latency", metadata)
handled = Table(
    "handled",
    metadata,
    Column("event_id", String(32), primary_key=True),
    Column("committed_on", Integer, nullable=False),
    Column("handled_on", Integer, nullable=False),
    Column("committed_at", Float, nullable=False),
    Column("handled_at", Float, nullable=False),
)
CONSUMER = "latency.probe"


def make_bus(url: str, stream: str) -> EventBus:
    if url.startswith("nats://"):
        return NatsBus(url, stream=stream)
    return RedisStreamsBus(url, stream=stream)


async def replica(args: argparse.Namespace) -> None:
    """One replica: relay and consume until every event of the run is handled."""
    db = Database("latency", args.database_url, schema_prefix=args.prefix)
    bus = make_bus(args.bus, args.stream)
    await bus.start()

    async def record(session: Any, envelope: EventEnvelope) -> None:
        await session.execute(
            handled.insert().values(
                event_id=envelope.id,
                committed_on=envelope.payload["replica"],
                handled_on=args.replica,
                committed_at=envelope.payload["committed_at"],
                handled_at=time.time(),
            )
        )

    await bus.subscribe(
        CONSUMER, ["LatencyProbe"], IdempotentConsumer(CONSUMER, db, outbox, record)
    )
    relay = OutboxRelay(outbox, db, bus)
    relay.start()
    rng = random.Random(args.replica)
    # Start together: the parent gives the moment.
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    for _ in range(args.count):
        await asyncio.sleep(rng.uniform(0.0, args.gap))
        async with db.transaction() as session:
            await outbox.add(
                session, "LatencyProbe", {"replica": args.replica, "committed_at": time.time()}
            )
    deadline = time.time() + 120
    while time.time() < deadline:
        async with db.read() as session:
            done = await session.scalar(select(func.count()).select_from(handled))
        if done >= args.total:
            break
        await asyncio.sleep(0.2)
    await relay.stop()
    await bus.stop()
    await db.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def set_up(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{db.schema}"'))
        await conn.run_sync(metadata.create_all)


async def results(db: Database) -> list[dict[str, Any]]:
    """Each handled event with the moment the relay marked it published."""
    o = outbox.table
    query = select(handled, o.c.published_at).join(o, o.c.event_id == handled.c.event_id)
    async with db.read() as session:
        rows = (await session.execute(query)).mappings().all()
    return [{**r, "published_at": as_utc_datetime(r["published_at"]).timestamp()} for r in rows]


async def clean_up(db: Database, bus_url: str, stream: str) -> None:
    await db.drop_schema()
    await db.dispose()
    bus = make_bus(bus_url, stream)
    await bus.start()
    try:
        assert isinstance(bus, NatsBus | RedisStreamsBus)
        await bus.delete_stream()
    finally:
        await bus.stop()


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the replicas on a fresh schema and stream; the rows of the events they handled."""
    run = f"lat{uuid.uuid4().hex[:8]}"
    prefix, stream = f"{run}_", run
    db = Database("latency", args.database_url, schema_prefix=prefix)
    await set_up(db)
    share = args.events // args.replicas
    start_at = time.time() + 5.0
    try:
        children = [
            await asyncio.create_subprocess_exec(
                *(sys.executable, __file__, "--replica", str(n), "--count", str(share)),
                *("--total", str(share * args.replicas), "--prefix", prefix),
                *("--stream", stream, "--gap", str(args.gap)),
                *("--database-url", args.database_url, "--bus", args.bus),
                *("--start-at", str(start_at)),
            )
            for n in range(1, args.replicas + 1)
        ]
        for child in children:
            await child.wait()
        return await results(db)
    finally:
        await clean_up(db, args.bus, stream)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap", type=float, default=2.0, help="most seconds between commits")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "ECOSISTEMA_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--bus", default="nats://127.0.0.1:4222")
    parser.add_argument("--replica", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica is not None:
        asyncio.run(replica(args))
        return

    loadavg_before = Path("/proc/loadavg").read_text().strip()
    rows = asyncio.run(measure(args))
    latencies = [r["handled_at"] - r["committed_at"] for r in rows]
    relayed = [r["published_at"] - r["committed_at"] for r in rows]
    delivered = [r["handled_at"] - r["published_at"] for r in rows]
    across = [
        r["handled_at"] - r["committed_at"] for r in rows if r["committed_on"] != r["handled_on"]
    ]
    report = {
        "machine": describe(),
        "loadavg_before": loadavg_before,
        "loadavg_after": Path("/proc/loadavg").read_text().strip(),
        "bus": args.bus.split("://")[0],
        "replicas": args.replicas,
        "events": len(rows),
        "handled": len(rows),
        "handled_on_another_replica": len(across),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "over_250ms": sum(v > 0.25 for v in latencies),
        "over_1s": sum(v > 1.0 for v in latencies),
        # Commit to the relay's mark (taken just after the bus acknowledged the event), and
        # from there to the handler: which side a slow event lost its time on.
        "relay_p99_ms": round(percentile(relayed, 99) * 1000, 1),
        "relay_max_ms": round(max(relayed) * 1000, 1),
        "delivery_p99_ms": round(percentile(delivered, 99) * 1000, 1),
        "delivery_max_ms": round(max(delivered) * 1000, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
