"""Paying with a payment-method token the provider issued earlier: an unknown token is refused
before any payment exists, and a known one keeps the card's brand, last four and expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ecosistema.payments.providers.base import CardDetails
from ecosistema.payments.service import provider_for
from ecosistema.platform.config import Settings
from tests.integration.test_payments_support import VISA, Shop, card, open_shop

GUEST_TOKEN = "cart-token-of-the-guest"


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


def guest_order(shop: Shop) -> str:
    order = shop.orders.place(customer_id=None)  # type: ignore[arg-type]
    shop.orders.cart_tokens[order["id"]] = GUEST_TOKEN
    return str(order["id"])


async def test_unknown_token_creates_no_payment_and_the_order_can_still_be_paid(
    shop: Shop,
) -> None:
    order_id = guest_order(shop)
    guest = {"X-Cart-Token": GUEST_TOKEN}
    body = {"order_id": order_id, "payment_method": {"token": "tok_nope"}}

    refused = await shop.http.post(
        "/api/v1/payments", json=body, headers={**guest, "Idempotency-Key": "nope"}
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"].endswith("unknown-payment-method")
    assert [e["field"] for e in problem["errors"]] == ["payment_method.token"]
    assert "payment_id" not in problem
    assert await shop.payment_rows() == []

    replayed = await shop.http.post(
        "/api/v1/payments", json=body, headers={**guest, "Idempotency-Key": "nope"}
    )
    assert replayed.status_code == 422
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json() == problem
    assert await shop.payment_rows() == []

    paid = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order_id, "payment_method": card()},
        headers={**guest, "Idempotency-Key": "with-a-card"},
    )
    assert paid.status_code == 201, paid.text
    assert paid.json()["status"] == "succeeded"
    assert [row["status"] for row in await shop.payment_rows()] == ["succeeded"]


async def test_known_token_pays_and_keeps_the_cards_brand_last4_and_expiry(shop: Shop) -> None:
    order = shop.orders.place()
    saved = await provider_for(shop.ctx, "sandbox").tokenize(CardDetails(VISA, 11, 2031, "123"))
    paid = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"], "payment_method": {"token": saved.token}},
        headers={**shop.as_("customer"), "Idempotency-Key": "saved-card"},
    )
    assert paid.status_code == 201, paid.text
    assert paid.json()["status"] == "succeeded"
    assert paid.json()["card"] == {
        "brand": "visa",
        "last4": "4242",
        "exp_month": 11,
        "exp_year": 2031,
    }


async def test_confirming_with_an_unknown_token_leaves_the_intent_as_it_was(shop: Shop) -> None:
    order = shop.orders.place()
    created = await shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"]},
        headers={**shop.as_("customer"), "Idempotency-Key": "intent"},
    )
    payment_id = created.json()["id"]
    refused = await shop.http.post(
        f"/api/v1/payments/{payment_id}/confirm",
        json={"payment_method": {"token": "tok_nope"}},
        headers={**shop.as_("customer"), "Idempotency-Key": "unknown"},
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "payment_method.token"
    [row] = await shop.payment_rows()
    assert (row["status"], row["card"], row["attempt"]) == ("requires_payment_method", None, 0)
    confirmed = await shop.http.post(
        f"/api/v1/payments/{payment_id}/confirm",
        json={"payment_method": card()},
        headers={**shop.as_("customer"), "Idempotency-Key": "a-card"},
    )
    assert confirmed.json()["status"] == "succeeded"
