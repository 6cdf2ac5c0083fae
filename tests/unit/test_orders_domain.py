"""Orders' pure rules: pricing (with hypothesis for totals), vouchers, shipping rates, the state
machine table, fulfilment and returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecosistema.orders import domain
from ecosistema.orders.domain import (
    TRANSITIONS,
    CartLine,
    FulfillmentStatus,
    IllegalTransition,
    LineProgress,
    NotShippable,
    OrderAction,
    OrderState,
    OrderStatus,
    PaymentStatus,
    Voucher,
    VoucherKind,
    VoucherNotApplicable,
    WeightBracket,
    next_status,
    price_order,
    shipping_cost,
)
from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.money import Money
from ecosistema.platform.text import check_note_text

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
FLAT = [WeightBracket(None, 495)]
BY_WEIGHT = [WeightBracket(1000, 500), WeightBracket(5000, 900), WeightBracket(None, 2000)]


def pct(bp: int, **kw: object) -> Voucher:
    return Voucher(code="P", kind=VoucherKind.PERCENTAGE, value=bp, **kw)  # type: ignore[arg-type]


def fixed(amount: int, **kw: object) -> Voucher:
    return Voucher(code="F", kind=VoucherKind.FIXED, value=amount, currency="EUR", **kw)  # type: ignore[arg-type]


# --- pricing ------------------------------------------------------------------------------------


def test_tax_exclusive_prices_add_tax_on_lines_and_shipping() -> None:
    totals = price_order(
        [CartLine("A", 2, 1000, 300), CartLine("B", 1, 2500, 200)],
        currency="EUR",
        prices_include_tax=False,
        tax_rate_bp=2100,
        shipping=FLAT,
    )
    assert totals.subtotal == 4500
    assert totals.discount_total == 0
    assert [line.tax for line in totals.lines] == [420, 525]
    assert totals.shipping_total == 495 and totals.shipping_tax == 104  # 103.95 rounds up
    assert totals.tax_total == 420 + 525 + 104
    assert totals.total == 4500 + 495 + 1049
    assert totals.weight_grams == 800


def test_tax_inclusive_prices_contain_the_tax_and_total_is_what_is_shown() -> None:
    totals = price_order(
        [CartLine("A", 1, 1210)],
        currency="EUR",
        prices_include_tax=True,
        tax_rate_bp=2100,
        shipping=FLAT,
    )
    assert totals.lines[0].tax == 210
    assert totals.lines[0].total == 1210
    assert totals.total == 1210 + 495
    assert totals.tax_total == 210 + 86  # 495 - 495/1.21 = 85.9


def test_percentage_voucher_spreads_the_discount_over_lines_without_losing_a_cent() -> None:
    totals = price_order(
        [CartLine("A", 1, 333), CartLine("B", 1, 333), CartLine("C", 1, 334)],
        currency="EUR",
        prices_include_tax=True,
        tax_rate_bp=0,
        voucher=fixed(100),
    )
    assert totals.discount_total == 100
    assert sum(line.discount for line in totals.lines) == 100
    assert totals.total == 900


def test_fixed_voucher_never_discounts_more_than_the_subtotal() -> None:
    totals = price_order(
        [CartLine("A", 1, 300)],
        currency="EUR",
        prices_include_tax=False,
        tax_rate_bp=2100,
        voucher=fixed(5000),
        shipping=FLAT,
    )
    assert totals.discount_total == 300
    assert totals.lines[0].total == 0
    assert totals.total == 495 + 104  # only shipping and its tax remain


def test_a_voucher_that_does_not_apply_is_refused_by_the_pricing_function() -> None:
    with pytest.raises(VoucherNotApplicable) as caught:
        price_order(
            [CartLine("A", 1, 1000)],
            currency="EUR",
            prices_include_tax=True,
            tax_rate_bp=2100,
            voucher=pct(1000, currency="EUR", minimum_spend=5000),
            now=NOW,
        )
    assert caught.value.status == 422
    assert caught.value.extra["errors"][0]["field"] == "code"


def test_an_empty_cart_costs_nothing_not_even_shipping() -> None:
    totals = price_order(
        [], currency="EUR", prices_include_tax=True, tax_rate_bp=2100, shipping=FLAT
    )
    assert (totals.subtotal, totals.shipping_total, totals.total) == (0, 0, 0)


def test_invalid_lines_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        price_order([CartLine("A", 0, 100)], currency="EUR", prices_include_tax=True, tax_rate_bp=0)
    with pytest.raises(ValueError):
        price_order(
            [CartLine("A", 1, 100)], currency="EUR", prices_include_tax=True, tax_rate_bp=-1
        )


lines_strategy = st.lists(
    st.builds(
        CartLine,
        sku=st.text(alphabet="ABCDEFGH", min_size=1, max_size=4),
        quantity=st.integers(1, 50),
        unit_price=st.integers(0, 1_000_000),
        weight_grams=st.integers(0, 5000),
    ),
    min_size=0,
    max_size=8,
)
voucher_strategy = st.one_of(
    st.none(),
    st.builds(pct, st.integers(1, 10_000)),
    st.builds(fixed, st.integers(1, 5_000_000)),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=lines_strategy,
    inclusive=st.booleans(),
    rate=st.sampled_from([0, 400, 700, 1000, 1900, 2000, 2100, 2500]),
    voucher=voucher_strategy,
    shipping=st.sampled_from([None, FLAT, BY_WEIGHT]),
)
def test_totals_always_add_up_to_the_cent(
    lines: list[CartLine],
    inclusive: bool,
    rate: int,
    voucher: Voucher | None,
    shipping: list[WeightBracket] | None,
) -> None:
    totals = price_order(
        lines,
        currency="EUR",
        prices_include_tax=inclusive,
        tax_rate_bp=rate,
        shipping=shipping,
        voucher=voucher,
    )
    assert totals.subtotal == sum(line.unit_price * line.quantity for line in lines)
    assert 0 <= totals.discount_total <= totals.subtotal
    assert sum(line.discount for line in totals.lines) == totals.discount_total
    assert all(0 <= line.discount <= line.subtotal for line in totals.lines)
    assert totals.tax_total == sum(line.tax for line in totals.lines) + totals.shipping_tax
    items = totals.subtotal - totals.discount_total + totals.shipping_total
    assert totals.total == (items if inclusive else items + totals.tax_total)
    added_shipping_tax = 0 if inclusive else totals.shipping_tax
    assert totals.total == (
        sum(line.total for line in totals.lines) + totals.shipping_total + added_shipping_tax
    )
    assert totals.total >= 0 and all(line.tax >= 0 for line in totals.lines)
    if inclusive:
        assert all(line.tax <= line.total for line in totals.lines)


@settings(max_examples=200, deadline=None)
@given(
    prices=st.lists(st.integers(1, 100_000), min_size=1, max_size=6),
    bp=st.integers(1, 10_000),
)
def test_percentage_discount_is_proportional_within_a_cent_per_line(
    prices: list[int], bp: int
) -> None:
    totals = price_order(
        [CartLine(f"S{i}", 1, p) for i, p in enumerate(prices)],
        currency="EUR",
        prices_include_tax=True,
        tax_rate_bp=0,
        voucher=pct(bp),
    )
    exact_total = Money(sum(prices), "EUR").percentage(bp).amount
    assert totals.discount_total == exact_total
    for line in totals.lines:
        share = line.subtotal * totals.discount_total / totals.subtotal
        assert abs(line.discount - share) < 1


# --- shipping -----------------------------------------------------------------------------------


def test_weight_based_shipping_picks_the_first_bracket_the_parcel_fits() -> None:
    assert shipping_cost(BY_WEIGHT, 0) == 500
    assert shipping_cost(BY_WEIGHT, 1000) == 500
    assert shipping_cost(BY_WEIGHT, 1001) == 900
    assert shipping_cost(list(reversed(BY_WEIGHT)), 4999) == 900
    assert shipping_cost(BY_WEIGHT, 80_000) == 2000
    assert shipping_cost(FLAT, 123_456) == 495


def test_a_parcel_heavier_than_every_bracket_cannot_ship() -> None:
    with pytest.raises(NotShippable) as caught:
        shipping_cost([WeightBracket(1000, 500)], 1001)
    assert caught.value.status == 422


# --- vouchers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voucher", "subtotal", "reason"),
    [
        (pct(1000, active=False), 1000, "no longer active"),
        (pct(1000, starts_at=NOW + timedelta(days=1)), 1000, "not valid yet"),
        (pct(1000, ends_at=NOW), 1000, "expired"),
        (pct(1000, currency="EUR", minimum_spend=1001), 1000, "minimum spend of EUR 10.01"),
        (Voucher("X", VoucherKind.FIXED, 500, currency="USD"), 1000, "USD carts"),
        (pct(500, currency="USD"), 1000, "USD carts"),
        (pct(2000, currency="USD", minimum_spend=100), 1_000_000, "USD carts"),
        (pct(2000, minimum_spend=100), 1_000_000, "minimum spend has no currency"),
    ],
)
def test_voucher_rules_say_why_a_voucher_does_not_apply(
    voucher: Voucher, subtotal: int, reason: str
) -> None:
    problem = domain.voucher_problem(voucher, subtotal=Money(subtotal, "EUR"), now=NOW)
    assert problem is not None and reason in problem


def test_voucher_applies_inside_its_window_at_the_minimum_spend() -> None:
    voucher = pct(
        1000,
        currency="EUR",
        minimum_spend=1000,
        starts_at=NOW - timedelta(days=1),
        ends_at=NOW + timedelta(1),
    )
    assert domain.voucher_problem(voucher, subtotal=Money(1000, "EUR"), now=NOW) is None


def test_a_percentage_voucher_without_currency_or_minimum_spend_applies_in_any_currency() -> None:
    for currency in ("EUR", "USD", "JPY"):
        assert domain.voucher_problem(pct(1000), subtotal=Money(1, currency), now=NOW) is None


@settings(max_examples=200, deadline=None)
@given(
    voucher_currency=st.sampled_from([None, "EUR", "USD"]),
    cart_currency=st.sampled_from(["EUR", "USD", "GBP"]),
    kind=st.sampled_from(list(VoucherKind)),
    minimum_spend=st.integers(0, 10_000),
    subtotal=st.integers(0, 20_000),
)
def test_a_voucher_applies_only_in_its_currency_and_from_its_minimum_spend(
    voucher_currency: str | None,
    cart_currency: str,
    kind: VoucherKind,
    minimum_spend: int,
    subtotal: int,
) -> None:
    voucher = Voucher("V", kind, 100, currency=voucher_currency, minimum_spend=minimum_spend)
    terms = domain.voucher_definition_problems(
        kind=kind,
        value=100,
        currency=voucher_currency,
        minimum_spend=minimum_spend,
        starts_at=None,
        ends_at=None,
    )
    applies = domain.voucher_problem(voucher, subtotal=Money(subtotal, cart_currency), now=NOW)
    expected = (
        not terms
        and voucher_currency in (None, cart_currency)
        and (minimum_spend == 0 or subtotal >= minimum_spend)
    )
    assert (applies is None) == expected


@pytest.mark.parametrize(
    ("terms", "fields"),
    [
        ({"kind": VoucherKind.FIXED, "value": 500}, ["currency"]),
        ({"kind": VoucherKind.PERCENTAGE, "value": 10_001, "currency": "EUR"}, ["value"]),
        ({"kind": VoucherKind.PERCENTAGE, "value": 1000, "minimum_spend": 1}, ["currency"]),
        ({"kind": VoucherKind.PERCENTAGE, "value": 1000, "ends_at": NOW}, ["ends_at"]),
        (
            {"kind": VoucherKind.PERCENTAGE, "value": 20_000, "minimum_spend": 1, "ends_at": NOW},
            ["value", "currency", "ends_at"],
        ),
        ({"kind": VoucherKind.PERCENTAGE, "value": 10_000}, []),
        ({"kind": VoucherKind.FIXED, "value": 500, "currency": "USD", "minimum_spend": 1}, []),
    ],
)
def test_voucher_terms_name_every_field_at_fault(
    terms: dict[str, object], fields: list[str]
) -> None:
    given_terms: dict[str, object] = {
        "currency": None,
        "minimum_spend": 0,
        "starts_at": NOW,
        "ends_at": None,
        **terms,
    }
    problems = domain.voucher_definition_problems(**given_terms)  # type: ignore[arg-type]
    assert [name for name, _ in problems] == fields


def test_voucher_codes_match_case_insensitively() -> None:
    assert domain.normalise_code("  welcome10 ") == "WELCOME10"


def test_percentage_over_one_hundred_never_discounts_more_than_the_subtotal() -> None:
    assert domain.voucher_discount(pct(20_000), Money(999, "EUR")).amount == 999


# --- state machine ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "action", "end"),
    [
        (OrderStatus.PENDING_PAYMENT, OrderAction.PAY, OrderStatus.PAID),
        (OrderStatus.PENDING_PAYMENT, OrderAction.CANCEL, OrderStatus.CANCELLED),
        (OrderStatus.PENDING_PAYMENT, OrderAction.EXPIRE, OrderStatus.CANCELLED),
        (OrderStatus.PAID, OrderAction.FULFIL_PARTIALLY, OrderStatus.PARTIALLY_FULFILLED),
        (OrderStatus.PAID, OrderAction.FULFIL, OrderStatus.FULFILLED),
        (OrderStatus.PARTIALLY_FULFILLED, OrderAction.FULFIL, OrderStatus.FULFILLED),
        (OrderStatus.FULFILLED, OrderAction.SHIP, OrderStatus.SHIPPED),
        (OrderStatus.SHIPPED, OrderAction.DELIVER, OrderStatus.DELIVERED),
        (OrderStatus.PAID, OrderAction.REFUND_PARTIALLY, OrderStatus.PARTIALLY_REFUNDED),
        (OrderStatus.DELIVERED, OrderAction.REFUND, OrderStatus.REFUNDED),
        (OrderStatus.PARTIALLY_REFUNDED, OrderAction.REFUND, OrderStatus.REFUNDED),
        (OrderStatus.DELIVERED, OrderAction.RETURN_LINES, OrderStatus.DELIVERED),
    ],
)
def test_the_order_life_cycle_follows_the_transitions_table(
    start: OrderStatus, action: OrderAction, end: OrderStatus
) -> None:
    assert next_status(start, action) is end


@pytest.mark.parametrize(
    ("start", "action"),
    [
        (OrderStatus.PAID, OrderAction.CANCEL),
        (OrderStatus.PENDING_PAYMENT, OrderAction.FULFIL),
        (OrderStatus.PENDING_PAYMENT, OrderAction.REFUND),
        (OrderStatus.PAID, OrderAction.SHIP),
        (OrderStatus.CANCELLED, OrderAction.PAY),
        (OrderStatus.REFUNDED, OrderAction.REFUND_PARTIALLY),
        (OrderStatus.DELIVERED, OrderAction.SHIP),
    ],
)
def test_an_illegal_transition_is_a_409_conflict(start: OrderStatus, action: OrderAction) -> None:
    with pytest.raises(IllegalTransition) as caught:
        next_status(start, action)
    assert isinstance(caught.value, Conflict) and caught.value.status == 409
    assert caught.value.extra == {"status_now": start.value, "action": action.value}


def test_every_status_has_a_row_and_only_cancelled_is_terminal() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)
    assert {OrderStatus.CANCELLED} == domain.TERMINAL
    assert domain.allowed_actions(OrderStatus.REFUNDED) == ["return_lines"]


def test_no_transition_leads_back_to_pending_payment() -> None:
    targets = {target for row in TRANSITIONS.values() for target in row.values()}
    assert OrderStatus.PENDING_PAYMENT not in targets


def test_refunds_are_possible_from_paid_and_every_later_status() -> None:
    later = set(OrderStatus) - {OrderStatus.PENDING_PAYMENT, OrderStatus.CANCELLED}
    for status in later - {OrderStatus.REFUNDED}:
        assert next_status(status, OrderAction.REFUND) is OrderStatus.REFUNDED


# --- fulfilment and returns ---------------------------------------------------------------------


LINES = [
    LineProgress("l1", 2),
    LineProgress("l2", 1, fulfilled=1),
    LineProgress("l3", 3, refunded=3),
]


def test_fulfilling_every_open_unit_completes_the_order() -> None:
    assert domain.fulfilment_action(LINES, {"l1": 2}) is OrderAction.FULFIL
    assert domain.fulfilment_action(LINES, {"l1": 1}) is OrderAction.FULFIL_PARTIALLY


@pytest.mark.parametrize(
    ("shipping", "field"),
    [
        ({}, "lines"),
        ({"l1": 3}, "lines.0.quantity"),
        ({"l1": 1, "l2": 1}, "lines.1.quantity"),
        ({"l3": 1}, "lines.0.quantity"),
        ({"l1": 1, "nope": 1}, "lines.1.line_id"),
        ({"l1": 0}, "lines.0.quantity"),
    ],
)
def test_a_fulfilment_beyond_what_is_open_is_a_422_on_the_line_at_fault(
    shipping: dict[str, int], field: str
) -> None:
    with pytest.raises(Unprocessable) as caught:
        domain.fulfilment_action(LINES, shipping)
    assert [e["field"] for e in caught.value.extra["errors"]] == [field]


def test_only_fulfilled_units_not_yet_returned_can_come_back() -> None:
    domain.check_return(LINES, {"l2": 1})
    with pytest.raises(Unprocessable) as caught:
        domain.check_return(LINES, {"l2": 1, "l1": 1})
    assert [e["field"] for e in caught.value.extra["errors"]] == ["lines.1.quantity"]
    with pytest.raises(Unprocessable) as caught:
        domain.check_return([LineProgress("l", 2, fulfilled=2, returned=2)], {"l": 1})
    assert [e["field"] for e in caught.value.extra["errors"]] == ["lines.0.quantity"]
    with pytest.raises(Unprocessable) as caught:
        domain.check_return(LINES, {"nope": 1})
    assert [e["field"] for e in caught.value.extra["errors"]] == ["lines.0.line_id"]


def test_allowed_actions_offer_fulfilling_and_returns_only_while_units_are_left_for_them() -> None:
    progress = domain.LineProgress
    open_line = [progress("l1", 3, fulfilled=1, refunded=1), progress("l2", 1, fulfilled=1)]
    partly = OrderState(
        OrderStatus.PARTIALLY_REFUNDED,
        FulfillmentStatus.PARTIALLY_FULFILLED,
        PaymentStatus.PARTIALLY_REFUNDED,
    )
    assert domain.allowed_actions(partly, open_line) == [
        "fulfil_partially",
        "fulfil",
        "return_lines",
        "refund_partially",
        "refund",
    ]
    # Every unit fulfilled or refunded: nothing left to fulfil.
    done = [progress("l1", 3, fulfilled=1, refunded=2), progress("l2", 1, fulfilled=1)]
    actions = domain.allowed_actions(OrderStatus.PARTIALLY_REFUNDED, done)
    assert "fulfil" not in actions and "fulfil_partially" not in actions
    assert "return_lines" in actions
    # Every fulfilled unit already returned, and nothing fulfilled on a paid order: no return.
    returned = [progress("l1", 2, fulfilled=2, returned=2)]
    assert "return_lines" not in domain.allowed_actions(OrderStatus.FULFILLED, returned)
    fresh = [progress("l1", 2)]
    assert domain.allowed_actions(OrderStatus.PAID, fresh) == [
        "fulfil_partially",
        "fulfil",
        "refund_partially",
        "refund",
    ]


# --- refunds ------------------------------------------------------------------------------------


def test_a_refund_by_lines_refunds_the_named_units_up_to_what_is_left() -> None:
    lines = [LineProgress("a", 2, refunded=1), LineProgress("b", 1)]
    gained = domain.refunded_units(lines, {"a": 5, "b": 1, "zz": 3}, settles_the_order=False)
    assert gained == {"a": 1, "b": 1}


def test_a_refund_of_the_rest_refunds_every_unit_no_earlier_refund_took() -> None:
    lines = [LineProgress("a", 2, refunded=1), LineProgress("b", 1), LineProgress("c", 3, 3, 0, 3)]
    assert domain.refunded_units(lines, {}, settles_the_order=True) == {"a": 1, "b": 1}


def test_a_refund_of_an_amount_that_leaves_money_to_refund_touches_no_line() -> None:
    lines = [LineProgress("a", 2), LineProgress("b", 1)]
    assert domain.refunded_units(lines, {}, settles_the_order=False) == {}


@settings(max_examples=200, deadline=None)
@given(
    quantities=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=5)
)
def test_after_a_refund_of_the_rest_every_line_is_wholly_refunded(
    quantities: list[tuple[int, int]],
) -> None:
    lines = [
        LineProgress(f"l{i}", quantity, refunded=min(refunded, quantity))
        for i, (quantity, refunded) in enumerate(quantities)
    ]
    gained = domain.refunded_units(lines, {}, settles_the_order=True)
    assert all(line.refunded + gained.get(line.line_id, 0) == line.quantity for line in lines)


@pytest.mark.parametrize("text", ["", "   ", "\n\n", " \t\r\n "])
def test_a_blank_note_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must not be blank"):
        check_note_text(text)


@pytest.mark.parametrize("text", ["a\x00b", "a\x1bb", "a\u202eb", "a\u2028b", "a\x0bb"])
def test_a_note_with_control_or_invisible_characters_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="control or invisible"):
        check_note_text(text)


def test_a_note_keeps_its_lines_and_tabs_as_written() -> None:
    text = " Fragile.\r\n\tCall first.\n"
    assert check_note_text(text) == text


# --- fulfilment and payment statuses ------------------------------------------------------------


def _state(status: OrderStatus, fulfillment: str, payment: str) -> OrderState:
    return OrderState(status, FulfillmentStatus(fulfillment), PaymentStatus(payment))


@pytest.mark.parametrize("action", [OrderAction.SHIP, OrderAction.DELIVER])
def test_a_partially_refunded_order_with_nothing_fulfilled_cannot_ship_or_deliver(
    action: OrderAction,
) -> None:
    state = _state(OrderStatus.PARTIALLY_REFUNDED, "unfulfilled", "partially_refunded")
    with pytest.raises(IllegalTransition) as caught:
        domain.advance(state, action)
    assert caught.value.extra == {
        "status_now": "partially_refunded",
        "fulfillment_status": "unfulfilled",
        "action": action.value,
    }
    assert action.value not in domain.allowed_actions(state, [LineProgress("l", 2, refunded=1)])


def test_after_a_partial_refund_fulfilment_goes_on_as_from_paid() -> None:
    state = _state(OrderStatus.PAID, "unfulfilled", "paid")
    state = domain.advance(state, OrderAction.REFUND_PARTIALLY)
    assert state == _state(OrderStatus.PARTIALLY_REFUNDED, "unfulfilled", "partially_refunded")
    state = domain.advance(state, OrderAction.FULFIL_PARTIALLY)
    with pytest.raises(IllegalTransition):
        domain.advance(state, OrderAction.SHIP)
    state = domain.advance(state, OrderAction.FULFIL)
    with pytest.raises(IllegalTransition) as caught:
        domain.advance(state, OrderAction.DELIVER)
    assert "must be shipped before it is delivered" in caught.value.detail
    state = domain.advance(state, OrderAction.SHIP)
    state = domain.advance(state, OrderAction.DELIVER)
    # The status stays where the money put it; the goods show how far they went.
    assert state == _state(OrderStatus.PARTIALLY_REFUNDED, "delivered", "partially_refunded")
    state = domain.advance(state, OrderAction.REFUND)
    assert state == _state(OrderStatus.REFUNDED, "delivered", "refunded")


def test_a_refunded_order_is_not_fulfilled_and_an_expired_one_is_voided() -> None:
    refunded = _state(OrderStatus.REFUNDED, "unfulfilled", "refunded")
    for action in (OrderAction.FULFIL, OrderAction.FULFIL_PARTIALLY, OrderAction.SHIP):
        with pytest.raises(IllegalTransition):
            domain.advance(refunded, action)
    pending = OrderState(OrderStatus.PENDING_PAYMENT)
    assert domain.advance(pending, OrderAction.EXPIRE).payment is PaymentStatus.VOIDED
    assert domain.advance(pending, OrderAction.CANCEL).payment is PaymentStatus.VOIDED


def test_paying_less_than_the_total_is_partially_paid() -> None:
    pending = OrderState(OrderStatus.PENDING_PAYMENT)
    short = domain.advance(pending, OrderAction.PAY, paid_short=True)
    assert (short.status, short.payment) == (OrderStatus.PAID, PaymentStatus.PARTIALLY_PAID)
    assert domain.advance(pending, OrderAction.PAY).payment is PaymentStatus.PAID
    refunded = domain.advance(short, OrderAction.REFUND_PARTIALLY)
    assert refunded.payment is PaymentStatus.PARTIALLY_REFUNDED


def test_refunding_the_units_left_to_fulfil_completes_a_partial_fulfilment() -> None:
    done = [LineProgress("l", 2, fulfilled=1, refunded=1)]
    still_open = [LineProgress("l", 3, fulfilled=1, refunded=1)]
    partial = FulfillmentStatus.PARTIALLY_FULFILLED
    assert domain.fulfillment_after_refund(partial, done) is FulfillmentStatus.FULFILLED
    assert domain.fulfillment_after_refund(partial, still_open) is partial
    nothing = FulfillmentStatus.UNFULFILLED
    assert domain.fulfillment_after_refund(nothing, [LineProgress("l", 1, refunded=1)]) is nothing


def test_buyers_are_offered_paying_and_cancelling_only_and_nobody_expiring() -> None:
    pending = OrderState(OrderStatus.PENDING_PAYMENT)
    fresh = [LineProgress("l", 1)]
    assert domain.allowed_actions(pending, fresh, staff=False) == ["pay", "cancel"]
    assert domain.allowed_actions(pending, fresh, staff=True) == ["cancel"]
    paid = _state(OrderStatus.PAID, "unfulfilled", "paid")
    assert domain.allowed_actions(paid, fresh, staff=False) == []
    for status in OrderStatus:
        for staff in (True, False):
            assert "expire" not in domain.allowed_actions(status, staff=staff)


@pytest.mark.parametrize(
    ("status", "fulfillment", "action", "says"),
    [
        ("paid", "unfulfilled", "ship", "before the order ships; 0 of 3 are."),
        ("partially_fulfilled", "partially_fulfilled", "ship", "ships; 1 of 3 is."),
        ("partially_refunded", "unfulfilled", "ship", "ships; 0 of 2 are."),
        ("paid", "unfulfilled", "deliver", "must be shipped before it is delivered"),
        ("fulfilled", "fulfilled", "deliver", "its fulfilment is 'fulfilled'."),
        ("fulfilled", "fulfilled", "fulfil_partially", "nothing is left to fulfil"),
        ("shipped", "shipped", "ship", "already shipped"),
        ("delivered", "delivered", "deliver", "already been delivered"),
        ("paid", "unfulfilled", "return_lines", "nothing can be returned"),
        ("pending_payment", "unfulfilled", "ship", "in status 'pending_payment' cannot ship."),
        ("refunded", "unfulfilled", "fulfil", "in status 'refunded' cannot fulfil."),
        ("cancelled", "unfulfilled", "deliver", "in status 'cancelled' cannot deliver."),
    ],
)
def test_a_refused_fulfilment_action_has_one_shape_whatever_the_status(
    status: str, fulfillment: str, action: str, says: str
) -> None:
    lines = [
        LineProgress("a", 2, fulfilled=1 if fulfillment != "unfulfilled" else 0),
        LineProgress("b", 1, refunded=1 if status == "partially_refunded" else 0),
    ]
    state = OrderState(OrderStatus(status), FulfillmentStatus(fulfillment))
    with pytest.raises(IllegalTransition) as caught:
        domain.advance(state, action, lines=lines)
    assert caught.value.extra == {
        "status_now": status,
        "fulfillment_status": fulfillment,
        "action": action,
    }
    assert says in caught.value.detail
