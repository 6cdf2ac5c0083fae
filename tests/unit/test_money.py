"""Money: integer minor units, one currency, exact rounding, no lost cents."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ecosistema.platform.money import (
    ISO_4217,
    CurrencyMismatch,
    Money,
    MoneyModel,
    Rounding,
    UnknownCurrency,
    divide_rounding,
    iso_currency,
    minor_unit_exponent,
    tax_from_inclusive,
    tax_on_exclusive,
)

amounts = st.integers(min_value=-(10**15), max_value=10**15)
currencies = st.sampled_from(sorted(ISO_4217))


def eur(amount: int) -> Money:
    return Money(amount, "EUR")


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("EUR", 2), ("USD", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_minor_unit_exponents_follow_iso_4217(code: str, exponent: int) -> None:
    assert minor_unit_exponent(code) == exponent


def test_the_currency_table_holds_only_well_formed_codes() -> None:
    assert len(ISO_4217) > 150
    assert all(len(c) == 3 and c.isupper() and c.isalpha() for c in ISO_4217)
    assert set(ISO_4217.values()) <= {0, 2, 3, 4}


@pytest.mark.parametrize("code", ["eur", "EURO", "XXX", "XAU", "ABC", ""])
def test_unknown_currency_is_refused(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        Money(100, code)


@pytest.mark.parametrize("amount", [1.5, 100.0, Decimal("1"), "100", True])
def test_amount_must_be_an_int_never_a_float(amount: object) -> None:
    with pytest.raises(TypeError):
        Money(amount, "EUR")  # type: ignore[arg-type]


@given(a=amounts, b=amounts)
def test_addition_and_subtraction_are_exact(a: int, b: int) -> None:
    assert eur(a) + eur(b) == eur(a + b)
    assert eur(a) - eur(b) == eur(a - b)
    assert (eur(a) + eur(b)) - eur(b) == eur(a)


@pytest.mark.parametrize(
    "combine",
    [
        lambda x, y: x + y,
        lambda x, y: x - y,
        lambda x, y: x < y,
        lambda x, y: x >= y,
    ],
)
def test_different_currencies_cannot_be_combined(combine: object) -> None:
    with pytest.raises(CurrencyMismatch):
        combine(Money(100, "EUR"), Money(100, "USD"))  # type: ignore[operator]


def test_equal_amounts_in_different_currencies_are_not_equal() -> None:
    assert Money(100, "EUR") != Money(100, "USD")


def test_multiplying_by_a_quantity() -> None:
    assert eur(1999) * 3 == eur(5997)
    assert 3 * eur(1999) == eur(5997)
    with pytest.raises(TypeError):
        eur(100) * 1.5  # type: ignore[operator]


def test_comparisons_within_a_currency() -> None:
    assert eur(100) < eur(101) <= eur(101) < eur(200)
    assert max([eur(5), eur(50), eur(7)]) == eur(50)


@given(amount=amounts, ratios=st.lists(st.integers(0, 1000), min_size=1, max_size=12))
def test_allocate_always_sums_to_the_total(amount: int, ratios: list[int]) -> None:
    if sum(ratios) == 0:
        ratios[0] = 1
    parts = eur(amount).allocate(ratios)
    assert len(parts) == len(ratios)
    assert sum(p.amount for p in parts) == amount
    assert all(isinstance(p.amount, int) for p in parts)
    for part, ratio in zip(parts, ratios, strict=True):
        exact = Decimal(amount) * ratio / sum(ratios)
        assert abs(Decimal(part.amount) - exact) < 1


def test_allocate_gives_leftover_cents_to_the_earliest_largest_remainders() -> None:
    assert eur(100).allocate([1, 1, 1]) == [eur(34), eur(33), eur(33)]
    assert eur(-100).allocate([1, 1, 1]) == [eur(-34), eur(-33), eur(-33)]
    assert eur(5).allocate([3, 7]) == [eur(2), eur(3)]
    assert eur(100).allocate([0, 1]) == [eur(0), eur(100)]


@pytest.mark.parametrize("ratios", [[], [0, 0], [-1, 2]])
def test_allocate_refuses_meaningless_ratios(ratios: list[int]) -> None:
    with pytest.raises(ValueError):
        eur(100).allocate(ratios)


@pytest.mark.parametrize(
    ("amount", "bp", "rounding", "expected"),
    [
        (1000, 2100, Rounding.HALF_EVEN, 210),
        (250, 1000, Rounding.HALF_EVEN, 25),
        (25, 1000, Rounding.HALF_EVEN, 2),  # 2.5 -> 2
        (35, 1000, Rounding.HALF_EVEN, 4),  # 3.5 -> 4
        (25, 1000, Rounding.HALF_UP, 3),
        (-25, 1000, Rounding.HALF_UP, -3),
        (-25, 1000, Rounding.HALF_EVEN, -2),
        (29, 1000, Rounding.DOWN, 2),
        (21, 1000, Rounding.UP, 3),
    ],
)
def test_percentage_rounds_once_with_the_named_mode(
    amount: int, bp: int, rounding: Rounding, expected: int
) -> None:
    assert eur(amount).percentage(bp, rounding) == eur(expected)


@given(
    n=st.integers(-(10**12), 10**12),
    d=st.integers(1, 10**6),
    rounding=st.sampled_from(list(Rounding)),
)
def test_integer_rounding_matches_decimal_rounding(n: int, d: int, rounding: Rounding) -> None:
    modes = {
        Rounding.HALF_EVEN: "ROUND_HALF_EVEN",
        Rounding.HALF_UP: "ROUND_HALF_UP",
        Rounding.DOWN: "ROUND_DOWN",
        Rounding.UP: "ROUND_UP",
    }
    expected = (Decimal(n) / Decimal(d)).quantize(Decimal(1), rounding=modes[rounding])
    assert divide_rounding(n, d, rounding) == int(expected)


def test_decimal_conversion_is_exact_both_ways() -> None:
    assert Money.from_decimal("12.34", "EUR") == eur(1234)
    assert Money.from_decimal(Decimal("-0.05"), "EUR") == eur(-5)
    assert Money.from_decimal("500", "JPY") == Money(500, "JPY")
    assert Money.from_decimal("1.234", "KWD") == Money(1234, "KWD")
    assert Money.from_decimal("12.3400", "EUR") == eur(1234)
    assert Money(1234, "EUR").to_decimal() == Decimal("12.34")
    assert Money(1234, "KWD").to_decimal() == Decimal("1.234")


@given(amount=amounts, currency=currencies)
def test_decimal_round_trip(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    assert Money.from_decimal(money.to_decimal(), currency) == money
    assert Money.from_decimal(str(money.to_decimal()), currency) == money


def test_too_many_decimals_need_an_explicit_rounding() -> None:
    with pytest.raises(ValueError, match="rounding"):
        Money.from_decimal("12.345", "EUR")
    assert Money.from_decimal("12.345", "EUR", rounding=Rounding.HALF_UP) == eur(1235)
    assert Money.from_decimal("12.345", "EUR", rounding=Rounding.HALF_EVEN) == eur(1234)
    with pytest.raises(ValueError):
        Money.from_decimal("1.5", "JPY")


@pytest.mark.parametrize("value", [1.5, 12.0])
def test_floats_are_refused(value: float) -> None:
    with pytest.raises(TypeError, match="float"):
        Money.from_decimal(value, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["abc", "NaN", "Infinity", "1e", ""])
def test_non_amounts_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        Money.from_decimal(value, "EUR")


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1234, "EUR"), "EUR 12.34"),
        (Money(5, "EUR"), "EUR 0.05"),
        (Money(-5, "EUR"), "EUR -0.05"),
        (Money(0, "EUR"), "EUR 0.00"),
        (Money(500, "JPY"), "JPY 500"),
        (Money(1, "KWD"), "KWD 0.001"),
        (Money(10**12, "USD"), "USD 10000000000.00"),
    ],
)
def test_formatting(money: Money, text: str) -> None:
    assert str(money) == text


def test_total_sums_in_one_currency() -> None:
    assert Money.total([eur(1), eur(2), eur(3)], currency="EUR") == eur(6)
    assert Money.total([], currency="EUR") == eur(0)
    with pytest.raises(CurrencyMismatch):
        Money.total([eur(1), Money(1, "USD")], currency="EUR")


@pytest.mark.parametrize(
    ("net", "rate_bp", "tax"),
    [(10000, 2100, 2100), (999, 2100, 210), (1, 2100, 0), (0, 2100, 0), (1000, 0, 0)],
)
def test_tax_on_exclusive_amounts(net: int, rate_bp: int, tax: int) -> None:
    assert tax_on_exclusive(eur(net), rate_bp) == eur(tax)


@pytest.mark.parametrize(
    ("gross", "rate_bp", "tax"),
    [(12100, 2100, 2100), (1000, 2100, 174), (11000, 1000, 1000), (500, 0, 0)],
)
def test_tax_from_inclusive_amounts(gross: int, rate_bp: int, tax: int) -> None:
    assert tax_from_inclusive(eur(gross), rate_bp) == eur(tax)


@given(net=st.integers(0, 10**12), rate_bp=st.integers(0, 10_000))
def test_inclusive_tax_recovers_exclusive_tax_within_a_cent(net: int, rate_bp: int) -> None:
    tax = tax_on_exclusive(eur(net), rate_bp)
    recovered = tax_from_inclusive(eur(net) + tax, rate_bp)
    assert abs(recovered.amount - tax.amount) <= 1


def test_money_model_validates_and_converts() -> None:
    model = MoneyModel.model_validate({"amount": 1234, "currency": "EUR"})
    assert model.to_money() == eur(1234)
    assert MoneyModel.of(eur(5)).model_dump() == {"amount": 5, "currency": "EUR"}
    # A currency as input is read in any case; Money itself only holds the upper-case code.
    assert MoneyModel.model_validate({"amount": 5, "currency": "eur"}).to_money() == eur(5)


@pytest.mark.parametrize(("given", "code"), [("eur", "EUR"), ("Usd", "USD"), ("JPY", "JPY")])
def test_an_input_currency_is_read_in_any_case(given: str, code: str) -> None:
    assert iso_currency(given) == code


@pytest.mark.parametrize("given", ["xyz", "EURO", "", "eu"])
def test_an_input_currency_that_is_not_iso_4217_is_refused(given: str) -> None:
    with pytest.raises(UnknownCurrency, match="not an ISO 4217 currency code"):
        iso_currency(given)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"amount": 12.5, "currency": "EUR"}, "amount"),
        ({"amount": 12.0, "currency": "EUR"}, "amount"),
        ({"amount": "12", "currency": "EUR"}, "amount"),
        ({"amount": 1, "currency": "eu"}, "currency"),
        ({"amount": 1, "currency": "ZZZ"}, "currency"),
        ({"amount": 1}, "currency"),
    ],
)
def test_money_model_rejects_floats_and_unknown_currencies(
    payload: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as excinfo:
        MoneyModel.model_validate(payload)
    assert [e["loc"][0] for e in excinfo.value.errors()] == [field]
