"""Invoices on both shapes: issued on capture with seller, buyer, lines and tax breakdown;
numbering gapless and unique per series and year even when issued concurrently; customers see
only their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ecosistema.payments.service import next_document_number
from ecosistema.platform.config import Settings
from tests.integration.test_payments_support import OTHER_CUSTOMER, VISA, Shop, open_shop


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def test_capture_issues_an_invoice_with_seller_buyer_lines_and_taxes(shop: Shop) -> None:
    order = shop.orders.place()
    payment = (await shop.pay(order["id"], VISA)).json()

    listing = await shop.http.get("/api/v1/invoices", headers=shop.as_("customer"))
    [summary] = listing.json()["items"]
    invoice = (
        await shop.http.get(f"/api/v1/invoices/{summary['id']}", headers=shop.as_("customer"))
    ).json()
    year = invoice["issued_at"][:4]
    assert invoice["number"] == f"INV-{year}-000001"
    assert invoice["kind"] == "invoice"
    assert invoice["payment_id"] == payment["id"]
    assert invoice["seller"]["name"] == shop.ctx.settings.seller_name
    assert invoice["seller"]["tax_id"] == shop.ctx.settings.seller_tax_id
    assert invoice["buyer"]["email"] == "buyer@example.com"
    assert [(line["sku"], line["quantity"], line["total"]) for line in invoice["lines"]] == [
        ("SHIRT-M", 2, 2000),
        ("MUG", 1, 1500),
    ]
    assert invoice["total"] == 3500
    assert invoice["tax_total"] == 607
    assert invoice["subtotal"] == 3500 - 607
    assert sum(b["tax"] for b in invoice["tax_breakdown"]) == 607
    assert sum(b["net"] for b in invoice["tax_breakdown"]) == 2893
    [event] = await shop.events("InvoiceIssued")
    assert event["number"] == invoice["number"]


DISCOUNTED = [
    {
        "line_id": "l1",
        "sku": "SHIRT-M",
        "name": "Shirt M",
        "quantity": 2,
        "unit_price": 1000,
        "subtotal": 2000,
        "discount": 300,
        "tax": 295,
        "total": 1700,
    },
    {
        "line_id": "l2",
        "sku": "MUG",
        "name": "Mug",
        "quantity": 1,
        "unit_price": 1500,
        "subtotal": 1500,
        "discount": 0,
        "tax": 260,
        "total": 1500,
    },
]


async def documents(shop: Shop) -> list[dict[str, Any]]:
    listing = await shop.http.get("/api/v1/invoices", headers=shop.as_("staff"))
    return [
        (await shop.http.get(f"/api/v1/invoices/{d['id']}", headers=shop.as_("staff"))).json()
        for d in listing.json()["items"]
    ]


async def test_invoice_and_credit_note_lines_show_the_discount_their_totals_take_off(
    shop: Shop,
) -> None:
    order = shop.orders.place(lines=DISCOUNTED, tax_rate_bp=2100)
    payment = (await shop.pay(order["id"], VISA)).json()
    refund = await shop.http.post(
        f"/api/v1/payments/{payment['id']}/refunds",
        json={"lines": [{"line_id": "l1", "quantity": 1}], "reason": "one torn"},
        headers={**shop.as_("staff"), "Idempotency-Key": "refund-shirt"},
    )
    assert refund.status_code == 201, refund.text

    [credit_note, invoice] = await documents(shop)
    assert [
        (line["sku"], line["quantity"], line["unit_price"], line["discount"], line["total"])
        for line in invoice["lines"]
    ] == [("SHIRT-M", 2, 1000, 300, 1700), ("MUG", 1, 1500, 0, 1500)]
    [credited] = credit_note["lines"]
    assert (credited["quantity"], credited["discount"], credited["total"]) == (1, -150, -850)


async def test_a_partial_captures_line_shares_carry_no_discount(shop: Shop) -> None:
    order = shop.orders.place(lines=DISCOUNTED, tax_rate_bp=2100)
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    captured = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        json={"amount_to_capture": 1600},
        headers={**shop.as_("staff"), "Idempotency-Key": "capture-part"},
    )
    assert captured.status_code == 200, captured.text

    [invoice] = await documents(shop)
    assert sum(line["total"] for line in invoice["lines"]) == 1600
    assert {line["discount"] for line in invoice["lines"]} == {None}


async def test_customers_see_only_their_own_invoices(shop: Shop) -> None:
    order = shop.orders.place()
    await shop.pay(order["id"], VISA)
    [invoice] = (await shop.http.get("/api/v1/invoices", headers=shop.as_("customer"))).json()[
        "items"
    ]

    other = await shop.http.get("/api/v1/invoices", headers=shop.as_("other"))
    assert other.json()["items"] == []
    peek = await shop.http.get(f"/api/v1/invoices/{invoice['id']}", headers=shop.as_("other"))
    assert peek.status_code == 404
    staff = await shop.http.get(f"/api/v1/invoices/{invoice['id']}", headers=shop.as_("staff"))
    assert staff.status_code == 200


async def test_simultaneous_numbering_leaves_no_gap_and_no_duplicate(shop: Shop) -> None:
    taken: list[int] = []

    async def issue(rollback: bool) -> None:
        try:
            async with shop.ctx.db.driver_write() as tx:
                number = await next_document_number(tx, "TST", 2026)
                if rollback:
                    raise RuntimeError("the issuing use case failed")
                taken.append(number)
        except RuntimeError:
            pass

    await asyncio.gather(*(issue(rollback=i % 4 == 0) for i in range(24)))

    assert sorted(taken) == list(range(1, 19))
    async with shop.ctx.db.driver_write() as tx:
        assert await next_document_number(tx, "TST", 2026) == 19
        assert await next_document_number(tx, "TST", 2027) == 1


async def test_simultaneous_captures_get_consecutive_invoice_numbers(shop: Shop) -> None:
    orders = [shop.orders.place() for _ in range(8)] + [
        shop.orders.place(customer_id=OTHER_CUSTOMER) for _ in range(2)
    ]
    responses = await asyncio.gather(
        *(
            shop.pay(
                o["id"], VISA, who="customer" if o["customer_id"] != OTHER_CUSTOMER else "other"
            )
            for o in orders
        )
    )
    assert {r.status_code for r in responses} == {201}
    listing = await shop.http.get("/api/v1/invoices?limit=100", headers=shop.as_("staff"))
    numbers = sorted(i["number"] for i in listing.json()["items"])
    year = listing.json()["items"][0]["issued_at"][:4]
    assert numbers == [f"INV-{year}-{n:06d}" for n in range(1, 11)]
