"""Payments on both shapes: documents break tax down by the rate the order applied (also for
partial captures and credit notes), a full refund with restock puts every unit left back, and
the sales report takes the whole calendar and exports CSV a spreadsheet will not run."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest

from ecosistema.payments.schemas import SalesReport, SalesRow
from ecosistema.payments.service import sales_report_csv
from ecosistema.platform.config import Settings
from tests.integration.test_payments_support import VISA, Shop, open_shop

GERMAN_LINE = {
    "line_id": "g1",
    "sku": "BOOT-42",
    "name": "Boot 42",
    "quantity": 1,
    "unit_price": 3000,
    "tax": 479,
    "total": 3000,
}


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def documents(shop: Shop) -> list[dict[str, Any]]:
    listing = await shop.http.get("/api/v1/invoices", headers=shop.as_("staff"))
    assert listing.status_code == 200, listing.text
    items: list[dict[str, Any]] = sorted(listing.json()["items"], key=lambda d: d["number"])
    return items


async def refund(shop: Shop, payment_id: str, body: dict[str, Any]) -> Any:
    return await shop.http.post(
        f"/api/v1/payments/{payment_id}/refunds",
        json={"reason": "customer request", **body},
        headers={**shop.as_("staff"), "Idempotency-Key": f"r-{body}"},
    )


def assert_adds_up(document: dict[str, Any]) -> None:
    rows = document["tax_breakdown"]
    assert sum(r["net"] for r in rows) == document["subtotal"]
    assert sum(r["tax"] for r in rows) == document["tax_total"]
    assert document["subtotal"] + document["tax_total"] == document["total"]
    assert len({r["rate_bp"] for r in rows}) == len(rows)


async def test_invoice_shows_the_orders_rate_for_goods_and_shipping(shop: Shop) -> None:
    # Shipping 4.90 at 19 % contains 0.78 of tax: worked out from the rounded amounts that
    # reads as 18.93 %, a rate that does not exist.
    order = shop.orders.place(lines=[GERMAN_LINE], tax_rate_bp=1900, shipping=(490, 78))
    assert (await shop.pay(order["id"], VISA)).status_code == 201

    [invoice] = await documents(shop)
    assert invoice["total"] == 3490
    assert invoice["tax_breakdown"] == [{"rate_bp": 1900, "net": 2933, "tax": 557}]
    assert {line["rate_bp"] for line in invoice["lines"]} == {1900}
    assert_adds_up(invoice)


async def test_tax_exclusive_shipping_is_invoiced_with_its_tax_on_top(shop: Shop) -> None:
    line = {**GERMAN_LINE, "unit_price": 2521, "tax": 479, "total": 3000}
    order = shop.orders.place(
        lines=[line], tax_rate_bp=1900, shipping=(412, 78), prices_include_tax=False
    )
    assert order["total"] == 3490
    assert (await shop.pay(order["id"], VISA)).status_code == 201

    [invoice] = await documents(shop)
    assert invoice["total"] == 3490
    assert invoice["tax_breakdown"] == [{"rate_bp": 1900, "net": 2933, "tax": 557}]
    # Unit prices on one basis, before tax, as the shop's prices are.
    shipping = invoice["lines"][-1]
    assert (shipping["description"], shipping["unit_price"]) == ("Shipping", 412)
    assert (shipping["net"], shipping["tax"], shipping["total"]) == (412, 78, 490)
    assert invoice["lines"][0]["unit_price"] == 2521


async def test_tax_exclusive_credit_note_lines_show_unit_prices_before_tax(shop: Shop) -> None:
    line = {**GERMAN_LINE, "unit_price": 2521, "tax": 479, "total": 3000}
    order = shop.orders.place(
        lines=[line], tax_rate_bp=1900, shipping=(412, 78), prices_include_tax=False
    )
    paid = (await shop.pay(order["id"], VISA)).json()
    assert (await refund(shop, paid["id"], {"amount": 1190})).status_code == 201

    credit = next(d for d in await documents(shop) if d["kind"] == "credit_note")
    [part] = credit["lines"]
    assert (part["description"], part["total"], part["tax"]) == ("Refund", -1190, -190)
    assert part["unit_price"] == part["net"] == -1000


async def test_partial_capture_and_refund_by_amount_keep_the_configured_rate(shop: Shop) -> None:
    order = shop.orders.place(tax_rate_bp=2100)
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    captured = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        json={"amount_to_capture": 1000},
        headers={**shop.as_("staff"), "Idempotency-Key": "cap-part"},
    )
    assert captured.status_code == 200, captured.text
    assert (await refund(shop, authorized["id"], {"amount": 333})).status_code == 201

    credit_note, invoice = await documents(shop)
    assert invoice["total"] == 1000
    assert [r["rate_bp"] for r in invoice["tax_breakdown"]] == [2100]
    assert invoice["tax_total"] == 173
    assert credit_note["total"] == -333
    assert [r["rate_bp"] for r in credit_note["tax_breakdown"]] == [2100]
    for document in (invoice, credit_note):
        assert_adds_up(document)


async def test_full_refund_with_restock_puts_back_every_unit_not_yet_taken_back(
    shop: Shop,
) -> None:
    order = shop.orders.place()
    payment = (await shop.pay(order["id"], VISA)).json()
    first = await refund(shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": 1}]})
    assert first.status_code == 201, first.text

    rest = await refund(shop, payment["id"], {"restock": True})
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 2500
    _, event = await shop.events("PaymentRefunded")
    assert event["restock"] is True and event["fully_refunded"] is True
    assert event["restock_lines"] == [
        {"sku": "SHIRT-M", "quantity": 1},
        {"sku": "MUG", "quantity": 1},
    ]
    # The refund itself says which units it gave back, and which came back to stock.
    assert rest.json()["lines"] == [
        {"line_id": "l1", "sku": "SHIRT-M", "quantity": 1, "amount": 1000},
        {"line_id": "l2", "sku": "MUG", "quantity": 1, "amount": 1500},
    ]
    assert event["lines"] == rest.json()["lines"]
    assert rest.json()["restock_lines"] == event["restock_lines"]
    listed = await shop.http.get(
        f"/api/v1/payments/{payment['id']}/refunds", headers=shop.as_("staff")
    )
    assert [r["restock_lines"] for r in listed.json()["items"]] == [[], event["restock_lines"]]


async def test_full_refund_with_restock_and_no_lines_restocks_the_whole_order(shop: Shop) -> None:
    order = shop.orders.place()
    payment = (await shop.pay(order["id"], VISA)).json()
    response = await refund(shop, payment["id"], {"restock": True})
    assert response.status_code == 201, response.text
    [event] = await shop.events("PaymentRefunded")
    assert event["restock_lines"] == [
        {"sku": "SHIRT-M", "quantity": 2},
        {"sku": "MUG", "quantity": 1},
    ]


async def test_partial_refund_by_amount_cannot_restock(shop: Shop) -> None:
    order = shop.orders.place()
    payment = (await shop.pay(order["id"], VISA)).json()
    response = await refund(shop, payment["id"], {"amount": 1000, "restock": True})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "restock"
    assert await shop.events("PaymentRefunded") == []
    everything = await refund(shop, payment["id"], {"amount": 3500, "restock": True})
    assert everything.status_code == 201, everything.text
    [event] = await shop.events("PaymentRefunded")
    assert [line["quantity"] for line in event["restock_lines"]] == [2, 1]


async def test_sales_report_up_to_the_last_day_of_the_calendar(shop: Shop) -> None:
    order = shop.orders.place()
    assert (await shop.pay(order["id"], VISA)).status_code == 201
    for query in ("to=9999-12-31", "from=0001-01-01&to=9999-12-31", "from=0001-01-01"):
        response = await shop.http.get(f"/api/v1/reports/sales?{query}", headers=shop.as_("staff"))
        assert response.status_code == 200, (query, response.text)
        assert [r["revenue"] for r in response.json()["rows"]] == [3500]
    beyond = await shop.http.get("/api/v1/reports/sales?to=10000-01-01", headers=shop.as_("staff"))
    assert beyond.status_code == 422
    assert beyond.json()["errors"][0]["field"] == "to"


def test_sales_csv_cells_are_never_run_as_formulas() -> None:
    row = SalesRow(
        period=date(2026, 11, 1),
        currency='=HYPERLINK("http://evil")',
        revenue=100,
        refunds=112,
        net=-12,
        orders=1,
        average_order_value=100,
    )
    text = sales_report_csv(SalesReport(group_by="month", rows=[row], top_products=[]))
    [parsed] = list(csv.DictReader(io.StringIO(text)))
    assert parsed["currency"] == '\'=HYPERLINK("http://evil")'
    assert parsed["net"] == "-12"


async def test_a_refund_of_all_that_is_left_names_its_units_and_shipping_on_the_credit_note(
    shop: Shop,
) -> None:
    order = shop.orders.place(tax_rate_bp=2100, shipping=(495, 86))
    payment = (await shop.pay(order["id"], VISA)).json()
    first = await refund(shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": 1}]})
    assert first.status_code == 201, first.text

    rest = await refund(shop, payment["id"], {})
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 3995 - 1000
    assert [(x["sku"], x["quantity"], x["amount"]) for x in rest.json()["lines"]] == [
        ("SHIRT-M", 1, 1000),
        ("MUG", 1, 1500),
    ]
    credit_note = [d for d in await documents(shop) if d["kind"] == "credit_note"][-1]
    assert [(x["sku"], x["quantity"], x["total"]) for x in credit_note["lines"]] == [
        ("SHIRT-M", 1, -1000),
        ("MUG", 1, -1500),
        (None, 1, -495),
    ]
    assert credit_note["total"] == -2995
    assert_adds_up(credit_note)

    report = (await shop.http.get("/api/v1/reports/sales", headers=shop.as_("staff"))).json()
    assert {p["sku"]: (p["refunded_quantity"], p["net"]) for p in report["top_products"]} == {
        "SHIRT-M": (2, 0),
        "MUG": (1, 0),
    }


async def test_after_a_refund_of_an_amount_the_rest_still_names_every_unit_left(
    shop: Shop,
) -> None:
    order = shop.orders.place(tax_rate_bp=2100, shipping=(495, 86))
    payment = (await shop.pay(order["id"], VISA)).json()
    first = await refund(shop, payment["id"], {"lines": [{"line_id": "l1", "quantity": 1}]})
    assert first.status_code == 201, first.text
    assert (await refund(shop, payment["id"], {"amount": 700})).status_code == 201

    # The 7.00 took back no unit: the rest gives back every unit no refund by line took, and
    # the 22.95 left is split over them and shipping in proportion to what each was worth.
    rest = await refund(shop, payment["id"], {"restock": True})
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 3995 - 1000 - 700
    assert [(x["sku"], x["quantity"], x["amount"]) for x in rest.json()["lines"]] == [
        ("SHIRT-M", 1, 766),
        ("MUG", 1, 1150),
    ]
    assert rest.json()["restock_lines"] == [
        {"sku": "SHIRT-M", "quantity": 1},
        {"sku": "MUG", "quantity": 1},
    ]
    credit_note = [d for d in await documents(shop) if d["kind"] == "credit_note"][-1]
    assert [(x["sku"], x["quantity"], x["total"]) for x in credit_note["lines"]] == [
        ("SHIRT-M", 1, -766),
        ("MUG", 1, -1150),
        (None, 1, -379),
    ]
    assert credit_note["total"] == -2295
    assert_adds_up(credit_note)

    report = (await shop.http.get("/api/v1/reports/sales", headers=shop.as_("staff"))).json()
    assert {p["sku"]: (p["refunded_quantity"], p["net"]) for p in report["top_products"]} == {
        "SHIRT-M": (2, 2000 - 1000 - 766),
        "MUG": (1, 1500 - 1150),
    }
