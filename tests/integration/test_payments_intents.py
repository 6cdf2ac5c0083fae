"""Payment intents over HTTP on both shapes: test cards, 3-D Secure, manual capture and void,
one charge for simultaneous identical requests, ownership, and cards never stored."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest

from ecosistema.platform.config import Settings
from tests.integration.test_payments_support import (
    DECLINED,
    INSUFFICIENT,
    THREE_DS,
    VISA,
    Shop,
    card,
    open_shop,
)


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def test_visa_test_card_succeeds_with_amount_from_the_order(shop: Shop) -> None:
    order = shop.orders.place()
    response = await shop.pay(order["id"], VISA)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["amount"] == body["captured_amount"] == order["total"] == 3500
    assert body["currency"] == "EUR"
    assert body["card"] == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2099}
    [event] = await shop.events("PaymentSucceeded")
    assert event.pop("occurred_at") == body["captured_at"].replace("Z", "+00:00")
    assert event == {
        "payment_id": body["id"],
        "order_id": order["id"],
        "amount": 3500,
        "currency": "EUR",
        "captured_amount": 3500,
    }
    assert len(await shop.sandbox_charges()) == 1


@pytest.mark.parametrize(
    ("number", "decline_code"),
    [(DECLINED, "generic_decline"), (INSUFFICIENT, "insufficient_funds")],
)
async def test_declining_test_cards_fail_with_their_decline_code(
    shop: Shop, number: str, decline_code: str
) -> None:
    order = shop.orders.place()
    response = await shop.pay(order["id"], number)

    assert response.status_code == 201
    assert response.json()["status"] == "failed"
    assert response.json()["failure_code"] == decline_code
    [event] = await shop.events("PaymentFailed")
    assert event["decline_code"] == decline_code
    assert await shop.sandbox_charges() == []


async def test_failed_payment_can_be_retried_with_another_card(shop: Shop) -> None:
    order = shop.orders.place()
    failed = (await shop.pay(order["id"], DECLINED)).json()
    retried = await shop.http.post(
        f"/api/v1/payments/{failed['id']}/confirm",
        json={"payment_method": card(VISA)},
        headers={**shop.as_("customer"), "Idempotency-Key": "retry-1"},
    )
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "succeeded"
    assert len(await shop.sandbox_charges()) == 1


async def test_requires_action_card_succeeds_once_confirmed(shop: Shop) -> None:
    order = shop.orders.place()
    started = (await shop.pay(order["id"], THREE_DS)).json()
    assert started["status"] == "requires_action"
    assert started["next_action"]["type"] == "use_stripe_sdk"
    assert await shop.events("PaymentSucceeded") == []

    confirmed = await shop.http.post(
        f"/api/v1/payments/{started['id']}/confirm",
        headers={**shop.as_("customer"), "Idempotency-Key": "3ds-done"},
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"
    assert confirmed.json()["captured_amount"] == 3500
    assert len(await shop.events("PaymentSucceeded")) == 1


async def test_manual_capture_takes_part_and_releases_the_rest(shop: Shop) -> None:
    order = shop.orders.place()
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    assert authorized["status"] == "requires_capture"
    assert authorized["amount_capturable"] == 3500
    assert await shop.sandbox_charges() == []

    too_much = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        json={"amount_to_capture": 3501},
        headers={**shop.as_("staff"), "Idempotency-Key": "cap-too-much"},
    )
    assert too_much.status_code == 422
    captured = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        json={"amount_to_capture": 2000},
        headers={**shop.as_("staff"), "Idempotency-Key": "cap-1"},
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["status"] == "succeeded"
    assert captured.json()["captured_amount"] == 2000
    assert captured.json()["amount_capturable"] == 0
    [charge] = await shop.sandbox_charges()
    assert charge["amount"] == 2000
    [event] = await shop.events("PaymentSucceeded")
    assert event["captured_amount"] == 2000


async def test_customer_cannot_capture_their_own_authorization(shop: Shop) -> None:
    order = shop.orders.place()
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    response = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        headers={**shop.as_("customer"), "Idempotency-Key": "cap-self"},
    )
    assert response.status_code == 403


async def test_void_of_an_uncaptured_authorization_cancels_it(shop: Shop) -> None:
    order = shop.orders.place()
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    voided = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/cancel",
        headers={**shop.as_("customer"), "Idempotency-Key": "void-1"},
    )
    assert voided.status_code == 200, voided.text
    assert voided.json()["status"] == "canceled"
    assert voided.json()["amount_capturable"] == 0
    assert voided.json()["cancellation_reason"] is None

    capture = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        headers={**shop.as_("staff"), "Idempotency-Key": "cap-after-void"},
    )
    assert capture.status_code == 409
    assert await shop.sandbox_charges() == []
    # The order may be paid again once its payment is canceled.
    assert (await shop.pay(order["id"], VISA)).json()["status"] == "succeeded"


async def test_cancellation_reason_is_kept_on_the_payment(shop: Shop) -> None:
    authorized = (await shop.pay(shop.orders.place()["id"], VISA, capture_method="manual")).json()
    assert authorized["cancellation_reason"] is None
    canceled = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/cancel",
        json={"reason": "Customer ordered twice"},
        headers={**shop.as_("customer"), "Idempotency-Key": "void-why"},
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["cancellation_reason"] == "Customer ordered twice"
    shown = await shop.http.get(f"/api/v1/payments/{authorized['id']}", headers=shop.as_("staff"))
    assert shown.json()["cancellation_reason"] == "Customer ordered twice"


@pytest.mark.parametrize("reason", ["", "   ", "tab\u0007bell", "a" * 256])
async def test_unreadable_cancellation_reason_is_refused_at_reason(shop: Shop, reason: str) -> None:
    authorized = (await shop.pay(shop.orders.place()["id"], VISA, capture_method="manual")).json()
    refused = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/cancel",
        json={"reason": reason},
        headers={**shop.as_("customer"), "Idempotency-Key": "void-bad-why"},
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["reason"]
    shown = await shop.http.get(f"/api/v1/payments/{authorized['id']}", headers=shop.as_("staff"))
    assert shown.json()["status"] == "requires_capture"


async def test_captured_payment_cannot_be_canceled(shop: Shop) -> None:
    order = shop.orders.place()
    paid = (await shop.pay(order["id"], VISA)).json()
    response = await shop.http.post(
        f"/api/v1/payments/{paid['id']}/cancel",
        headers={**shop.as_("customer"), "Idempotency-Key": "cancel-paid"},
    )
    assert response.status_code == 409
    assert response.json()["type"].endswith("/illegal-payment-transition")


async def test_twenty_simultaneous_identical_payment_requests_give_one_charge(shop: Shop) -> None:
    order = shop.orders.place()
    responses = await asyncio.gather(
        *(shop.pay(order["id"], VISA, key="pay-order-once") for _ in range(20))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert len(await shop.sandbox_charges()) == 1
    assert len(await shop.payment_rows()) == 1
    assert len(await shop.events("PaymentSucceeded")) == 1


async def test_second_payment_for_a_paid_order_is_refused(shop: Shop) -> None:
    order = shop.orders.place()
    await shop.pay(order["id"], VISA)
    again = await shop.pay(order["id"], VISA)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/order-already-has-payment")
    assert len(await shop.sandbox_charges()) == 1


async def test_customer_cannot_pay_or_see_someone_elses_order(shop: Shop) -> None:
    order = shop.orders.place()
    foreign = await shop.pay(order["id"], VISA, who="other")
    assert foreign.status_code == 404

    paid = (await shop.pay(order["id"], VISA)).json()
    peek = await shop.http.get(f"/api/v1/payments/{paid['id']}", headers=shop.as_("other"))
    assert peek.status_code == 404
    listing = await shop.http.get("/api/v1/payments", headers=shop.as_("other"))
    assert listing.json()["items"] == []


async def test_amount_sent_by_the_payer_is_refused(shop: Shop) -> None:
    order = shop.orders.place()
    response = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"], "amount": 1, "payment_method": card()},
        headers={**shop.as_("customer"), "Idempotency-Key": "cheap"},
    )
    assert response.status_code == 422
    assert await shop.payment_rows() == []


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"number": "4242424242424241"}, "payment_method.card.number"),
        ({"exp_month": 1, "exp_year": 2001}, "payment_method.card.exp_year"),
        ({"cvc": "12a"}, "payment_method.card.cvc"),
        # Numbers as text are refused, as everywhere else in the API.
        ({"exp_month": "12"}, "payment_method.card.exp_month"),
        ({"exp_year": "2099"}, "payment_method.card.exp_year"),
    ],
)
async def test_invalid_card_is_refused_with_its_field_path(
    shop: Shop, patch: dict[str, object], field: str
) -> None:
    order = shop.orders.place()
    method = card()
    method["card"].update(patch)
    response = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"], "payment_method": method},
        headers={**shop.as_("customer"), "Idempotency-Key": f"bad-{field}"},
    )
    assert response.status_code == 422
    assert field in {e["field"] for e in response.json()["errors"]}
    assert await shop.payment_rows() == []


async def test_card_number_is_never_stored(shop: Shop) -> None:
    order = shop.orders.place()
    await shop.pay(order["id"], VISA)
    dump = json.dumps(await shop.payment_rows(), default=str)
    assert VISA not in dump
    async with shop.ctx.db.read() as session:
        for table in shop.ctx.service.metadata.sorted_tables:
            rows = (await session.execute(table.select())).all()
            assert VISA not in json.dumps([list(r) for r in rows], default=str), table.name


async def test_intent_without_a_method_can_be_canceled_and_the_order_paid_afresh(
    shop: Shop,
) -> None:
    order = shop.orders.place()
    created = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"]},
        headers={**shop.as_("customer"), "Idempotency-Key": "bare"},
    )
    assert created.json()["status"] == "requires_payment_method"
    canceled = await shop.http.post(
        f"/api/v1/payments/{created.json()['id']}/cancel",
        headers={**shop.as_("customer"), "Idempotency-Key": "bare-cancel"},
    )
    assert canceled.json()["status"] == "canceled"
    assert (await shop.pay(order["id"], VISA)).json()["status"] == "succeeded"


async def test_order_that_is_not_awaiting_payment_cannot_be_paid(shop: Shop) -> None:
    order = shop.orders.place()
    order["status"] = "cancelled"
    response = await shop.pay(order["id"], VISA)
    assert response.status_code == 409
    assert response.json()["type"].endswith("/order-not-payable")


async def test_payments_page_by_cursor_and_a_tampered_cursor_is_refused(shop: Shop) -> None:
    for _ in range(3):
        assert (await shop.pay(shop.orders.place()["id"])).status_code == 201
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = (
            await shop.http.get("/api/v1/payments", params=params, headers=shop.as_("staff"))
        ).json()
        seen += [p["id"] for p in page["items"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": page["next_cursor"]}
    assert len(seen) == len(set(seen)) == 3

    overflow = base64.urlsafe_b64encode(b'[{"t":"2026-01-01T00:00:00+00:00"},7]').decode()
    for cursor in ("junk", overflow):
        refused = await shop.http.get(
            "/api/v1/payments", params={"cursor": cursor}, headers=shop.as_("staff")
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"].endswith("invalid-cursor")
        assert refused.json()["errors"][0]["field"] == "cursor"
