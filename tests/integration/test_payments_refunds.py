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

    for asked in (2, 5):  # within the line's units or beyond them: what is left is named
        second = await refund(
            shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": asked}]}
        )
        assert second.status_code == 422
        assert [(e["field"], e["message"]) for e in second.json()["errors"]] == [
            ("lines.0.quantity", "only 1 left to refund")
        ]
    unknown = await refund(shop, payment["id"], {"lines": [{"line_id": "nope", "quantity": 1}]})
    assert unknown.status_code == 422
    both = await refund(
        shop, payment["id"], {"amount": 100, "lines": [{"line_id": "l1", "quantity": 1}]}
    )
    assert both.status_code == 422
    assert [(e["field"], e["code"]) for e in both.json()["errors"]] == [
        ("amount", "amount_and_lines")
    ]


async def test_restock_takes_a_json_boolean_only(shop: Shop) -> None:
    payment = await paid(shop)
    for given in ("yes", "no", 1, 0, "true"):
        refused = await refund(shop, payment["id"], {"restock": given})
        assert refused.status_code == 422, given
        assert [e["field"] for e in refused.json()["errors"]] == ["restock"]
    row = await shop.http.get(f"/api/v1/payments/{payment['id']}", headers=shop.as_("staff"))
    assert row.json()["refunded_amount"] == 0


async def test_refund_needs_the_refund_permission(shop: Shop) -> None:
    payment = await paid(shop)
    response = await shop.http.post(
        f"/api/v1/payments/{payment['id']}/refunds",
        json={"reason": "mine"},
        headers={**shop.as_("customer"), "Idempotency-Key": "self-refund"},
    )
    assert response.status_code == 403


async def test_only_the_refund_that_settles_last_says_the_payment_is_fully_refunded(
    shop: Shop,
) -> None:
    # Refunds claimed together settle one by one: an early one, with the others still at the
    # provider, must not tell orders that everything is back (orders would then take the order
    # to refunded and drop the later refunds, their units and their restock).
    payment = await paid(shop)
    responses = await asyncio.gather(
        *(refund(shop, payment["id"], {"amount": 700}, key=f"all-{i}") for i in range(5))
    )
    assert [r.status_code for r in responses] == [201] * 5

    events = await shop.events("PaymentRefunded")
    assert len(events) == 5
    assert [e["fully_refunded"] for e in events] == [False] * 4 + [True]


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


AMD = {
    "line_id": "amd",
    "sku": "AMD",
    "name": "AMD",
    "quantity": 3,
    "unit_price": 4890,
    "tax": 2546,
    "total": 14670,
}


async def partly_captured(
    shop: Shop, lines: list[dict[str, Any]], capture: int, **order: Any
) -> str:
    placed = shop.orders.place(lines=lines, tax_rate_bp=2100, **order)
    authorized = await shop.pay(placed["id"], VISA, capture_method="manual")
    assert authorized.status_code == 201, authorized.text
    payment_id: str = authorized.json()["id"]
    captured = await shop.http.post(
        f"/api/v1/payments/{payment_id}/capture",
        json={"amount_to_capture": capture},
        headers={**shop.as_("staff"), "Idempotency-Key": f"capture-{payment_id}"},
    )
    assert captured.status_code == 200, captured.text
    return payment_id


async def documents(shop: Shop) -> list[dict[str, Any]]:
    listing = await shop.http.get("/api/v1/invoices", headers=shop.as_("staff"))
    assert listing.status_code == 200, listing.text
    return sorted(listing.json()["items"], key=lambda d: (d["kind"] != "invoice", d["number"]))


async def test_a_line_refund_of_a_partial_capture_is_priced_per_unit_from_the_lines_share(
    shop: Shop,
) -> None:
    # 3 x 48.90 and 4.95 shipping (151.65); 50.55 captured, of which the invoice gives the line
    # 48.90 for its 3 units: one unit is 16.30, not the whole share.
    payment_id = await partly_captured(shop, [AMD], 5055, shipping=(495, 86))
    [invoice] = await documents(shop)
    assert [(line["sku"], line["quantity"], line["total"]) for line in invoice["lines"]] == [
        ("AMD", 3, 4890),
        (None, 1, 165),
    ]

    one_by_one = [
        await refund(shop, payment_id, {"lines": [{"line_id": "amd", "quantity": 1}]}, key=f"u{i}")
        for i in range(3)
    ]

    assert [r.status_code for r in one_by_one] == [201, 201, 201], one_by_one[-1].text
    assert [r.json()["amount"] for r in one_by_one] == [1630, 1630, 1630]
    notes = (await documents(shop))[1:]
    assert [(n["lines"][0]["quantity"], n["total"]) for n in notes] == [(1, -1630)] * 3
    # Neither the invoice's share of the line nor a credit note of it tells a discount apart.
    assert invoice["lines"][0]["discount"] is None
    assert [n["lines"][0]["discount"] for n in notes] == [None] * 3
    fourth = await refund(
        shop, payment_id, {"lines": [{"line_id": "amd", "quantity": 1}]}, key="u3"
    )
    assert fourth.status_code == 422
    assert fourth.json()["errors"][0]["field"] == "lines.0.quantity"
    rest = await refund(shop, payment_id, {})
    assert rest.status_code == 201 and rest.json()["amount"] == 165


async def test_units_refunded_one_by_one_add_up_to_the_lines_captured_share_exactly(
    shop: Shop,
) -> None:
    line = {**AMD, "unit_price": 1000, "tax": 174, "total": 3000}
    payment_id = await partly_captured(shop, [line], 100)

    amounts = []
    for i in range(3):
        response = await refund(
            shop, payment_id, {"lines": [{"line_id": "amd", "quantity": 1}]}, key=f"u{i}"
        )
        assert response.status_code == 201, response.text
        amounts.append(response.json()["amount"])

    assert sum(amounts) == 100
    assert max(amounts) - min(amounts) <= 1
    payment = await shop.http.get(f"/api/v1/payments/{payment_id}", headers=shop.as_("staff"))
    assert payment.json()["refunded_amount"] == 100


async def test_simultaneous_unit_refunds_of_a_line_add_up_to_its_captured_share(
    shop: Shop,
) -> None:
    line = {**AMD, "unit_price": 1000, "tax": 174, "total": 3000}
    payment_id = await partly_captured(shop, [line], 100)

    responses = await asyncio.gather(
        *(
            refund(shop, payment_id, {"lines": [{"line_id": "amd", "quantity": 1}]}, key=f"u{i}")
            for i in range(4)
        )
    )

    assert sorted(r.status_code for r in responses) == [201, 201, 201, 422]
    assert sum(r.json()["amount"] for r in responses if r.status_code == 201) == 100


async def test_refunding_a_fully_discounted_line_is_refused_and_says_how_to_take_it_back(
    shop: Shop,
) -> None:
    # A voucher larger than the goods: the line costs nothing, only shipping was paid.
    free = {**AMD, "quantity": 1, "tax": 0, "total": 0, "discount": 4890}
    order = shop.orders.place(lines=[free], tax_rate_bp=2100, shipping=(495, 86))
    order["discount_total"] = 4890
    paid = await shop.pay(order["id"], VISA)
    assert paid.status_code == 201, paid.text
    payment_id = paid.json()["id"]

    response = await refund(
        shop,
        payment_id,
        {"reason": "zero line", "lines": [{"line_id": "amd", "quantity": 1}], "restock": True},
    )

    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["code"]) == ("lines.0.line_id", "line_fully_discounted")
    assert f"/api/v1/orders/{order['id']}/returns" in error["message"]
    assert "/api/v1/restocks" in error["message"]
    listing = await shop.http.get(
        f"/api/v1/payments/{payment_id}/refunds", headers=shop.as_("staff")
    )
    assert listing.json()["items"] == []
    assert await shop.events("PaymentRefunded") == []
    rest = await refund(shop, payment_id, {})
    assert rest.status_code == 201 and rest.json()["amount"] == 495


async def test_units_whose_captured_share_is_nothing_are_not_refunded(shop: Shop) -> None:
    cheap = {
        "line_id": "pin",
        "sku": "PIN",
        "name": "Pin",
        "quantity": 3,
        "unit_price": 1,
        "tax": 0,
        "total": 3,
    }
    payment_id = await partly_captured(shop, [AMD, cheap], 100)

    response = await refund(shop, payment_id, {"lines": [{"line_id": "pin", "quantity": 1}]})

    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["code"]) == ("lines.0.quantity", "nothing_captured_for_units")
    payment = await shop.http.get(f"/api/v1/payments/{payment_id}", headers=shop.as_("staff"))
    assert payment.json()["refunded_amount"] == 0


@pytest.mark.parametrize("reason", ["a\u202e", "a\x00b", "a\u2028b", " \n\t "])
async def test_a_refund_reason_that_garbles_the_history_is_refused_at_reason(
    shop: Shop, reason: str
) -> None:
    payment = await paid(shop)

    response = await refund(shop, payment["id"], {"reason": reason, "amount": 100})

    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["reason"]
    assert await shop.events("PaymentRefunded") == []


async def test_a_refund_reason_keeps_its_line_breaks_and_tabs(shop: Shop) -> None:
    payment = await paid(shop)

    response = await refund(shop, payment["id"], {"reason": "Broken.\r\n\tPhotos sent."})

    assert response.status_code == 201, response.text
    assert response.json()["reason"] == "Broken.\r\n\tPhotos sent."


BIG = {
    "line_id": "big",
    "sku": "BIG",
    "name": "Big",
    "quantity": 3,
    "unit_price": 14661,
    "tax": 7633,
    "total": 43983,
}


@pytest.mark.parametrize(
    ("capture", "invoiced"), [(43983, (43983, 36350, 7633)), (19422, (19422, 16051, 3371))]
)
async def test_credit_notes_of_a_line_refunded_unit_by_unit_add_up_to_its_invoice_line(
    shop: Shop, capture: int, invoiced: tuple[int, int, int]
) -> None:
    payment_id = await partly_captured(shop, [BIG], capture)
    [invoice] = await documents(shop)
    [line] = invoice["lines"]
    assert (line["total"], line["net"], line["tax"]) == invoiced

    for i in range(3):
        response = await refund(
            shop, payment_id, {"lines": [{"line_id": "big", "quantity": 1}]}, key=f"u{i}"
        )
        assert response.status_code == 201, response.text

    notes = (await documents(shop))[1:]
    credited = [n["lines"][0] for n in notes]
    assert all(c["net"] + c["tax"] == c["total"] for c in credited)
    assert max(c["tax"] for c in credited) - min(c["tax"] for c in credited) <= 1
    sums = tuple(sum(c[key] for c in credited) for key in ("total", "net", "tax"))
    assert sums == tuple(-value for value in invoiced)
    assert sum(n["tax_total"] for n in notes) == -invoice["tax_total"]
