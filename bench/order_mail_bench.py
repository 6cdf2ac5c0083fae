"""CPU per buyer mail of the ``send-order-emails`` job, in process (embedded shape, SQLite, the
file mailer): N three-request checkouts queue N order confirmations, then the job sends them,
R times over (each time the queue set back to due). Prints the process's CPU per mail (every
thread: the file writes run on one of their own) and the event loop thread's.

    .venv/bin/python bench/order_mail_bench.py --mails 100 --rounds 3

Run it against another version with ``PYTHONPATH=<its checkout>/src``; alternate runs on a
machine shared with other work and compare only runs made in the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import timedelta
from typing import Any, cast

import httpx
from checkout_bench import ADMIN, InProcessClient, lean_checkout, prepare_shop
from machine import LeanClient, describe, in_process_settings


async def measure(mails: int, rounds: int) -> dict[str, Any]:
    from sqlalchemy import func, select, update

    from ecosistema.identity import create_admin
    from ecosistema.orders import emails
    from ecosistema.orders.models import order_emails
    from ecosistema.platform.app import create_app
    from ecosistema.platform.db import utcnow
    from ecosistema.services import load_services

    with tempfile.TemporaryDirectory() as tmp:
        settings = in_process_settings(
            tmp,
            # The periodic job waits: this benchmark sends the mail itself.
            orders_email_interval_seconds=3600,
        )
        app = create_app(load_services(), settings)
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await create_admin(runtime.contexts["identity"], email=ADMIN[0], password=ADMIN[1])
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                [token] = await prepare_shop(http, 1)
                client = cast(LeanClient, InProcessClient(http))
                for _ in range(mails):
                    await lean_checkout(client, token)
            ctx = runtime.contexts["orders"]
            counting = select(func.count()).select_from(order_emails)
            while True:
                await runtime.drain_outboxes()
                async with ctx.db.driver_read() as reading:
                    if await reading.scalar(counting) >= mails:
                        break
                await asyncio.sleep(0.1)
            per_mail: list[float] = []
            per_mail_loop: list[float] = []
            for _ in range(rounds):
                async with ctx.db.transaction() as session:
                    await session.execute(
                        update(order_emails).values(
                            status="pending",
                            attempts=0,
                            next_attempt_at=utcnow() - timedelta(seconds=1),
                            sent_at=None,
                        )
                    )
                cpu, loop = time.process_time(), time.thread_time()
                sent = 0
                while True:
                    got = await emails.send_due_emails(ctx)
                    sent += got
                    if got < emails.BATCH:
                        break
                per_mail.append(round((time.process_time() - cpu) * 1000 / sent, 3))
                per_mail_loop.append(round((time.thread_time() - loop) * 1000 / sent, 3))
    return {"mails": sent, "cpu_ms_per_mail": per_mail, "loop_cpu_ms_per_mail": per_mail_loop}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(measure(args.mails, args.rounds))
    print(json.dumps({"machine": describe(), **result}, indent=2))
    print(
        f"{result['mails']} mails: CPU per mail "
        + ", ".join(f"{v:.2f}" for v in result["cpu_ms_per_mail"])
        + " ms (event loop thread "
        + ", ".join(f"{v:.2f}" for v in result["loop_cpu_ms_per_mail"])
        + " ms)"
    )


if __name__ == "__main__":
    main()
