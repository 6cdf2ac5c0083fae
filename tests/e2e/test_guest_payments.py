"""End to end over HTTP with identity, catalog, orders and payments in one app: a guest (no
account, only the token of their cart) pays their order, finishes a 3-D Secure action, replays
an idempotent request and cancels; anyone without that cart's token gets the 404 a missing id
gets, and capture, refunds and the payment list stay closed to guests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    CART_TOKEN,
    checkout,
    customer,
    eventually,
    place_guest_order,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["settings"]

SKU = "GUEST-TEE"
CARD = {"card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}
THREE_D_SECURE = {
    "card": {"number": "4000 0025 0000 3155", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    names = ("identity", "catalog", "orders", "payments")
    application = create_app(load_services(names), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


@pytest.fixture
async def admin(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """A signed-in admin, in a shop selling ``SKU``."""
    tokens = await staff_tokens(app, client)
    await seed_shop(app, client, tokens, {SKU: 50})
    return tokens


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def create(
    client: httpx.AsyncClient,
    order_id: str,
    headers: dict[str, str],
    method: dict[str, Any] | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"order_id": order_id}
    if method is not None:
        body["payment_method"] = method
    return await client.post(f"{API}/payments", json=body, headers={**headers, **key()})


async def confirm(
    client: httpx.AsyncClient,
    payment_id: str,
    headers: dict[str, str],
    method: dict[str, Any] | None = None,
) -> httpx.Response:
    body = {"payment_method": method} if method is not None else {}
    return await client.post(
        f"{API}/payments/{payment_id}/confirm", json=body, headers={**headers, **key()}
    )


async def wait_until_paid(
    client: httpx.AsyncClient, order_id: str, headers: dict[str, str]
) -> None:
    async def paid() -> bool:
        response = await client.get(f"{API}/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        return bool(response.json()["status"] == "paid")

    await eventually(paid, what="the guest's order to become paid")


async def test_guest_pays_their_order_with_the_cart_token_and_the_invoice_is_issued(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 2}, email="walk-in@example.com")
    guest = order["_headers"]

    created = await create(client, order["id"], guest)
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["status"] == "requires_payment_method"
    assert (payment["amount"], payment["customer_id"]) == (order["total"], None)

    read = await client.get(f"{API}/payments/{payment['id']}", headers=guest)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == payment["id"]

    confirmed = await confirm(client, payment["id"], guest, CARD)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"
    assert confirmed.json()["card"]["last4"] == "4242"

    await wait_until_paid(client, order["id"], guest)
    invoices = await client.get(
        f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(admin)
    )
    [invoice] = invoices.json()["items"]
    assert invoice["number"].startswith("INV-")
    assert invoice["total"] == order["total"]
    assert invoice["buyer"]["email"] == "walk-in@example.com"

    # The guest reads it with the same cart token, as they read the order.
    theirs = await client.get(
        f"{API}/invoices", params={"order_id": order["id"], "kind": "invoice"}, headers=guest
    )
    assert theirs.status_code == 200, theirs.text
    assert [i["id"] for i in theirs.json()["items"]] == [invoice["id"]]
    one = await client.get(f"{API}/invoices/{invoice['id']}", headers=guest)
    assert one.status_code == 200, one.text
    assert one.json()["number"] == invoice["number"]
    no_credit_notes = await client.get(
        f"{API}/invoices", params={"order_id": order["id"], "kind": "credit_note"}, headers=guest
    )
    assert no_credit_notes.json()["items"] == []


async def test_a_guest_reads_only_the_invoices_of_the_order_their_cart_token_reaches(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    other = await place_guest_order(client, {SKU: 1})
    for placed in (order, other):
        paid = await create(client, placed["id"], placed["_headers"], CARD)
        assert paid.status_code == 201, paid.text
        await wait_until_paid(client, placed["id"], placed["_headers"])
    [invoice] = (
        await client.get(f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(admin))
    ).json()["items"]

    without_order = await client.get(f"{API}/invoices", headers=order["_headers"])
    assert without_order.status_code == 422, without_order.text
    assert without_order.json()["errors"][0]["field"] == "order_id"
    nobody = await client.get(f"{API}/invoices", params={"order_id": order["id"]})
    assert nobody.status_code == 401, nobody.text
    missing = await client.get(f"{API}/invoices/inv_missing", headers=other["_headers"])
    assert missing.status_code == 404
    for headers in ({CART_TOKEN: "not-a-token"}, other["_headers"]):
        listed = await client.get(
            f"{API}/invoices", params={"order_id": order["id"]}, headers=headers
        )
        assert listed.status_code == 404, (headers, listed.text)
        read = await client.get(f"{API}/invoices/{invoice['id']}", headers=headers)
        assert read.status_code == 404, (headers, read.text)
        assert read.json()["detail"] == missing.json()["detail"]


async def test_guest_finishes_a_3d_secure_action_by_confirming_again(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    guest = order["_headers"]

    started = await create(client, order["id"], guest, THREE_D_SECURE)
    assert started.status_code == 201, started.text
    assert started.json()["status"] == "requires_action"
    assert started.json()["next_action"]

    finished = await confirm(client, started.json()["id"], guest)
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] == "succeeded"
    await wait_until_paid(client, order["id"], guest)


async def test_without_the_orders_cart_token_a_guest_payment_answers_like_a_missing_one(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    other = await place_guest_order(client, {SKU: 1})
    payment = (await create(client, order["id"], order["_headers"])).json()
    strangers: list[dict[str, str]] = [
        {},
        {CART_TOKEN: "not-a-token"},
        {CART_TOKEN: ""},
        other["_headers"],  # another guest's real token
    ]
    missing_payment = await client.get(f"{API}/payments/pay_missing", headers=other["_headers"])
    missing_order = await create(client, "ord_missing", other["_headers"])
    assert (missing_payment.status_code, missing_order.status_code) == (404, 404)

    for headers in strangers:
        attempts = {
            "read": await client.get(f"{API}/payments/{payment['id']}", headers=headers),
            "confirm": await confirm(client, payment["id"], headers, CARD),
            "cancel": await client.post(
                f"{API}/payments/{payment['id']}/cancel", headers={**headers, **key()}
            ),
        }
        for what, answer in attempts.items():
            assert answer.status_code == 404, (what, headers, answer.text)
            assert answer.json()["detail"] == missing_payment.json()["detail"], what
        paid_by_stranger = await create(client, order["id"], headers, CARD)
        assert paid_by_stranger.status_code == 404, (headers, paid_by_stranger.text)
        assert paid_by_stranger.json()["detail"] == missing_order.json()["detail"]

    still = await client.get(f"{API}/payments/{payment['id']}", headers=order["_headers"])
    assert still.json()["status"] == "requires_payment_method"


async def test_a_guest_cannot_pay_or_read_a_customers_order_or_payment(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    shopper = await customer(client, "account-holder")
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    cart_id = cart.json()["id"]
    await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": SKU, "quantity": 1}, headers=bearer(shopper)
    )
    placed = await checkout(client, cart_id, bearer(shopper))
    assert placed.status_code == 201, placed.text
    guest = (await place_guest_order(client, {SKU: 1}))["_headers"]

    assert (await create(client, placed.json()["id"], guest, CARD)).status_code == 404
    payment = await create(client, placed.json()["id"], bearer(shopper))
    assert payment.status_code == 201, payment.text
    read = await client.get(f"{API}/payments/{payment.json()['id']}", headers=guest)
    assert read.status_code == 404
    assert (await confirm(client, payment.json()["id"], guest, CARD)).status_code == 404


async def test_a_guest_cannot_capture_refund_or_list_payments(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    guest = order["_headers"]
    body = {"order_id": order["id"], "capture_method": "manual", "payment_method": CARD}
    authorized = await client.post(f"{API}/payments", json=body, headers={**guest, **key()})
    assert authorized.status_code == 201, authorized.text
    assert authorized.json()["status"] == "requires_capture"
    payment_id = authorized.json()["id"]

    listed = await client.get(f"{API}/payments", params={"order_id": order["id"]}, headers=guest)
    captured = await client.post(
        f"{API}/payments/{payment_id}/capture", json={}, headers={**guest, **key()}
    )
    refunded = await client.post(
        f"{API}/payments/{payment_id}/refunds",
        json={"reason": "changed my mind"},
        headers={**guest, **key()},
    )
    refunds = await client.get(f"{API}/payments/{payment_id}/refunds", headers=guest)
    for answer in (listed, captured, refunded, refunds):
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
    read = await client.get(f"{API}/payments/{payment_id}", headers=guest)
    assert read.json()["status"] == "requires_capture"


async def test_a_guest_cancels_their_own_payment(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    guest = order["_headers"]
    payment = (await create(client, order["id"], guest)).json()

    canceled = await client.post(
        f"{API}/payments/{payment['id']}/cancel", headers={**guest, **key()}
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    # With the first intent canceled the order takes a new one.
    again = await create(client, order["id"], guest, CARD)
    assert again.status_code == 201, again.text
    assert again.json()["status"] == "succeeded"


async def test_a_guests_idempotency_key_replays_for_them_and_never_meets_another_guests(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    first = await place_guest_order(client, {SKU: 1})
    second = await place_guest_order(client, {SKU: 1})
    shared = {"Idempotency-Key": f"checkout-pay-{uuid.uuid4().hex[:8]}"}

    async def pay(order: dict[str, Any]) -> httpx.Response:
        return await client.post(
            f"{API}/payments",
            json={"order_id": order["id"], "payment_method": CARD},
            headers={**order["_headers"], **shared},
        )

    original = await pay(first)
    replay = await pay(first)
    assert (original.status_code, replay.status_code) == (201, 201), replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == original.json()
    # The same key from another guest is theirs alone: a payment of their own order.
    theirs = await pay(second)
    assert theirs.status_code == 201, theirs.text
    assert theirs.headers.get("Idempotent-Replayed") is None
    assert theirs.json()["order_id"] == second["id"]
    assert theirs.json()["id"] != original.json()["id"]
    # The same key with another body from the first guest is refused.
    reused = await client.post(
        f"{API}/payments",
        json={"order_id": first["id"]},
        headers={**first["_headers"], **shared},
    )
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("idempotency-key-reuse")


async def test_a_guest_confirms_an_intent_staff_created_for_their_order(
    admin: dict[str, Any], client: httpx.AsyncClient
) -> None:
    order = await place_guest_order(client, {SKU: 1})
    guest = order["_headers"]
    created = await create(client, order["id"], bearer(admin))
    assert created.status_code == 201, created.text

    confirmed = await confirm(client, created.json()["id"], guest, CARD)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "succeeded"
    await wait_until_paid(client, order["id"], guest)
