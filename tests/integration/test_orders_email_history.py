"""Buyer mail in the order's history, on both shapes: staff (and the buyer) see on the order
when each mail went, to which address (masked), and when one was given up and why; the entry is
written with the mail's settlement, so the history and the mail queue always agree."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from ecosistema.orders.emails import MAX_ATTEMPTS, mask_email, send_due_emails
from ecosistema.orders.models import order_emails
from ecosistema.platform.db import utcnow
from tests.integration.test_identity_support import API, bearer, fast_settings
from tests.integration.test_orders_emails import (
    SKU,
    all_sent,
    app,
    buyer,
    client_of,
    paid,
    pay,
    queued,
    settings,
    shop_settings,
    started,
)
from tests.integration.test_orders_support import (
    eventually,
    orders_ctx,
    place_guest_order,
    seed_shop,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def mail_entries(
    client: httpx.AsyncClient, order_id: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/orders/{order_id}/history", headers=headers)
    assert response.status_code == 200, response.text
    return [e for e in response.json() if (e["action"] or "").startswith("email_")]


def test_an_address_is_masked_to_its_first_character_and_domain() -> None:
    assert mask_email("buyer-1234@example.com") == "b***@example.com"
    assert mask_email("a@shop.example") == "a***@shop.example"
    assert mask_email("not-an-address") == "***"


async def test_a_sent_mail_is_on_the_orders_history_for_staff_and_the_buyer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 10})
    address = buyer()
    order = await place_guest_order(client, {SKU: 1}, email=address)
    assert await mail_entries(client, order["id"], bearer(admin)) == []

    await pay(client, order)
    await all_sent(app, order["id"])
    await send_due_emails(orders_ctx(app), now=utcnow() + timedelta(days=1))

    [entry] = await mail_entries(client, order["id"], bearer(admin))
    [mail] = await queued(app, order["id"])
    masked = "b***@example.com"
    assert entry["kind"] == "event" and entry["action"] == "email_sent"
    assert (entry["actor_kind"], entry["actor_id"]) == ("system", None)
    assert entry["reason"] == f"Order confirmation sent to {masked}"
    assert entry["details"] == {
        "email_id": mail["id"],
        "mail": "confirmation",
        "to": masked,
        "attempts": 1,
    }
    assert entry["occurred_at"] == mail["sent_at"].isoformat().replace("+00:00", "Z")
    # The buyer reads it on their own order too; the address is never in the history whole.
    assert await mail_entries(client, order["id"], order["_headers"]) == [entry]
    history = await client.get(f"{API}/orders/{order['id']}/history", headers=bearer(admin))
    assert address not in history.text


async def test_a_mail_given_up_is_on_the_history_with_the_class_of_its_last_error(
    shape: str, tmp_path: Path
) -> None:
    # Nothing listens on port 1: every attempt is refused, as by a mail server that is down.
    settings = shop_settings(shape, tmp_path, mailer_url="smtp://127.0.0.1:1?timeout=2")
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        order = await place_guest_order(client, {SKU: 1}, email=buyer())
        await pay(client, order)
        await paid(client, admin, order["id"])

        async def tried() -> bool:
            found = await queued(app, order["id"])
            return bool(found) and found[0]["attempts"] >= 1 and found[0]["last_error"]

        await eventually(tried, what="a failed attempt")
        # Failed attempts that will be tried again are not in the history.
        assert await mail_entries(client, order["id"], bearer(admin)) == []

        # The attempts run out (here: the last one is due).
        ctx = orders_ctx(app)
        async with ctx.db.transaction() as session:
            await session.execute(
                update(order_emails)
                .where(order_emails.c.order_id == order["id"])
                .values(attempts=MAX_ATTEMPTS - 1)
            )
        assert await send_due_emails(ctx, now=utcnow() + timedelta(hours=2)) == 0

        [mail] = await queued(app, order["id"])
        assert (mail["status"], mail["attempts"]) == ("failed", MAX_ATTEMPTS)
        [entry] = await mail_entries(client, order["id"], bearer(admin))
        error = mail["last_error"]
        assert error in ("ConnectionRefusedError", "OSError")
        assert entry["action"] == "email_failed" and entry["actor_kind"] == "system"
        assert entry["reason"] == (
            "Order confirmation to b***@example.com not sent: given up after "
            f"{MAX_ATTEMPTS} attempts ({error})"
        )
        assert entry["details"] == {
            "email_id": mail["id"],
            "mail": "confirmation",
            "to": "b***@example.com",
            "attempts": MAX_ATTEMPTS,
            "error": error,
        }
        assert "Traceback" not in entry["reason"]
        # Given up is final: no later round adds to the history.
        await send_due_emails(ctx, now=utcnow() + timedelta(days=1))
        assert len(await mail_entries(client, order["id"], bearer(admin))) == 1


class _LapsingMailer:
    """A mail server so slow that the sender's claim lapses while it is sending, and another
    sender claims the mail meanwhile (as another replica would after ten minutes)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def send(self, to: str, subject: str, text: str, html: str) -> None:
        async with orders_ctx(self.app).db.transaction() as session:
            await session.execute(update(order_emails).values(attempts=order_emails.c.attempts + 1))


async def test_a_sender_whose_claim_lapsed_neither_settles_the_mail_nor_writes_history(
    shape: str, tmp_path: Path
) -> None:
    # The periodic job waits an hour: this test is the only sender.
    settings = fast_settings(
        shape, tmp_path, orders_email_interval_seconds=3600, public_url="https://shop.example"
    )
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        order = await place_guest_order(client, {SKU: 1}, email=buyer())
        await pay(client, order)
        await paid(client, admin, order["id"])
        await app.state.runtime.drain_outboxes()

        async def queued_once() -> bool:
            return len(await queued(app, order["id"])) == 1

        await eventually(queued_once, what="the confirmation queued")
        ctx = orders_ctx(app)
        ctx.extras["order_mailer"] = _LapsingMailer(app)

        assert await send_due_emails(ctx) == 1

        # The mail is the other sender's to settle: still pending under its claim, and not in
        # the history until it is.
        [mail] = await queued(app, order["id"])
        assert (mail["status"], mail["attempts"], mail["sent_at"]) == ("pending", 2, None)
        assert await mail_entries(client, order["id"], bearer(admin)) == []
