"""Mail to the buyer on both shapes, through the real flow (identity, catalog, orders and
payments in one app, the file mailer): one order confirmation when the order is paid, however
often its event is delivered; a shipping confirmation per parcel; the cancellation and refund
notices; a mail server that is down holds up nothing and the mail goes once it is back; order
mail can be turned off."""

from __future__ import annotations

import email.message
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.orders.emails import purge_old_emails, send_due_emails
from ecosistema.orders.models import order_emails, outbox
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.mail import FileMailer
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer, fast_settings, mails_to
from tests.integration.test_orders_support import (
    eventually,
    orders_ctx,
    place_guest_order,
    seed_shop,
    staff_tokens,
)

SKU = "MAIL-TEE"
CARD = {"card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


def shop_settings(shape: str, tmp_path: Path, **overrides: object) -> Settings:
    return fast_settings(
        shape,
        tmp_path,
        orders_email_interval_seconds=0.05,
        seller_name="Tienda Prueba",
        public_url="https://shop.example",
        **overrides,
    )


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    # INFO: the tests read what the mail logs say.
    return shop_settings(shape, tmp_path, log_level="INFO")


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[FastAPI]:
    """The four services in one app, with ``settings``."""
    names = ("identity", "catalog", "orders", "payments")
    application = create_app(load_services(names), settings)
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        await drop_test_schemas(settings)


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with started(settings) as application:
        yield application


def buyer() -> str:
    return f"buyer-{uuid.uuid4().hex[:8]}@example.com"


async def pay(client: httpx.AsyncClient, order: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**order["_headers"], "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code in (200, 201), response.text
    payment: dict[str, Any] = response.json()
    assert payment["status"] in ("succeeded", "captured", "paid"), payment
    return payment


async def paid(client: httpx.AsyncClient, admin: dict[str, Any], order_id: str) -> None:
    async def probe() -> bool:
        return await status_of(client, admin, order_id) == "paid"

    await eventually(probe, what="the order paid")


async def status_of(client: httpx.AsyncClient, admin: dict[str, Any], order_id: str) -> str:
    response = await client.get(f"{API}/orders/{order_id}", headers=bearer(admin))
    return str(response.json()["status"])


def subjects(settings: Settings, address: str) -> list[str]:
    return [str(m["Subject"]) for m in mails_to(settings, address)]


def text_of(message: email.message.EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


async def queued(app: FastAPI, order_id: str) -> list[dict[str, Any]]:
    async with orders_ctx(app).db.read() as session:
        rows = await session.execute(
            select(order_emails)
            .where(order_emails.c.order_id == order_id)
            .order_by(order_emails.c.created_at)
        )
        return [dict(r) for r in rows.mappings()]


async def test_a_paid_order_mails_one_confirmation_even_when_its_event_comes_again(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 10})
    address = buyer()
    order = await place_guest_order(client, {SKU: 2}, email=address)
    assert subjects(settings, address) == []  # placed, not paid: nothing yet

    await pay(client, order)
    await eventually(lambda: _mails(settings, address, 1), what="the confirmation")
    await all_sent(app, order["id"])
    [message] = mails_to(settings, address)
    assert message["Subject"] == f"Order {order['number']} confirmed"
    assert message["From"] == "Tienda Prueba <no-reply@ecosistema.local>"
    text = text_of(message)
    assert order["number"] in text
    assert f"2 x Product {SKU}" in text and f"({SKU}) at €20.00  €40.00" in text
    assert "Shipping  " in text and "€4.95" in text
    assert "Including tax (21%)" in text
    assert "Total" in text and "€44.95" in text
    assert "Ana Prueba" in text and "28013 Madrid" in text
    assert f"https://shop.example/api/v1/orders/{order['id']}" in text
    assert "4242" not in message.as_string()  # no card data, ever
    html = message.get_body(preferencelist=("html",))
    assert html is not None and order["number"] in html.get_content()

    # The bus delivers the event again (a redelivery, a relay that ran twice): no second mail.
    async with orders_ctx(app).db.read() as session:
        row = (
            (await session.execute(select(outbox.table).where(outbox.table.c.type == "OrderPaid")))
            .mappings()
            .one()
        )
    again = EventEnvelope(
        id=row["event_id"],
        type=row["type"],
        source=row["source"],
        payload=row["payload"],
        occurred_at=row["occurred_at"],
    )
    await app.state.runtime.bus.publish(again)
    await send_due_emails(orders_ctx(app), now=utcnow() + timedelta(days=1))
    assert len(mails_to(settings, address)) == 1
    [mail] = await queued(app, order["id"])
    assert (mail["kind"], mail["status"], mail["attempts"]) == ("confirmation", "sent", 1)


async def _mails(settings: Settings, address: str, count: int) -> bool:
    return len(mails_to(settings, address)) >= count


async def all_sent(app: FastAPI, order_id: str) -> None:
    """Wait until the order's queued mail is marked sent (the file is written just before)."""

    async def probe() -> bool:
        return {m["status"] for m in await queued(app, order_id)} == {"sent"}

    await eventually(probe, what="the mail marked sent")


async def test_parcels_refunds_and_cancellations_are_mailed_in_the_buyers_words(
    app: FastAPI,
    client: httpx.AsyncClient,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 10})
    address = buyer()
    order = await place_guest_order(client, {SKU: 3}, email=address)
    payment = await pay(client, order)
    await eventually(lambda: _mails(settings, address, 1), what="the confirmation")
    line_id = order["lines"][0]["line_id"]

    shipped = await client.post(
        f"{API}/orders/{order['id']}/fulfillments",
        json={
            "lines": [{"line_id": line_id, "quantity": 1}],
            "tracking_number": "TRK-123",
            "carrier": "Correos",
        },
        headers=bearer(admin),
    )
    assert shipped.status_code in (200, 201), shipped.text
    await eventually(lambda: _mails(settings, address, 2), what="the shipping confirmation")
    parcel = mails_to(settings, address)[1]
    assert parcel["Subject"] == f"Order {order['number']} shipped"
    text = text_of(parcel)
    assert "Part of your order" in text
    assert "Carrier: Correos" in text and "Tracking number: TRK-123" in text
    assert f"1 x Product {SKU}" in text

    refunded = await client.post(
        f"{API}/payments/{payment['id']}/refunds",
        json={"lines": [{"line_id": line_id, "quantity": 1}], "reason": "damaged"},
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert refunded.status_code in (200, 201), refunded.text
    await eventually(lambda: _mails(settings, address, 3), what="the refund notice")
    refund = mails_to(settings, address)[2]
    assert refund["Subject"] == f"Refund for order {order['number']}"
    text = text_of(refund)
    assert "We have refunded €20.00" in text
    assert f"({SKU}) at €20.00  €20.00" in text

    unpaid_address = buyer()
    unpaid = await place_guest_order(client, {SKU: 1}, email=unpaid_address)
    cancelled = await client.post(
        f"{API}/orders/{unpaid['id']}/cancel",
        json={"reason": "Ordered the wrong size"},
        headers=unpaid["_headers"],
    )
    assert cancelled.status_code == 200, cancelled.text
    await eventually(lambda: _mails(settings, unpaid_address, 1), what="the cancellation")
    [notice] = mails_to(settings, unpaid_address)
    assert notice["Subject"] == f"Order {unpaid['number']} cancelled"
    assert "Reason: Ordered the wrong size" in text_of(notice)
    assert "Nothing is charged for it" in text_of(notice)

    # The logs say a mail went, never to whom, about what or what it said.
    captured = capsys.readouterr()
    logged = captured.out + captured.err + caplog.text
    assert "order_email_sent" in logged
    for secret in (address, unpaid_address, str(notice["Subject"]), "Tracking number: TRK-123"):
        assert secret not in logged, secret


async def test_a_mail_server_that_is_down_holds_up_no_order_and_the_mail_goes_later(
    shape: str, tmp_path: Path
) -> None:
    # Nothing listens on port 1: every attempt is refused, as by a mail server that is down.
    settings = shop_settings(shape, tmp_path, mailer_url="smtp://127.0.0.1:1?timeout=2")
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        address = buyer()
        order = await place_guest_order(client, {SKU: 1}, email=address)
        await pay(client, order)
        await paid(client, admin, order["id"])

        async def tried() -> bool:
            found = await queued(app, order["id"])
            return bool(found) and found[0]["attempts"] >= 1 and found[0]["last_error"]

        await eventually(tried, what="a failed attempt")
        [mail] = await queued(app, order["id"])
        assert mail["status"] == "pending" and mail["next_attempt_at"] > utcnow()
        assert mail["last_error"] in ("ConnectionRefusedError", "OSError")
        # The order goes on: it ships, and the shipping event is queued behind the first.
        shipped = await client.post(
            f"{API}/orders/{order['id']}/fulfillments",
            json={
                "lines": [{"line_id": order["lines"][0]["line_id"], "quantity": 1}],
                "tracking_number": "TRK-9",
            },
            headers=bearer(admin),
        )
        assert shipped.status_code in (200, 201), shipped.text
        assert await status_of(client, admin, order["id"]) == "fulfilled"

        # The mail server is back: the next round after the backoff sends both, once.
        ctx = orders_ctx(app)
        ctx.extras["order_mailer"] = FileMailer(
            settings.data_dir / "mail", sender=settings.mail_from
        )

        async def both_queued() -> bool:
            return len(await queued(app, order["id"])) == 2

        await eventually(both_queued, what="the shipping mail queued")

        async def sent_after_the_backoff() -> bool:
            # Past the first backoff (30 s), within a claim (10 min): a mail another sender
            # holds is not taken from it.
            await send_due_emails(ctx, now=utcnow() + timedelta(minutes=5))
            return {m["status"] for m in await queued(app, order["id"])} == {"sent"}

        await eventually(sent_after_the_backoff, what="both mails sent")
        assert sorted(subjects(settings, address)) == [
            f"Order {order['number']} confirmed",
            f"Order {order['number']} shipped",
        ]
        assert {m["status"] for m in await queued(app, order["id"])} == {"sent"}


async def test_order_mail_can_be_turned_off(shape: str, tmp_path: Path) -> None:
    settings = shop_settings(shape, tmp_path, orders_emails=False)
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        address = buyer()
        order = await place_guest_order(client, {SKU: 1}, email=address)
        await pay(client, order)
        await paid(client, admin, order["id"])
        await app.state.runtime.drain_outboxes()
        await send_due_emails(orders_ctx(app), now=utcnow() + timedelta(days=1))
        assert mails_to(settings, address) == []
        assert await queued(app, order["id"]) == []


async def test_sent_mail_is_forgotten_after_thirty_days(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {SKU: 10})
    address = buyer()
    order = await place_guest_order(client, {SKU: 1}, email=address)
    await pay(client, order)
    await eventually(lambda: _mails(settings, address, 1), what="the confirmation")
    await all_sent(app, order["id"])
    ctx = orders_ctx(app)
    assert await purge_old_emails(ctx, now=utcnow() + timedelta(days=29)) == 0
    assert len(await queued(app, order["id"])) == 1
    assert await purge_old_emails(ctx, now=utcnow() + timedelta(days=31)) == 1
    assert await queued(app, order["id"]) == []


async def test_a_broken_order_link_setting_holds_the_mail_back_instead_of_losing_it(
    shape: str, tmp_path: Path
) -> None:
    settings = shop_settings(shape, tmp_path, orders_email_order_url="{public_url}/o/{id}")
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        address = buyer()
        order = await place_guest_order(client, {SKU: 1}, email=address)
        await pay(client, order)

        async def queued_once() -> bool:
            return len(await queued(app, order["id"])) == 1

        await eventually(queued_once, what="the confirmation queued")
        ctx = orders_ctx(app)
        with pytest.raises(ValueError, match="ORDERS_EMAIL_ORDER_URL"):
            await send_due_emails(ctx)
        [mail] = await queued(app, order["id"])
        assert (mail["status"], mail["attempts"]) == ("pending", 0)
        assert mails_to(settings, address) == []
        # Fixed, the mail goes: by this call or by the periodic job, whichever claims it first.
        ctx.settings.orders_email_order_url = "{public_url}/o/{number}"
        await send_due_emails(ctx)

        async def sent() -> bool:
            return len(mails_to(settings, address)) == 1

        await eventually(sent, what="the confirmation sent")
        [message] = mails_to(settings, address)
        assert f"https://shop.example/o/{order['number']}" in text_of(message)


async def test_a_refund_mail_says_what_was_true_when_the_refund_was_made(
    shape: str, tmp_path: Path
) -> None:
    """Two refunds whose mails wait (here for a mail server that is down): each mail says the
    total refunded once its own refund was made, not the order's when the mail goes, and the
    refund of the rest lists the shipping it gave back, so its items add up."""
    settings = shop_settings(shape, tmp_path, mailer_url="smtp://127.0.0.1:1?timeout=2")
    async with started(settings) as app, client_of(app) as client:
        admin = await staff_tokens(app, client)
        await seed_shop(app, client, admin, {SKU: 10})
        address = buyer()
        order = await place_guest_order(client, {SKU: 3}, email=address)
        payment = await pay(client, order)
        await paid(client, admin, order["id"])
        line_id = order["lines"][0]["line_id"]
        for body in (
            {"lines": [{"line_id": line_id, "quantity": 1}], "reason": "One damaged"},
            {"reason": "Return all"},
        ):
            refunded = await client.post(
                f"{API}/payments/{payment['id']}/refunds",
                json=body,
                headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
            )
            assert refunded.status_code in (200, 201), refunded.text

        async def refunds_queued() -> bool:
            return [m["kind"] for m in await queued(app, order["id"])].count("refund") == 2

        await eventually(refunds_queued, what="both refund mails queued")
        ctx = orders_ctx(app)
        ctx.extras["order_mailer"] = FileMailer(
            settings.data_dir / "mail", sender=settings.mail_from
        )

        async def sent() -> bool:
            await send_due_emails(ctx, now=utcnow() + timedelta(minutes=5))
            return {m["status"] for m in await queued(app, order["id"])} == {"sent"}

        await eventually(sent, what="the mails sent")
        mails = [text_of(m) for m in mails_to(settings, address) if "Refund" in m["Subject"]]
        first, rest = sorted(mails, key=lambda text: "€20.00 for your order" not in text)
        assert "Refunded now     €20.00" in first
        assert "Refunded in all  €20.00" in first, first
        assert "Refunded now     €44.95" in rest
        assert "Refunded in all  €64.95" in rest
        assert f"2 x Product {SKU} — {SKU} ({SKU}) at €20.00  €40.00" in rest, rest
        assert "Shipping and other charges  €4.95" in rest, rest
