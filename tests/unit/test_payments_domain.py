"""Payments' pure rules: the state machine, refund and capture limits, cards, the journal,
document numbers, webhook signatures and report periods."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecosistema.payments import domain
from ecosistema.payments.domain import (
    TRANSITIONS,
    Account,
    IllegalTransition,
    PaymentStatus,
    Period,
    RefundExceedsCaptured,
)
from ecosistema.platform.errors import Unprocessable

S = PaymentStatus


def test_every_status_has_its_transitions_and_terminal_ones_have_none() -> None:
    assert set(TRANSITIONS) == set(PaymentStatus)
    assert TRANSITIONS[S.SUCCEEDED] == frozenset()
    assert TRANSITIONS[S.CANCELED] == frozenset()


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.REQUIRES_PAYMENT_METHOD, S.PROCESSING),
        (S.PROCESSING, S.REQUIRES_ACTION),
        (S.REQUIRES_ACTION, S.PROCESSING),
        (S.PROCESSING, S.REQUIRES_CAPTURE),
        (S.REQUIRES_CAPTURE, S.SUCCEEDED),
        (S.REQUIRES_CAPTURE, S.CANCELED),
        (S.PROCESSING, S.FAILED),
        (S.FAILED, S.PROCESSING),
    ],
)
def test_allowed_transitions(current: PaymentStatus, target: PaymentStatus) -> None:
    domain.ensure_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.SUCCEEDED, S.CANCELED),
        (S.SUCCEEDED, S.PROCESSING),
        (S.CANCELED, S.PROCESSING),
        (S.REQUIRES_PAYMENT_METHOD, S.SUCCEEDED),
        (S.REQUIRES_CAPTURE, S.FAILED),
    ],
)
def test_illegal_transitions_are_a_409(current: PaymentStatus, target: PaymentStatus) -> None:
    with pytest.raises(IllegalTransition) as raised:
        domain.ensure_transition(current, target)
    assert raised.value.status == 409


def test_capture_must_be_within_the_authorization() -> None:
    domain.check_capture(3500, 3500)
    domain.check_capture(3500, 1)
    for amount in (0, 3501):
        with pytest.raises(Unprocessable):
            domain.check_capture(3500, amount)


@given(
    captured=st.integers(min_value=0, max_value=10**9),
    requests=st.lists(st.integers(min_value=-5, max_value=10**9), max_size=30),
)
def test_refunds_accepted_in_any_order_never_exceed_the_captured_amount(
    captured: int, requests: list[int]
) -> None:
    refunded = 0
    for amount in requests:
        try:
            domain.check_refund(captured, refunded, amount)
        except (RefundExceedsCaptured, Unprocessable):
            continue
        refunded += amount
        assert amount > 0
    assert 0 <= refunded <= captured
    assert domain.refundable(captured, refunded) == captured - refunded


def test_second_refund_cannot_exceed_captured_amount() -> None:
    domain.check_refund(3500, 0, 3000)
    with pytest.raises(RefundExceedsCaptured) as raised:
        domain.check_refund(3500, 3000, 501)
    assert raised.value.extra["refundable"] == 500


@given(
    total=st.integers(min_value=1, max_value=10**9),
    quantity=st.integers(min_value=1, max_value=1000),
)
def test_a_share_of_a_line_grows_with_its_units_and_all_units_are_the_line_total(
    total: int, quantity: int
) -> None:
    shares = [domain.prorated_line_amount(total, quantity, k) for k in range(1, quantity + 1)]
    assert shares == sorted(shares)
    assert all(0 <= share <= total for share in shares)
    assert shares[-1] == total


@pytest.mark.parametrize(
    "number", ["4242424242424242", "4000000000000002", "4000000000009995", "4000002500003155"]
)
def test_stripe_test_cards_pass_luhn(number: str) -> None:
    assert domain.luhn_valid(number)
    assert domain.card_brand(number) == "visa"


def test_card_errors_name_each_bad_field() -> None:
    today = date(2026, 6, 15)
    assert domain.card_errors("4242424242424242", 6, 2026, "123", today=today) == []
    errors = domain.card_errors("4242424242424241", 5, 2026, "12", today=today, prefix="card.")
    assert [e["field"] for e in errors] == ["card.number", "card.exp_year", "card.cvc"]
    amex = domain.card_errors("378282246310005", 1, 2030, "123", today=today)
    assert [e["field"] for e in amex] == ["cvc"]
    assert domain.card_brand("5555555555554444") == "mastercard"


@given(
    amount=st.integers(min_value=0, max_value=10**10),
    fee_bp=st.integers(min_value=0, max_value=10_000),
    refunds=st.lists(st.integers(min_value=0, max_value=10**10), max_size=5),
)
def test_journal_transactions_always_balance(amount: int, fee_bp: int, refunds: list[int]) -> None:
    fee = amount * fee_bp // 10_000
    postings = domain.capture_postings(amount, fee)
    for refund in refunds:
        postings += domain.refund_postings(refund)
    assert domain.is_balanced(postings)
    balances = domain.account_balances(postings)
    assert sum(balances.values()) == 0
    assert balances[Account.CUSTOMER_FUNDS] == 0
    assert balances[Account.REVENUE] == -amount
    assert balances[Account.FEES] == fee


def test_unbalanced_or_negative_postings_are_detected() -> None:
    assert not domain.is_balanced([domain.Posting(Account.REVENUE, credit=1)])
    assert not domain.is_balanced(
        [domain.Posting(Account.REVENUE, debit=-1), domain.Posting(Account.FEES, debit=1, credit=2)]
    )
    with pytest.raises(ValueError):
        domain.capture_postings(100, 101)


@given(st.integers(min_value=0, max_value=10**10))
def test_sandbox_fee_never_exceeds_the_amount(amount: int) -> None:
    assert 0 <= domain.sandbox_fee(amount) <= amount


def test_document_numbers_are_zero_padded_per_series_and_year() -> None:
    assert domain.document_number("INV", 2026, 123) == "INV-2026-000123"
    assert domain.document_number("CN", 2026, 1) == "CN-2026-000001"


def test_tax_breakdown_groups_lines_by_rate() -> None:
    lines = [{"net": 1000, "tax": 210}, {"net": 500, "tax": 105}, {"net": 200, "tax": 20}]
    assert domain.tax_breakdown(lines) == [
        {"rate_bp": 1000, "net": 200, "tax": 20},
        {"rate_bp": 2100, "net": 1500, "tax": 315},
    ]


def test_webhook_signature_good_bad_and_stale() -> None:
    payload = b'{"id": "evt_1"}'
    header = domain.sign_payload("whsec_x", 1_000_000, payload)
    assert header.startswith("t=1000000,v1=")
    assert domain.signature_valid("whsec_x", header, payload, now=1_000_300)
    assert not domain.signature_valid("whsec_x", header, payload, now=1_000_301)
    assert not domain.signature_valid("whsec_y", header, payload, now=1_000_000)
    assert not domain.signature_valid("whsec_x", header, payload + b" ", now=1_000_000)
    assert not domain.signature_valid("whsec_x", "garbage", payload, now=1_000_000)
    # Untrusted text in any script is refused, never an exception.
    for hostile in (
        "t=1000000,v1=\u00e9",
        "t=\u00b2,v1=ab",
        "t=\uff11,v1=ab",
        "t=1000000,v1=\udc80",
    ):
        assert not domain.signature_valid("whsec_x", hostile, payload, now=1_000_000)
    rotated = f"{header},v1={'0' * 64}"
    assert domain.signature_valid("whsec_x", rotated, payload, now=1_000_000)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_report_periods_start_on_their_first_day(day: date) -> None:
    week = domain.period_start(day, Period.WEEK)
    assert week.weekday() == 0 and timedelta(0) <= day - week < timedelta(days=7)
    assert domain.period_start(day, Period.MONTH) == day.replace(day=1)
    assert domain.period_start(datetime(day.year, day.month, day.day, 23, 59), Period.DAY) == day


def test_average_order_value_rounds_and_survives_no_orders() -> None:
    assert domain.average(1001, 2) == 500
    assert domain.average(1003, 2) == 502
    assert domain.average(0, 0) == 0


def test_tax_breakdown_takes_the_rate_the_order_applied_not_one_worked_out_from_rounding() -> None:
    # A German order at 19 %: shipping 4.90 contains 0.78 of tax, which reads as 18.99 %.
    lines = [
        {"net": 2521, "tax": 479, "total": 3000, "rate_bp": 1900},
        {"net": 412, "tax": 78, "total": 490, "rate_bp": 1900},
    ]
    assert domain.tax_breakdown(lines) == [{"rate_bp": 1900, "net": 2933, "tax": 557}]


def test_allocate_by_rate_gives_a_partial_amount_its_share_of_each_rate() -> None:
    lines = [
        {"total": 12100, "tax": 2100, "rate_bp": 2100},
        {"total": 1100, "tax": 100, "rate_bp": 1000},
    ]
    assert domain.allocate_by_rate(6600, lines) == [
        {"rate_bp": 1000, "total": 550, "tax": 50},
        {"rate_bp": 2100, "total": 6050, "tax": 1050},
    ]
    assert domain.allocate_by_rate(-6600, lines)[1] == {
        "rate_bp": 2100,
        "total": -6050,
        "tax": -1050,
    }


_RATES = st.sampled_from([0, 400, 1000, 1900, 2000, 2100, 2300])


@st.composite
def _order_lines(draw: st.DrawFn) -> list[dict[str, int]]:
    lines = []
    for rate in draw(st.lists(_RATES, min_size=1, max_size=6)):
        total = draw(st.integers(min_value=1, max_value=10**7))
        tax = total * rate // (10_000 + rate)
        lines.append({"total": total, "tax": tax, "net": total - tax, "rate_bp": rate})
    return lines


@given(_order_lines(), st.data(), st.booleans())
def test_partial_documents_split_by_rate_add_up_to_the_amount_with_one_row_per_rate(
    lines: list[dict[str, int]], data: st.DataObject, credit: bool
) -> None:
    whole = sum(line["total"] for line in lines)
    amount = data.draw(st.integers(min_value=1, max_value=whole))
    amount = -amount if credit else amount
    parts = domain.allocate_by_rate(amount, lines)
    document = [
        {"net": p["total"] - p["tax"], "tax": p["tax"], "rate_bp": p["rate_bp"]} for p in parts
    ]
    rows = domain.tax_breakdown(document)

    assert sum(p["total"] for p in parts) == amount
    assert sum(r["net"] + r["tax"] for r in rows) == amount
    assert sum(r["tax"] for r in rows) == sum(p["tax"] for p in parts)
    rates = [r["rate_bp"] for r in rows]
    assert len(rates) == len(set(rates))
    assert set(rates) <= {line["rate_bp"] for line in lines}
    for part in parts:
        assert abs(part["tax"]) <= abs(part["total"])
        assert (part["total"] < 0) == credit and (part["tax"] <= 0 if credit else part["tax"] >= 0)


def test_allocate_by_line_gives_each_line_its_share_and_a_discount_its_negative_share() -> None:
    lines = [
        {"total": 2000, "tax": 347},
        {"total": 1500, "tax": 260},
        {"total": 490, "tax": 85},
        {"total": -490, "tax": 0},
    ]
    assert domain.allocate_by_line(1000, lines) == [
        {"total": 571, "tax": 99},
        {"total": 429, "tax": 74},
        {"total": 140, "tax": 24},
        {"total": -140, "tax": 0},
    ]


@given(_order_lines(), st.data())
def test_partial_capture_split_by_line_adds_up_to_the_amount_and_never_passes_a_line(
    lines: list[dict[str, int]], data: st.DataObject
) -> None:
    whole = sum(line["total"] for line in lines)
    amount = data.draw(st.integers(min_value=1, max_value=whole))
    parts = domain.allocate_by_line(amount, lines)

    assert len(parts) == len(lines)
    assert sum(p["total"] for p in parts) == amount
    for line, part in zip(lines, parts, strict=True):
        assert 0 <= part["total"] <= line["total"]
        assert 0 <= part["tax"] <= min(part["total"], line["tax"])


def test_proportional_shares_add_up_with_the_remainder_to_the_largest_fractions() -> None:
    assert domain.proportional_shares(2295, [1000, 1500, 495]) == [766, 1150, 379]
    assert domain.proportional_shares(0, [3, 1]) == [0, 0]
    with pytest.raises(ValueError):
        domain.proportional_shares(10, [0, 0])


def _credit(rate: int, total: int, tax: int) -> dict[str, int]:
    return {"rate_bp": rate, "total": -total, "tax": -tax, "net": tax - total}


def test_the_credit_note_that_settles_a_rate_gives_back_exactly_the_tax_left() -> None:
    invoice = [
        {"rate_bp": 2100, "total": 50463, "tax": 8758, "net": 41705},
        {"rate_bp": 2100, "total": 495, "tax": 86, "net": 409},
    ]
    earlier = [_credit(2100, 16821, 2919), _credit(2100, 16821, 2920), _credit(2100, 1000, 174)]
    # Rounded on its own the rest's tax is 28.32, one cent more than the invoice has left.
    rest = [_credit(2100, 15850, 2751), _credit(2100, 466, 81)]

    settled = domain.credit_within_invoice(rest, invoice, earlier)

    assert sum(-line["tax"] for line in settled) == 8844 - 2919 - 2920 - 174
    assert [line["total"] for line in settled] == [-15850, -466]
    assert all(line["net"] + line["tax"] == line["total"] for line in settled)


@given(_order_lines(), st.lists(st.integers(min_value=1, max_value=10**7), max_size=8))
def test_credit_notes_kept_within_the_invoice_never_pass_it_and_settle_it_exactly(
    lines: list[dict[str, int]], amounts: list[int]
) -> None:
    invoiced = domain.tax_breakdown(lines)
    left = {row["rate_bp"]: row["net"] + row["tax"] for row in invoiced}
    credited: list[dict[str, object]] = []
    for amount in [*amounts, sum(left.values())]:
        # Each note takes part of what is left at each rate, its tax rounded on its own at the
        # rate's ratio (as credit notes of refunds by amount are).
        amount = min(amount, sum(left.values()))
        if amount == 0:
            continue
        rates = sorted(r for r, v in left.items() if v > 0)
        shares = domain.proportional_shares(amount, [left[r] for r in rates])
        note = [
            _credit(r, share, domain.split_tax(share, row["net"] + row["tax"], row["tax"]))
            for r, share in zip(rates, shares, strict=True)
            for row in invoiced
            if row["rate_bp"] == r and share
        ]
        note = domain.credit_within_invoice(note, lines, credited)
        credited += note
        for r, share in zip(rates, shares, strict=True):
            left[r] -= share
        for row in domain.tax_breakdown(credited):
            [billed] = [i for i in invoiced if i["rate_bp"] == row["rate_bp"]]
            assert 0 <= -row["tax"] <= billed["tax"] and 0 <= -row["net"] <= billed["net"]

    assert [
        {"rate_bp": r["rate_bp"], "net": -r["net"], "tax": -r["tax"]}
        for r in domain.tax_breakdown(credited)
    ] == [row for row in invoiced if row["net"] + row["tax"] > 0]
