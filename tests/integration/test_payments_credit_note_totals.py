"""Credit notes against their invoice on both shapes: whatever mix of refunds by line, by amount
and of the rest takes a payment back (of the whole order or part of it), the credit notes
never give back more net or tax at a rate than the invoice charged at it, and once the payment
is fully refunded they give back exactly the invoice's net and tax at each rate and name every
unit of the order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecosistema.payments.domain import tax_breakdown
from ecosistema.platform.config import Settings
from ecosistema.platform.db import new_id
from tests.integration.test_payments_support import VISA, Shop, open_shop

# Spain, 21 %, prices including tax: two red and one white at 186.90 less 10 % (a voucher),
# and 4.95 of shipping: 509.58 in all, of which 88.44 is tax.
RED = {
    "line_id": "red",
    "sku": "HMF-0061-RED",
    "name": "Red",
    "quantity": 2,
    "unit_price": 18690,
    "tax": 5839,
    "total": 33642,
    "discount": 3738,
}
WHITE = {
    "line_id": "white",
    "sku": "HMF-0061-WHI",
    "name": "White",
    "quantity": 1,
    "unit_price": 18690,
    "tax": 2919,
    "total": 16821,
    "discount": 1869,
}
CUP = {
    "line_id": "cup",
    "sku": "CUP",
    "name": "Cup",
    "quantity": 3,
    "unit_price": 333,
    "tax": 173,
    "total": 999,
}


@pytest.fixture
async def shop(settings: Settings) -> AsyncIterator[Shop]:
    async with open_shop(settings) as opened:
        yield opened


async def paid_order(
    shop: Shop, lines: list[dict[str, Any]], shipping: tuple[int, int], *, part: int = 100
) -> tuple[str, str]:
    """A paid order's id and its payment's, which captured ``part`` % of the order."""
    order = shop.orders.place(lines=lines, tax_rate_bp=2100, shipping=shipping)
    if part == 100:
        response = await shop.pay(order["id"], VISA)
        assert response.status_code == 201, response.text
        return str(order["id"]), str(response.json()["id"])
    response = await shop.pay(order["id"], VISA, capture_method="manual")
    assert response.status_code == 201, response.text
    payment_id = str(response.json()["id"])
    captured = await shop.http.post(
        f"/api/v1/payments/{payment_id}/capture",
        json={"amount_to_capture": order["total"] * part // 100},
        headers={**shop.as_("staff"), "Idempotency-Key": new_id()},
    )
    assert captured.status_code == 200, captured.text
    return str(order["id"]), payment_id


async def refund(shop: Shop, payment_id: str, body: dict[str, Any]) -> Any:
    return await shop.http.post(
        f"/api/v1/payments/{payment_id}/refunds",
        json={"reason": "customer request", **body},
        headers={**shop.as_("staff"), "Idempotency-Key": new_id()},
    )


async def documents_of(shop: Shop, order_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An order's invoice and its credit notes, oldest first."""
    listing = await shop.http.get(
        "/api/v1/invoices", params={"order_id": order_id, "limit": 100}, headers=shop.as_("staff")
    )
    assert listing.status_code == 200, listing.text
    mine = sorted(listing.json()["items"], key=lambda d: d["number"])
    [invoice] = [d for d in mine if d["kind"] == "invoice"]
    return invoice, [d for d in mine if d["kind"] == "credit_note"]


def by_rate(documents: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Net and tax per rate over ``documents``, as their lines add up."""
    out: dict[int, tuple[int, int]] = {}
    for row in tax_breakdown([line for d in documents for line in d["lines"]]):
        out[row["rate_bp"]] = (row["net"], row["tax"])
    return out


def assert_within_the_invoice(invoice: dict[str, Any], notes: list[dict[str, Any]]) -> None:
    invoiced, credited = by_rate([invoice]), by_rate(notes)
    for rate, (net, tax) in credited.items():
        assert rate in invoiced, (rate, credited, invoiced)
        assert 0 <= -net <= invoiced[rate][0], (rate, credited, invoiced)
        assert 0 <= -tax <= invoiced[rate][1], (rate, credited, invoiced)
    for note in notes:
        for line in note["lines"]:
            assert line["net"] + line["tax"] == line["total"] <= 0, line
            assert line["total"] <= line["tax"] <= 0, line


def assert_credits_the_whole_invoice(
    invoice: dict[str, Any], notes: list[dict[str, Any]], lines: list[dict[str, Any]]
) -> None:
    assert {r: (-n, -t) for r, (n, t) in by_rate(notes).items()} == by_rate([invoice])
    assert sum(n["tax_total"] for n in notes) == -invoice["tax_total"]
    assert sum(n["subtotal"] for n in notes) == -invoice["subtotal"]
    credited_units: dict[str, int] = {}
    for note in notes:
        for line in note["lines"]:
            if line["sku"]:
                credited_units[line["sku"]] = credited_units.get(line["sku"], 0) + line["quantity"]
    assert credited_units == {line["sku"]: line["quantity"] for line in lines}


async def test_the_refund_that_settles_the_payment_credits_exactly_the_tax_left(
    shop: Shop,
) -> None:
    order_id, payment_id = await paid_order(shop, [RED, WHITE], (495, 86))
    invoice, _ = await documents_of(shop, order_id)
    assert (invoice["total"], invoice["subtotal"], invoice["tax_total"]) == (50958, 42114, 8844)

    for body in (
        {"lines": [{"line_id": "white", "quantity": 1}]},
        {"lines": [{"line_id": "red", "quantity": 1}]},
        {"reason": "goodwill", "amount": 1000},
        {"reason": "rest"},
    ):
        response = await refund(shop, payment_id, body)
        assert response.status_code == 201, response.text
        _, notes = await documents_of(shop, order_id)
        assert_within_the_invoice(invoice, notes)

    assert response.json()["amount"] == 16316
    # An amount refund took back no unit: the rest gives back the red unit left, and shipping.
    assert [(x["sku"], x["quantity"]) for x in response.json()["lines"]] == [("HMF-0061-RED", 1)]
    assert sum(n["total"] for n in notes) == -50958
    assert_credits_the_whole_invoice(invoice, notes, [RED, WHITE])


# One step of a refund sequence: some units of a line, an amount, or all that is left but a
# few cents (an amount too).
LINE_STEP = st.tuples(st.just("line"), st.sampled_from(["red", "white", "cup"]), st.integers(1, 3))
AMOUNT_STEP = st.tuples(st.just("amount"), st.integers(1, 20000), st.just(0))
SMALL_STEP = st.tuples(st.just("amount"), st.integers(1, 9), st.just(0))
LEAVING_STEP = st.tuples(st.just("leave"), st.integers(0, 12), st.just(0))
STEPS = st.lists(st.one_of(LINE_STEP, AMOUNT_STEP, SMALL_STEP, LEAVING_STEP), max_size=6)
# How the payment is settled at the end: the rest, an amount equal to what is left, or the
# units left by line (when what is left is exactly their worth; the rest otherwise).
FINISH = st.sampled_from(["rest", "amount", "lines"])


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shipping=st.sampled_from([(495, 86), (0, 0)]),
    part=st.sampled_from([100, 100, 37]),
    steps=STEPS,
    finish=FINISH,
)
async def test_credit_notes_never_pass_the_invoice_and_settle_it_exactly(
    shop: Shop,
    shipping: tuple[int, int],
    part: int,
    steps: list[tuple[str, Any, int]],
    finish: str,
) -> None:
    lines = [RED, WHITE, CUP]
    order_id, payment_id = await paid_order(shop, lines, shipping, part=part)
    invoice, _ = await documents_of(shop, order_id)
    captured = invoice["total"]
    refunded = 0
    units_left = {line["line_id"]: line["quantity"] for line in lines}

    async def take(body: dict[str, Any]) -> None:
        nonlocal refunded
        response = await refund(shop, payment_id, body)
        # Units beyond a line's or more than is left are refused; nothing else may go wrong.
        assert response.status_code in (201, 409, 422), response.text
        if response.status_code != 201:
            return
        refunded += response.json()["amount"]
        for line in response.json()["lines"]:
            units_left[line["line_id"]] -= line["quantity"]
        assert all(units >= 0 for units in units_left.values())
        _, notes = await documents_of(shop, order_id)
        assert_within_the_invoice(invoice, notes)

    for kind, value, quantity in steps:
        if kind == "line":
            await take({"lines": [{"line_id": value, "quantity": quantity}]})
        elif kind == "amount":
            await take({"amount": value})
        elif captured - refunded - value > 0:
            await take({"amount": captured - refunded - value})
    if refunded < captured and finish == "lines" and any(units_left.values()):
        wanted = [{"line_id": k, "quantity": v} for k, v in units_left.items() if v]
        await take({"lines": wanted})
    if refunded < captured and finish == "amount":
        await take({"amount": captured - refunded})
    if refunded < captured:
        await take({})

    assert refunded == captured
    assert not any(units_left.values())
    _, notes = await documents_of(shop, order_id)
    assert_credits_the_whole_invoice(invoice, notes, lines)
