"""Incoming provider webhooks on both shapes: the signature is checked (good, bad, stale), an
event is applied once however often it arrives."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ecosistema.payments.domain import sign_payload
from ecosistema.payments.models import journal, payments, provider_events
from ecosistema.payments.providers.base import ProviderUnavailable
from ecosistema.payments.service import use_provider
from ecosistema.platform.config import Settings
from tests.conftest import make_settings
from tests.integration.test_payments_support import THREE_DS, VISA, Shop, open_shop

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


@pytest.mark.parametrize(
    ("sent", "kept"),
    [({"cancellation_reason": "abandoned"}, "abandoned"), ({}, "Canceled at the provider.")],
)
async def test_payment_canceled_at_the_provider_keeps_why(
    shop: Shop, sent: dict[str, Any], kept: str
) -> None:
    payment = await waiting_for_action(shop)
    payload = event("evt_c", "payment_intent.canceled", {"id": payment["provider_ref"], **sent})
    delivered = await deliver(shop, payload)

    assert delivered.json()["outcome"] == "applied_canceled", delivered.text
    shown = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert (shown.json()["status"], shown.json()["cancellation_reason"]) == ("canceled", kept)


@pytest.mark.parametrize(
    "signature",
    ["t={now},v1=\u00e9", "t=\u00b2,v1=ab", "t={now},v1=\u00e9" + "0" * 63],
)
async def test_signature_header_in_another_script_is_refused_not_an_error(
    shop: Shop, signature: str
) -> None:
    response = await shop.http.post(
        "/api/v1/webhooks/providers/sandbox",
        content=b'{"id":"e1","type":"charge.updated"}',
        headers={b"Stripe-Signature": signature.format(now=int(time.time())).encode("latin-1")},
    )
    assert response.status_code == 401, response.text
    assert response.json()["type"].endswith("/invalid-webhook-signature")


async def test_success_event_the_provider_contradicts_changes_nothing(shop: Shop) -> None:
    # An authorization waiting for capture: the provider holds 35.00, captured nothing.
    order = shop.orders.place()
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    assert authorized["status"] == "requires_capture"
    async with shop.ctx.db.read() as session:
        ref = await session.scalar(
            select(payments.c.provider_ref).where(payments.c.id == authorized["id"])
        )
    payload = event("evt_w", "payment_intent.succeeded", {"id": ref, "amount_received": 1})
    delivered = await deliver(shop, payload)

    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["outcome"] == "ignored_provider_says_requires_capture"
    shown = await shop.http.get(f"/api/v1/payments/{authorized['id']}", headers=shop.as_("staff"))
    assert (shown.json()["status"], shown.json()["captured_amount"]) == ("requires_capture", 0)
    assert shown.json()["amount_capturable"] == authorized["amount"]
    async with shop.ctx.db.read() as session:
        assert (await session.execute(select(journal))).first() is None
    # Staff can still capture it, for the amount the provider holds.
    captured = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        headers={**shop.as_("staff"), "Idempotency-Key": "cap-after-event"},
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["captured_amount"] == authorized["amount"]


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


@pytest.mark.parametrize(
    "document",
    [
        {"id": "evt_any", "type": "charge.refunded", "data": {}},
        {"id": "evt_any", "type": "charge.refunded", "data": []},
        {"id": "evt_any", "type": "payout.paid"},
    ],
    ids=["empty-data", "data-not-an-object", "no-data"],
)
async def test_event_the_platform_does_not_act_on_is_recorded_whatever_its_data(
    shop: Shop, document: dict[str, Any]
) -> None:
    payload = json.dumps(document).encode()
    first = await deliver(shop, payload)
    again = await deliver(shop, payload)

    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "duplicate": False, "outcome": "ignored"}
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    async with shop.ctx.db.read() as session:
        recorded = (await session.execute(select(provider_events))).mappings().all()
    assert [(r["event_id"], r["type"], r["outcome"]) for r in recorded] == [
        ("evt_any", document["type"], "ignored")
    ]


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        (b"not json", ["body"]),
        (b"[1, 2]", ["body"]),
        (b"{}", ["id", "type"]),
        (json.dumps({"id": 7, "type": "", "data": {}}).encode(), ["id", "type"]),
        (
            json.dumps({"id": "evt_m", "type": "payment_intent.succeeded", "data": {}}).encode(),
            ["data.object"],
        ),
        (
            json.dumps({"id": "evt_m", "type": "payment_intent.canceled"}).encode(),
            ["data"],
        ),
        (
            event(
                "evt_m",
                "payment_intent.payment_failed",
                {"amount_received": "35.00", "last_payment_error": "declined"},
            ),
            [
                "data.object.id",
                "data.object.amount_received",
                "data.object.last_payment_error",
            ],
        ),
        (
            event(
                "evt_m",
                "payment_intent.succeeded",
                {
                    "id": "pi_1",
                    "latest_charge": {"balance_transaction": {"id": 1, "fee": -5}},
                },
            ),
            [
                "data.object.latest_charge.balance_transaction.fee",
                "data.object.latest_charge.balance_transaction.id",
            ],
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-id-or-type",
        "id-and-type-of-the-wrong-kind",
        "acted-on-type-without-object",
        "acted-on-type-without-data",
        "payment-intent-fields",
        "balance-transaction-fields",
    ],
)
async def test_malformed_event_is_a_422_naming_each_field_at_fault(
    shop: Shop, payload: bytes, fields: list[str]
) -> None:
    response = await deliver(shop, payload)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == fields
    async with shop.ctx.db.read() as session:
        assert (await session.execute(select(provider_events))).first() is None


class SandboxNotAnswering:
    """The sandbox as seen while it cannot be asked for a payment's current state."""

    name = "sandbox"

    async def confirm(self, ref: str, *, idempotency_key: str) -> Any:
        raise ProviderUnavailable("The sandbox does not answer.")


async def test_success_event_read_as_sent_when_the_provider_cannot_be_asked(
    shop: Shop,
) -> None:
    payment = await waiting_for_action(shop)
    use_provider(shop.ctx, SandboxNotAnswering())  # type: ignore[arg-type]
    payload = event(
        "evt_9",
        "payment_intent.succeeded",
        {
            "id": payment["provider_ref"],
            "amount_received": 3500,
            "latest_charge": {"id": "ch_1", "balance_transaction": {"fee": 74}},
        },
    )
    delivered = await deliver(shop, payload)

    assert delivered.json()["outcome"] == "applied_succeeded", delivered.text
    async with shop.ctx.db.read() as session:
        booked = (await session.execute(select(journal.c.provider_ref, journal.c.account))).all()
    # A balance transaction without an id books no reference, not the text "None".
    assert booked and {ref for ref, _ in booked} == {None}


async def test_failure_event_with_overlong_code_and_message_is_recorded_cut_to_fit(
    shop: Shop,
) -> None:
    payment = await waiting_for_action(shop)
    payload = event(
        "evt_10",
        "payment_intent.payment_failed",
        {
            "id": payment["provider_ref"],
            "last_payment_error": {"decline_code": "d" * 100, "message": "m" * 400},
        },
    )
    delivered = await deliver(shop, payload)

    assert delivered.status_code == 200, delivered.text
    failed = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert failed.json()["status"] == "failed"
    assert (failed.json()["failure_code"], failed.json()["failure_message"]) == (
        "d" * 64,
        "m" * 255,
    )
