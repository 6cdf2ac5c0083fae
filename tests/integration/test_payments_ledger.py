"""The journal, reconciliation with the sandbox's own books, and the sales report, on both
shapes."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from ecosistema.payments import reconcile_with_provider
from ecosistema.payments.domain import sandbox_fee
from ecosistema.payments.models import sandbox_ledger
from ecosistema.payments.service import journal_totals, reconcile
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from tests.integration.test_payments_support import VISA, Shop, open_shop


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def sell_and_refund(shop: Shop) -> None:
    """Three paid orders (EUR 35.00, EUR 35.00, USD 35.00), one EUR 10.00 refund."""
    eur = [shop.orders.place() for _ in range(2)]
    usd = shop.orders.place(currency="USD")
    paid = [(await shop.pay(o["id"], VISA)).json() for o in [*eur, usd]]
    response = await shop.http.post(
        f"/api/v1/payments/{paid[0]['id']}/refunds",
        json={"amount": 1000, "reason": "damaged"},
        headers={**shop.as_("staff"), "Idempotency-Key": "refund-1"},
    )
    assert response.status_code == 201


async def test_journal_balances_and_books_revenue_fees_and_refunds(shop: Shop) -> None:
    await sell_and_refund(shop)
    totals = await journal_totals(shop.ctx)

    for currency in ("EUR", "USD"):
        assert sum(totals[currency].values()) == 0
    assert totals["EUR"]["revenue"] == -7000
    assert totals["EUR"]["fees"] == 2 * sandbox_fee(3500)
    assert totals["EUR"]["refunds"] == 1000
    assert totals["EUR"]["provider_balance"] == 7000 - 2 * sandbox_fee(3500) - 1000
    assert totals["EUR"]["customer_funds"] == 0


async def test_reconciliation_matches_the_sandbox_ledger(shop: Shop) -> None:
    await sell_and_refund(shop)
    report = await reconcile(shop.ctx, provider="sandbox")

    assert report.clean, report
    assert report.matched == 4


async def test_reconciliation_reports_what_differs(shop: Shop) -> None:
    await sell_and_refund(shop)
    async with shop.ctx.db.transaction() as session:
        await session.execute(
            update(sandbox_ledger).where(sandbox_ledger.c.kind == "refund").values(amount=-999)
        )
        await session.execute(
            sandbox_ledger.insert().values(
                id="txn_stray",
                idempotency_key="stray",
                intent_ref="pi_stray",
                kind="charge",
                amount=100,
                fee=0,
                currency="EUR",
                created_at=utcnow(),
            )
        )
    report = await reconcile(shop.ctx, provider="sandbox")

    assert not report.clean
    assert [(m.journal_amount, m.provider_amount) for m in report.mismatched] == [(-1000, -999)]
    assert [m.ref for m in report.missing_in_journal] == ["txn_stray"]
    assert report.matched == 3


async def test_sales_report_by_day_and_currency_with_top_products(shop: Shop) -> None:
    await sell_and_refund(shop)
    response = await shop.http.get(
        "/api/v1/reports/sales?group_by=month", headers=shop.as_("staff")
    )
    assert response.status_code == 200, response.text
    report = response.json()
    rows = {r["currency"]: r for r in report["rows"]}
    assert rows["EUR"]["revenue"] == 7000
    assert rows["EUR"]["refunds"] == 1000
    assert rows["EUR"]["net"] == 6000
    assert rows["EUR"]["orders"] == 2
    assert rows["EUR"]["average_order_value"] == 3500
    assert rows["USD"]["revenue"] == 3500
    assert rows["EUR"]["period"] == utcnow().date().replace(day=1).isoformat()
    top = report["top_products"][0]
    assert (top["sku"], top["currency"], top["quantity"], top["revenue"]) == (
        "SHIRT-M",
        "EUR",
        4,
        4000,
    )

    only_usd = await shop.http.get(
        "/api/v1/reports/sales?currency=USD&format=csv", headers=shop.as_("staff")
    )
    assert only_usd.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(only_usd.text)))
    assert [(r["currency"], r["revenue"], r["orders"]) for r in parsed] == [("USD", "3500", "1")]

    lower = await shop.http.get(
        "/api/v1/reports/sales?currency=usd&format=csv", headers=shop.as_("staff")
    )
    assert lower.status_code == 200, lower.text
    assert list(csv.DictReader(io.StringIO(lower.text))) == parsed
    unknown = await shop.http.get("/api/v1/reports/sales?currency=xyz", headers=shop.as_("staff"))
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["errors"][0]["field"] == "currency"

    empty = await shop.http.get(
        "/api/v1/reports/sales?from=2001-01-01&to=2001-12-31", headers=shop.as_("staff")
    )
    assert empty.json()["rows"] == []


async def test_sales_report_is_for_staff(shop: Shop) -> None:
    response = await shop.http.get("/api/v1/reports/sales", headers=shop.as_("customer"))
    assert response.status_code == 403
    bad = await shop.http.get("/api/v1/reports/sales?group_by=year", headers=shop.as_("staff"))
    assert bad.status_code == 422


async def test_reconciliation_command_runs_on_its_own_runtime(settings: Settings) -> None:
    async with open_shop(settings) as shop:
        await sell_and_refund(shop)
        report = await reconcile_with_provider(settings, provider="sandbox")
    assert report.clean
    assert report.matched == 4


async def test_partly_captured_order_counts_in_top_products_by_its_lines(shop: Shop) -> None:
    order = shop.orders.place(tax_rate_bp=2100)
    authorized = (await shop.pay(order["id"], VISA, capture_method="manual")).json()
    captured = await shop.http.post(
        f"/api/v1/payments/{authorized['id']}/capture",
        json={"amount_to_capture": 1000},
        headers={**shop.as_("staff"), "Idempotency-Key": "capture-part"},
    )
    assert captured.status_code == 200, captured.text

    [invoice] = (await shop.http.get("/api/v1/invoices", headers=shop.as_("staff"))).json()["items"]
    # 1000 of 3500 over 2000 and 1500: 571.4 and 428.6, the largest remainder to the mug.
    assert [(line["sku"], line["description"], line["quantity"]) for line in invoice["lines"]] == [
        ("SHIRT-M", "Shirt M", 2),
        ("MUG", "Mug", 1),
    ]
    assert [(line["total"], line["tax"]) for line in invoice["lines"]] == [(571, 99), (429, 74)]
    assert invoice["total"] == 1000

    report = (await shop.http.get("/api/v1/reports/sales", headers=shop.as_("staff"))).json()
    assert [(p["sku"], p["name"], p["quantity"], p["revenue"]) for p in report["top_products"]] == [
        ("SHIRT-M", "Shirt M", 2, 571),
        ("MUG", "Mug", 1, 429),
    ]


async def test_top_products_rank_by_net_sales_after_refunds_of_their_lines(shop: Shop) -> None:
    first, second = shop.orders.place(), shop.orders.place()
    paid = [(await shop.pay(o["id"], VISA)).json() for o in (first, second)]
    by_line = await shop.http.post(
        f"/api/v1/payments/{paid[0]['id']}/refunds",
        json={"lines": [{"line_id": "l1", "quantity": 2}], "reason": "both torn"},
        headers={**shop.as_("staff"), "Idempotency-Key": "refund-shirts"},
    )
    assert by_line.status_code == 201, by_line.text
    # An amount names no product: it is in the period's refunds, not in a product's.
    by_amount = await shop.http.post(
        f"/api/v1/payments/{paid[1]['id']}/refunds",
        json={"amount": 500, "reason": "goodwill"},
        headers={**shop.as_("staff"), "Idempotency-Key": "refund-goodwill"},
    )
    assert by_amount.status_code == 201, by_amount.text

    report = (await shop.http.get("/api/v1/reports/sales", headers=shop.as_("staff"))).json()
    fields = ("sku", "name", "quantity", "revenue", "refunded_quantity", "refunds", "net")
    assert [tuple(p[f] for f in fields) for p in report["top_products"]] == [
        ("MUG", "Mug", 2, 3000, 0, 0, 3000),
        ("SHIRT-M", "Shirt M", 4, 4000, 2, 2000, 2000),
    ]
    assert report["rows"][0]["refunds"] == 2500

    csv_text = await shop.http.get(
        "/api/v1/reports/sales?format=csv&table=products&top=1", headers=shop.as_("staff")
    )
    assert csv_text.status_code == 200, csv_text.text
    assert 'filename="top-products.csv"' in csv_text.headers["content-disposition"]
    assert list(csv.DictReader(io.StringIO(csv_text.text))) == [
        {
            "sku": "MUG",
            "name": "Mug",
            "currency": "EUR",
            "quantity": "2",
            "revenue": "3000",
            "refunded_quantity": "0",
            "refunds": "0",
            "net": "3000",
        }
    ]
    too_many = await shop.http.get("/api/v1/reports/sales?top=1001", headers=shop.as_("staff"))
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "top"
