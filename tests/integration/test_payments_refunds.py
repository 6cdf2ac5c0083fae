"""Refunds on both shapes: full, partial, by line, several per payment, never above the captured
amount (also when they race), with restock lines and credit notes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ecosistema.payments.service import journal_totals
from ecosistema.platform.config import Settings
from tests.integration.test_payments_support import VISA, Shop, open_shop


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def paid(shop: Shop) -> dict[str, Any]:
    order = shop.orders.place()
    response = await shop.pay(order["id"], VISA)
    assert response.status_code == 201, response.text
    payment: dict[str, Any] = response.json()
    return payment


async def refund(shop: Shop, payment_id: str, body: dict[str, Any], key: str | None = None) -> Any:
    return await shop.http.post(
        f"/api/v1/payments/{payment_id}/refunds",
        json={"reason": "customer request", **body},
        headers={**shop.as_("staff"), "Idempotency-Key": key or f"r-{body}"},
    )


async def test_refund_without_amount_refunds_everything_left(shop: Shop) -> None:
    payment = await paid(shop)
    response = await refund(shop, payment["id"], {})

    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 3500
    assert response.json()["status"] == "succeeded"
    [event] = await shop.events("PaymentRefunded")
    assert event["amount"] == 3500
    assert event["fully_refunded"] is True
    assert event["restock"] is False
    assert event["restock_lines"] == []
    assert event["reason"] == "customer request"


async def test_several_partial_refunds_up_to_the_captured_amount(shop: Shop) -> None:
    payment = await paid(shop)
    assert (await refund(shop, payment["id"], {"amount": 1000})).status_code == 201
    assert (await refund(shop, payment["id"], {"amount": 2000})).status_code == 201
    over = await refund(shop, payment["id"], {"amount": 501})
    assert over.status_code == 409
    assert over.json()["type"].endswith("/refund-exceeds-captured")
    assert over.json()["refundable"] == 500
    last = await refund(shop, payment["id"], {"amount": 500})
    assert last.status_code == 201

    listing = await shop.http.get(
        f"/api/v1/payments/{payment['id']}/refunds", headers=shop.as_("staff")
    )
    assert [r["amount"] for r in listing.json()["items"]] == [1000, 2000, 500]
    events = await shop.events("PaymentRefunded")
    assert [e["fully_refunded"] for e in events] == [False, False, True]
    again = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert again.json()["refunded_amount"] == 3500


async def test_refund_by_line_with_restock_prorates_and_lists_restock_lines(shop: Shop) -> None:
    payment = await paid(shop)
    response = await refund(
        shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": 1}], "restock": True}
    )
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 1000
    assert response.json()["lines"] == [
        {"line_id": "l1", "sku": "SHIRT-M", "quantity": 1, "amount": 1000}
    ]
    [event] = await shop.events("PaymentRefunded")
    assert event["restock_lines"] == [{"sku": "SHIRT-M", "quantity": 1}]
    assert event["fully_refunded"] is False

    second = await refund(shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": 2}]})
    assert second.status_code == 422
    assert second.json()["errors"][0]["field"] == "lines.0.quantity"
    unknown = await refund(shop, payment["id"], {"lines": [{"line_id": "nope", "quantity": 1}]})
    assert unknown.status_code == 422


async def test_refund_needs_the_refund_permission(shop: Shop) -> None:
    payment = await paid(shop)
    response = await shop.http.post(
        f"/api/v1/payments/{payment['id']}/refunds",
        json={"reason": "mine"},
        headers={**shop.as_("customer"), "Idempotency-Key": "self-refund"},
    )
    assert response.status_code == 403


async def test_simultaneous_refunds_never_exceed_the_captured_amount(shop: Shop) -> None:
    payment = await paid(shop)
    responses = await asyncio.gather(
        *(refund(shop, payment["id"], {"amount": 1000}, key=f"race-{i}") for i in range(10))
    )

    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 7
    row = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert row.json()["refunded_amount"] == 3000
    refunds_at_provider = [c for c in await shop.sandbox_charges() if c["kind"] == "refund"]
    assert sum(-c["amount"] for c in refunds_at_provider) == 3000
    totals = await journal_totals(shop.ctx)
    assert sum(totals["EUR"].values()) == 0
    assert totals["EUR"]["refunds"] == 3000


async def test_each_refund_issues_a_credit_note_against_the_invoice(shop: Shop) -> None:
    payment = await paid(shop)
    await refund(shop, payment["id"], {"lines": [{"line_id": "l2", "quantity": 1}]})
    await refund(shop, payment["id"], {"amount": 500})

    listing = await shop.http.get("/api/v1/invoices", headers=shop.as_("customer"))
    documents = listing.json()["items"]
    invoice = next(d for d in documents if d["kind"] == "invoice")
    notes = sorted((d for d in documents if d["kind"] == "credit_note"), key=lambda d: d["number"])
    year = invoice["issued_at"][:4]
    assert [n["number"] for n in notes] == [f"CN-{year}-000001", f"CN-{year}-000002"]
    assert all(n["related_invoice_id"] == invoice["id"] for n in notes)
    assert notes[0]["total"] == -1500
    assert notes[0]["tax_total"] == -260
    assert notes[0]["lines"][0]["sku"] == "MUG"
    assert notes[1]["total"] == -500
    assert len(await shop.events("CreditNoteIssued")) == 2
