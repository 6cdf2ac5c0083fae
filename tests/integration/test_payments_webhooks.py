"""Incoming provider webhooks on both shapes: the signature is checked (good, bad, stale), an
event is applied once however often it arrives."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ecosistema.payments.domain import sign_payload
from ecosistema.payments.models import payments
from ecosistema.platform.config import Settings
from tests.conftest import make_settings
from tests.integration.test_payments_support import THREE_DS, Shop, open_shop

SECRET = "whsec_test_secret"


@pytest.fixture
async def shop(shape: str, tmp_path: Path) -> AsyncIterator[Shop]:
    settings: Settings = make_settings(
        shape, tmp_path, payment_webhook_secrets={"sandbox": SECRET, "stripe": SECRET}
    )
    async with open_shop(settings) as opened:
        yield opened


def event(event_id: str, type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"id": event_id, "type": type_, "data": {"object": obj}}).encode()


async def deliver(
    shop: Shop,
    payload: bytes,
    *,
    secret: str = SECRET,
    at: int | None = None,
    provider: str = "sandbox",
) -> Any:
    signature = sign_payload(secret, int(time.time()) if at is None else at, payload)
    return await shop.http.post(
        f"/api/v1/webhooks/providers/{provider}",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


async def waiting_for_action(shop: Shop) -> dict[str, Any]:
    order = shop.orders.place()
    payment: dict[str, Any] = (await shop.pay(order["id"], THREE_DS)).json()
    assert payment["status"] == "requires_action"
    async with shop.ctx.db.read() as session:
        ref = (
            (await session.execute(payments.select().where(payments.c.id == payment["id"])))
            .mappings()
            .one()["provider_ref"]
        )
    payment["provider_ref"] = ref
    return payment


async def test_signed_event_is_applied_once_and_duplicates_acknowledged(shop: Shop) -> None:
    payment = await waiting_for_action(shop)
    payload = event(
        "evt_1",
        "payment_intent.succeeded",
        {"id": payment["provider_ref"], "object": "payment_intent", "amount_received": 3500},
    )
    first = await deliver(shop, payload)
    second = await deliver(shop, payload)

    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "duplicate": False, "outcome": "applied_succeeded"}
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    now = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert now.json()["status"] == "succeeded"
    assert now.json()["captured_amount"] == 3500
    assert len(await shop.events("PaymentSucceeded")) == 1
    assert len(await shop.events("InvoiceIssued")) == 1


async def test_event_signed_with_another_secret_is_refused(shop: Shop) -> None:
    payment = await waiting_for_action(shop)
    payload = event("evt_2", "payment_intent.succeeded", {"id": payment["provider_ref"]})
    response = await deliver(shop, payload, secret="whsec_someone_else")

    assert response.status_code == 401
    assert response.json()["type"].endswith("/invalid-webhook-signature")
    assert await shop.events("PaymentSucceeded") == []


async def test_tampered_payload_is_refused(shop: Shop) -> None:
    payment = await waiting_for_action(shop)
    payload = event("evt_3", "payment_intent.canceled", {"id": payment["provider_ref"]})
    signature = sign_payload(SECRET, int(time.time()), payload)
    response = await shop.http.post(
        "/api/v1/webhooks/providers/sandbox",
        content=payload.replace(b"canceled", b"succeeded"),
        headers={"Stripe-Signature": signature},
    )
    assert response.status_code == 401


async def test_event_older_than_five_minutes_is_refused(shop: Shop) -> None:
    payment = await waiting_for_action(shop)
    payload = event("evt_4", "payment_intent.succeeded", {"id": payment["provider_ref"]})
    stale = await deliver(shop, payload, at=int(time.time()) - 301)
    fresh_enough = await deliver(shop, payload, at=int(time.time()) - 250)

    assert stale.status_code == 401
    assert fresh_enough.status_code == 200


async def test_missing_signature_and_unknown_provider(shop: Shop) -> None:
    payload = event("evt_5", "payment_intent.succeeded", {"id": "pi_x"})
    unsigned = await shop.http.post("/api/v1/webhooks/providers/sandbox", content=payload)
    assert unsigned.status_code == 401
    unknown = await deliver(shop, payload, provider="adyen")
    assert unknown.status_code == 404


async def test_event_for_an_unknown_payment_is_recorded_and_ignored(shop: Shop) -> None:
    response = await deliver(shop, event("evt_6", "payment_intent.succeeded", {"id": "pi_nope"}))
    assert response.json()["outcome"] == "unknown_payment"
    other = await deliver(shop, event("evt_7", "customer.created", {"id": "cus_1"}))
    assert other.json()["outcome"] == "ignored"


async def test_failed_event_marks_the_payment_failed(shop: Shop) -> None:
    payment = await waiting_for_action(shop)
    payload = event(
        "evt_8",
        "payment_intent.payment_failed",
        {
            "id": payment["provider_ref"],
            "last_payment_error": {
                "code": "card_declined",
                "decline_code": "authentication_required",
                "message": "3-D Secure failed.",
            },
        },
    )
    assert (await deliver(shop, payload)).status_code == 200
    [failed] = await shop.events("PaymentFailed")
    assert failed["decline_code"] == "authentication_required"
