"""Webhook deliveries on both shapes, against a real HTTP receiver on loopback: recorded by the
consumer and sent by the sender only, signed, retried with backoff on a driven clock, given up
after the retry window, replayed, claimed exactly once by concurrent senders."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.runtime import Runtime
from ecosistema.webhooks import descriptor, dispatch_due, verify_signature
from ecosistema.webhooks.delivery import claim_due
from ecosistema.webhooks.domain import InvalidSignature
from ecosistema.webhooks.models import deliveries as deliveries_table
from ecosistema.webhooks.service import purge_finished, record_event
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer, fast_settings
from tests.integration.test_orders_support import eventually, staff_tokens
from tests.integration.test_webhooks_support import (
    Receiver,
    app,
    deliveries,
    delivery,
    publish,
    receiver,
    services,
    settings,
    subscribe,
    webhooks_ctx,
)

__all__ = ["app", "receiver", "settings"]

ORDER = {"order_id": "o1", "number": "ORD-1", "total": 4495, "currency": "EUR"}


async def recorded(
    client: httpx.AsyncClient, admin: dict[str, Any], count: int, **params: Any
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        found[:] = await deliveries(client, admin, **params)
        return len(found) >= count

    await eventually(enough, what=f"{count} webhook deliveries to be recorded")
    return found


async def test_an_event_is_recorded_then_sent_signed_with_the_subscription_secret(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    assert sub["secret"].startswith("whsec_")
    assert (
        "secret"
        not in (
            await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
        ).json()
    )

    envelope = await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    assert pending["status"] == "pending" and pending["event_id"] == envelope.id
    assert pending["event_type"] == "order.paid"
    assert receiver.requests == []  # the consumer only records; the sender sends

    assert await dispatch_due(webhooks_ctx(app)) == 1
    [request] = receiver.requests
    body = request.json()
    assert body["id"] == envelope.id and body["type"] == "order.paid"
    assert body["data"] == ORDER and body["created"] == int(envelope.occurred_at.timestamp())
    assert request.headers["ecosistema-event-id"] == envelope.id
    verify_signature(request.body, request.headers["ecosistema-signature"], sub["secret"])

    detail = await delivery(client, admin, pending["id"])
    assert detail["status"] == "succeeded" and detail["attempt_count"] == 1
    [attempt] = detail["attempts"]
    assert attempt["succeeded"] and attempt["status_code"] == 200
    assert attempt["response_headers"]["x-receiver"] == "test"
    assert '"received": true' in attempt["response_body"]
    assert detail["payload"] == body


async def test_a_tampered_body_or_timestamp_fails_verification(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["*"])
    await publish(app, "StockLow", {"sku": "A", "available": 1, "threshold": 5}, source="catalog")
    await recorded(client, admin, 1)
    await dispatch_due(webhooks_ctx(app))
    [request] = receiver.requests
    header = request.headers["ecosistema-signature"]
    timestamp = verify_signature(request.body, header, sub["secret"])

    tampered_body = request.body.replace(b'"available":1', b'"available":9')
    assert tampered_body != request.body
    for body, signed in (
        (tampered_body, header),
        (request.body, header.replace(f"t={timestamp}", f"t={timestamp + 1}")),
    ):
        try:
            verify_signature(body, signed, sub["secret"])
        except InvalidSignature:
            continue
        raise AssertionError("a tampered delivery verified")


async def test_only_subscribed_event_types_are_delivered(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    paid_only = await subscribe(client, admin, receiver.url, ["order.paid"])
    everything = await subscribe(client, admin, receiver.url, ["*"])
    await publish(app, "OrderPlaced", ORDER)
    await publish(app, "OrderPaid", ORDER)
    found = await recorded(client, admin, 3)
    by_sub = {(d["subscription_id"], d["event_type"]) for d in found}
    assert by_sub == {
        (paid_only["id"], "order.paid"),
        (everything["id"], "order.paid"),
        (everything["id"], "order.placed"),
    }
    only = await deliveries(client, admin, subscription_id=paid_only["id"])
    assert [d["event_type"] for d in only] == ["order.paid"]
    placed = await deliveries(client, admin, event_type="order.placed")
    assert [d["subscription_id"] for d in placed] == [everything["id"]]


async def test_a_duplicate_bus_event_creates_no_second_delivery(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    envelope = await publish(app, "OrderPaid", ORDER)
    await recorded(client, admin, 1)
    await app.state.runtime.bus.publish(envelope)  # redelivered by the bus
    await app.state.runtime.bus.publish(EventEnvelope.model_validate(envelope.model_dump()))
    # Even past the consumer's processed-events record, recording the same event is a no-op.
    ctx = webhooks_ctx(app)
    async with ctx.db.transaction() as session:
        assert await record_event(ctx, session, envelope) == 0
    await publish(app, "OrderPaid", {**ORDER, "order_id": "o2"})
    found = await recorded(client, admin, 2)
    assert sorted(d["event_id"] for d in found).count(envelope.id) == 1
    assert len(found) == 2


async def test_a_failing_receiver_is_retried_with_backoff_then_given_up_after_the_window(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    receiver.status = 503
    ctx = webhooks_ctx(app)
    rng = random.Random(7)
    start = datetime.fromisoformat(pending["created_at"])
    deadline = datetime.fromisoformat(pending["deadline"])
    assert deadline - start == timedelta(seconds=settings.webhooks_retry_window_seconds)

    now = start
    waits: list[float] = []
    while True:
        assert await dispatch_due(ctx, now=now, rng=rng) == 1
        # Nothing more is due until the scheduled retry.
        assert await dispatch_due(ctx, now=now + timedelta(seconds=1), rng=rng) == 0
        detail = await delivery(client, admin, pending["id"])
        if detail["status"] != "pending":
            break
        next_at = datetime.fromisoformat(detail["next_attempt_at"])
        assert now < next_at <= deadline
        waits.append((next_at - now).total_seconds())
        now = next_at

    assert detail["status"] == "failed" and detail["next_attempt_at"] is None
    assert now == deadline  # the last attempt is made at the deadline itself, then no more
    attempts = detail["attempts"]
    assert len(attempts) == len(waits) + 1 == detail["attempt_count"] >= 8
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["status_code"] == 503 and not a["succeeded"] for a in attempts)
    assert all(a["error"] == "the receiver answered 503" for a in attempts)
    # Exponential: each wait is within [half, full] of 30 s * 2**(n-1), capped at 4 h.
    for n, wait in enumerate(waits[:8], start=1):
        ceiling = min(4 * 3600, 30 * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert len(receiver.requests) == len(attempts)
    assert {r.headers["ecosistema-delivery-attempt"] for r in receiver.requests} == {
        str(a["number"]) for a in attempts
    }

    # A day of failures disables the subscription, with the reason.
    got = (
        await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    ).json()
    assert got["status"] == "disabled" and "failed since" in got["disabled_reason"]
    await publish(app, "OrderPaid", {**ORDER, "order_id": "o-after"})
    assert len(await deliveries(client, admin)) == 1  # disabled: nothing new is recorded

    # Replay is refused while disabled; once enabled, it makes one new attempt that succeeds.
    replay_url = f"{API}/webhook-deliveries/{pending['id']}/replay"
    refused = await client.post(replay_url, headers=bearer(admin))
    assert refused.status_code == 409, refused.text
    enabled = await client.patch(
        f"{API}/webhook-subscriptions/{sub['id']}",
        json={"status": "enabled"},
        headers=bearer(admin),
    )
    assert enabled.json()["status"] == "enabled" and enabled.json()["disabled_reason"] is None
    receiver.status = 200
    replayed = await client.post(replay_url, headers=bearer(admin))
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["status"] == "pending"
    assert await dispatch_due(ctx) == 1
    final = await delivery(client, admin, pending["id"])
    assert final["status"] == "succeeded" and final["delivered_at"] is not None
    assert len(final["attempts"]) == len(attempts) + 1 and final["attempts"][-1]["succeeded"]
    assert receiver.requests[-1].json()["id"] == final["event_id"]  # same id: receivers dedupe


async def test_a_success_between_failures_keeps_the_subscription_enabled(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    ctx = webhooks_ctx(app)
    receiver.script = [500, 500, 200]
    now = datetime.fromisoformat(pending["created_at"])
    for _ in range(3):
        await dispatch_due(ctx, now=now)
        detail = await delivery(client, admin, pending["id"])
        if detail["next_attempt_at"]:
            now = datetime.fromisoformat(detail["next_attempt_at"])
    assert detail["status"] == "succeeded" and detail["attempt_count"] == 3
    got = (
        await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    ).json()
    assert got["status"] == "enabled" and got["failing_since"] is None


async def test_an_unanswered_attempt_times_out_and_is_recorded_as_failed(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    receiver.hang = True
    ctx = webhooks_ctx(app)
    ctx.settings = ctx.settings.model_copy(update={"webhooks_timeout_seconds": 0.3})
    await dispatch_due(ctx)
    detail = await delivery(client, admin, pending["id"])
    [attempt] = detail["attempts"]
    assert detail["status"] == "pending" and not attempt["succeeded"]
    assert attempt["status_code"] is None and "timed out" in attempt["error"]


async def test_a_sender_that_died_mid_send_loses_its_lease_and_the_delivery_is_sent_again(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    ctx = webhooks_ctx(app)
    now = utcnow()
    [held] = await claim_due(ctx, now=now, limit=10)  # and then this sender "dies"
    assert await claim_due(ctx, now=now, limit=10) == []
    assert await dispatch_due(ctx, now=now) == 0
    later = now + timedelta(seconds=ctx.settings.webhooks_timeout_seconds + 61)
    assert await dispatch_due(ctx, now=later) == 1
    detail = await delivery(client, admin, pending["id"])
    assert detail["status"] == "succeeded"
    assert [a["number"] for a in detail["attempts"]] == [held.number + 1]


async def test_two_concurrent_senders_never_send_the_same_attempt_twice(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    count = 40
    for i in range(count):
        await publish(app, "OrderPaid", {**ORDER, "order_id": f"o{i}"})
    await recorded(client, admin, count, limit=100)

    # A second process: its own runtime, engine and connection pool on the same database.
    other = Runtime(settings, [descriptor])
    await other.start(migrate=False, background=False)
    try:
        first, second = webhooks_ctx(app), other.contexts["webhooks"]
        sent = await asyncio.gather(dispatch_due(first), dispatch_due(second))
    finally:
        await other.stop()
    assert sum(sent) == count
    ids = [r.json()["id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == count
    ctx = webhooks_ctx(app)
    async with ctx.db.read() as session:
        rows = (await session.execute(select(deliveries_table))).mappings().all()
    assert all(r["status"] == "succeeded" and r["attempt_count"] == 1 for r in rows)


async def test_concurrent_claims_from_two_processes_never_overlap(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    count = 30
    for i in range(count):
        await publish(app, "OrderPaid", {**ORDER, "order_id": f"o{i}"})
    await recorded(client, admin, count, limit=100)
    others = [Runtime(settings, [descriptor]) for _ in range(2)]
    for other in others:
        await other.start(migrate=False, background=False)
    try:
        contexts = [webhooks_ctx(app)] + [o.contexts["webhooks"] for o in others]
        now = utcnow()
        claimed: list[str] = []
        while True:
            batches = await asyncio.gather(*(claim_due(c, now=now, limit=4) for c in contexts))
            taken = [c.delivery_id for batch in batches for c in batch]
            if not taken:
                break
            claimed.extend(taken)
    finally:
        for other in others:
            await other.stop()
    assert len(claimed) == len(set(claimed)) == count


async def test_a_rotated_secret_signs_alongside_the_old_one_during_the_overlap(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    rotated = await client.post(
        f"{API}/webhook-subscriptions/{sub['id']}/rotate-secret", headers=bearer(admin)
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != sub["secret"] and rotated.json()["previous_secret_expires_at"]
    await publish(app, "OrderPaid", ORDER)
    await recorded(client, admin, 1)
    await dispatch_due(webhooks_ctx(app))
    request = receiver.requests[-1]
    header = request.headers["ecosistema-signature"]
    assert header.count("v1=") == 2
    verify_signature(request.body, header, new_secret)
    verify_signature(request.body, header, sub["secret"])

    again = await client.post(
        f"{API}/webhook-subscriptions/{sub['id']}/rotate-secret",
        json={"expire_previous_in_seconds": 0},
        headers=bearer(admin),
    )
    newest = again.json()["secret"]
    await publish(app, "OrderPaid", {**ORDER, "order_id": "o2"})
    await recorded(client, admin, 2)
    await dispatch_due(webhooks_ctx(app))
    header = receiver.requests[-1].headers["ecosistema-signature"]
    assert header.count("v1=") == 1
    verify_signature(receiver.requests[-1].body, header, newest)
    try:
        verify_signature(receiver.requests[-1].body, header, new_secret)
    except InvalidSignature:
        pass
    else:
        raise AssertionError("the secret rotated away without overlap still verifies")


async def test_the_test_endpoint_sends_a_ping_at_once_and_does_not_retry_it(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    ok = await client.post(f"{API}/webhook-subscriptions/{sub['id']}/test", headers=bearer(admin))
    assert ok.status_code == 200, ok.text
    assert ok.json()["event_type"] == "ping" and ok.json()["status"] == "succeeded"
    [request] = receiver.requests
    assert request.json()["type"] == "ping"
    assert request.json()["data"]["subscription_id"] == sub["id"]
    verify_signature(request.body, request.headers["ecosistema-signature"], sub["secret"])

    receiver.status = 500
    failed = await client.post(
        f"{API}/webhook-subscriptions/{sub['id']}/test", headers=bearer(admin)
    )
    assert failed.json()["status"] == "failed"
    assert failed.json()["attempts"][0]["status_code"] == 500
    assert await dispatch_due(webhooks_ctx(app), now=utcnow() + timedelta(days=1)) == 0
    got = (
        await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    ).json()
    assert got["failing_since"] is None  # a failed test does not count against the endpoint
    missing = await client.post(f"{API}/webhook-subscriptions/nope/test", headers=bearer(admin))
    assert missing.status_code == 404


async def test_deliveries_are_listed_newest_first_a_page_at_a_time(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    for i in range(5):
        await publish(app, "OrderPaid", {**ORDER, "order_id": f"o{i}"})
    everything = await recorded(client, admin, 5)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"{API}/webhook-deliveries", params=params, headers=bearer(admin))
        assert page.status_code == 200, page.text
        seen.extend(d["id"] for d in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [d["id"] for d in everything]
    bad = await client.get(
        f"{API}/webhook-deliveries", params={"cursor": "garbage"}, headers=bearer(admin)
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    pending = await deliveries(client, admin, status="pending")
    assert len(pending) == 5
    await dispatch_due(webhooks_ctx(app))
    assert await deliveries(client, admin, status="pending") == []
    assert len(await deliveries(client, admin, status="succeeded")) == 5


async def test_deleting_a_subscription_removes_its_deliveries(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    await dispatch_due(webhooks_ctx(app))
    gone = await client.delete(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    assert gone.status_code == 204
    assert (
        await client.get(f"{API}/webhook-deliveries/{pending['id']}", headers=bearer(admin))
    ).status_code == 404
    assert (
        await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    ).status_code == 404


async def test_the_background_sender_delivers_without_being_called(
    shape: str, tmp_path: Path, receiver: Receiver
) -> None:
    quick = fast_settings(shape, tmp_path, webhooks_dispatch_interval_seconds=0.05)
    application = create_app(services("identity", "webhooks"), quick)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                admin = await staff_tokens(application, client)
                await subscribe(client, admin, receiver.url, ["stock.low"])
                envelope = await publish(
                    application, "StockLow", {"sku": "A", "available": 1}, source="catalog"
                )

                async def received() -> bool:
                    return any(r.json()["id"] == envelope.id for r in receiver.requests)

                await eventually(received, what="the background sender to deliver")
    finally:
        await drop_test_schemas(quick)


async def test_finished_deliveries_are_purged_after_the_retention_and_pending_ones_kept(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await subscribe(client, admin, receiver.url, ["order.paid"])
    await publish(app, "OrderPaid", ORDER)
    [done] = await recorded(client, admin, 1)
    ctx = webhooks_ctx(app)
    await dispatch_due(ctx)
    receiver.status = 500
    await publish(app, "OrderPaid", {**ORDER, "order_id": "o2"})
    await recorded(client, admin, 2)
    await dispatch_due(ctx)  # fails: stays pending for its retries
    retention = timedelta(days=settings.webhooks_retention_days)
    assert await purge_finished(ctx, now=utcnow() + retention - timedelta(hours=1)) == 0
    assert await purge_finished(ctx, now=utcnow() + retention + timedelta(hours=1)) == 1
    [left] = await deliveries(client, admin)
    assert left["id"] != done["id"] and left["status"] == "pending"
    gone = await client.get(f"{API}/webhook-deliveries/{done['id']}", headers=bearer(admin))
    assert gone.status_code == 404


async def test_events_no_enabled_subscription_wants_cost_no_write_and_leave_no_record(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    ctx = webhooks_ctx(app)
    consumer = "webhooks.deliveries"
    processed = ctx.outbox.processed

    async def recorded_ids() -> set[str]:
        async with ctx.db.read() as session:
            rows = await session.execute(
                select(processed.c.event_id).where(processed.c.consumer == consumer)
            )
            return {row[0] for row in rows}

    await publish(app, "OrderPaid", ORDER)  # no subscription at all
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.refunded"])
    await publish(app, "OrderPaid", ORDER)  # a subscription, to another event type
    assert await recorded_ids() == set()
    assert await deliveries(client, admin) == []

    changed = await client.patch(
        f"{API}/webhook-subscriptions/{sub['id']}",
        json={"event_types": ["order.paid"]},
        headers=bearer(admin),
    )
    assert changed.status_code == 200, changed.text
    wanted = await publish(app, "OrderPaid", ORDER)
    [pending] = await recorded(client, admin, 1)
    assert pending["event_id"] == wanted.id
    assert await recorded_ids() == {wanted.id}
