"""Money: integer minor units plus an ISO 4217 currency; arithmetic and rounding in one place.

No float ever enters: amounts are ``int`` minor units (cents, yen, fils), decimals come in and go
out as ``Decimal`` or strings, and every division rounds with an explicit, named mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Active ISO 4217 currencies and their minor-unit exponents (digits after the decimal point).
# Units without a minor unit (gold, SDR, test codes) are not money here and are left out.
ISO_4217: dict[str, int] = {
    "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2, "AWG": 2,
    "AZN": 2, "BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0, "BMD": 2, "BND": 2,
    "BOB": 2, "BOV": 2, "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2, "CAD": 2,
    "CDF": 2, "CHE": 2, "CHF": 2, "CHW": 2, "CLF": 4, "CLP": 0, "CNY": 2, "COP": 2, "COU": 2,
    "CRC": 2, "CUC": 2, "CUP": 2, "CVE": 2, "CZK": 2, "DJF": 0, "DKK": 2, "DOP": 2, "DZD": 2,
    "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2, "FJD": 2, "FKP": 2, "GBP": 2, "GEL": 2, "GHS": 2,
    "GIP": 2, "GMD": 2, "GNF": 0, "GTQ": 2, "GYD": 2, "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2,
    "IDR": 2, "ILS": 2, "INR": 2, "IQD": 3, "IRR": 2, "ISK": 0, "JMD": 2, "JOD": 3, "JPY": 0,
    "KES": 2, "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2,
    "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3, "MAD": 2, "MDL": 2, "MGA": 2,
    "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2, "MWK": 2, "MXN": 2,
    "MXV": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2, "NOK": 2, "NPR": 2, "NZD": 2,
    "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2, "PKR": 2, "PLN": 2, "PYG": 0, "QAR": 2,
    "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0, "SAR": 2, "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2,
    "SGD": 2, "SHP": 2, "SLE": 2, "SLL": 2, "SOS": 2, "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2,
    "SYP": 2, "SZL": 2, "THB": 2, "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2,
    "TWD": 2, "TZS": 2, "UAH": 2, "UGX": 0, "USD": 2, "USN": 2, "UYI": 0, "UYU": 2, "UYW": 4,
    "UZS": 2, "VED": 2, "VES": 2, "VND": 0, "VUV": 0, "WST": 2, "XAF": 0, "XCD": 2, "XCG": 2,
    "XOF": 0, "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2, "ZWG": 2,
}  # fmt: skip

BASIS_POINTS = 10_000


class UnknownCurrency(ValueError):
    """The code is not an active ISO 4217 currency with a minor unit."""


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined or compared."""


class Rounding(StrEnum):
    """How a fraction of a minor unit is settled."""

    HALF_EVEN = "half_even"
    HALF_UP = "half_up"
    DOWN = "down"
    UP = "up"


def iso_currency(value: str) -> str:
    """A currency code as input by a user, upper-cased; ``UnknownCurrency`` if not ISO 4217."""
    code = value.upper()
    if code not in ISO_4217:
        raise UnknownCurrency("not an ISO 4217 currency code")
    return code


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point for an ISO 4217 code (EUR 2, JPY 0, KWD 3)."""
    try:
        return ISO_4217[currency]
    except KeyError:
        raise UnknownCurrency(f"{currency!r} is not an ISO 4217 currency code") from None


def divide_rounding(numerator: int, denominator: int, rounding: Rounding) -> int:
    """``numerator / denominator`` rounded to an integer; exact, symmetric around zero."""
    if denominator == 0:
        raise ZeroDivisionError("division by zero")
    negative = (numerator < 0) != (denominator < 0)
    quotient, remainder = divmod(abs(numerator), abs(denominator))
    if remainder:
        twice, whole = 2 * remainder, abs(denominator)
        if (
            rounding is Rounding.UP
            or (rounding is not Rounding.DOWN and twice > whole)
            or (twice == whole and rounding is Rounding.HALF_UP)
            or (twice == whole and rounding is Rounding.HALF_EVEN and quotient % 2 == 1)
        ):
            quotient += 1
    return -quotient if negative else quotient


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of minor units of one currency: ``Money(1234, "EUR")`` is EUR 12.34."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        _check_int(self.amount, "amount")
        if not isinstance(self.currency, str):
            raise TypeError("currency must be a str")
        minor_unit_exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Nothing, in ``currency``."""
        return cls(0, currency)

    @classmethod
    def from_decimal(
        cls, value: Decimal | str | int, currency: str, *, rounding: Rounding | None = None
    ) -> Money:
        """Major units (``"12.34"``) to Money; inexact values need an explicit ``rounding``."""
        if isinstance(value, float | bool):
            raise TypeError("money is never built from a float; pass a Decimal or a string")
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal amount") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite amount")
        sign, digits, raw_exponent = number.as_tuple()
        exponent = int(raw_exponent)
        coefficient = int("".join(map(str, digits)) or "0")
        shift = exponent + minor_unit_exponent(currency)
        if shift >= 0:
            minor = coefficient * 10**shift
        elif rounding is None:
            minor = coefficient // 10**-shift
            if minor * 10**-shift != coefficient:
                raise ValueError(
                    f"{value} has more decimals than {currency} allows; pass a rounding mode"
                )
        else:
            minor = divide_rounding(coefficient, 10**-shift, rounding)
        return cls(-minor if sign else minor, currency)

    @classmethod
    def total(cls, values: Iterable[Money], *, currency: str) -> Money:
        """The sum of ``values``, all in ``currency`` (zero when there are none)."""
        result = cls.zero(currency)
        for value in values:
            result = result + value
        return result

    @property
    def exponent(self) -> int:
        """Digits after the decimal point in this currency."""
        return ISO_4217[self.currency]

    def to_decimal(self) -> Decimal:
        """The amount in major units, exactly (``Decimal("12.34")``)."""
        return Decimal(self.amount).scaleb(-self.exponent)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} cannot be combined")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount), self.currency)

    def __mul__(self, quantity: int) -> Money:
        return Money(self.amount * _check_int(quantity, "quantity"), self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def __str__(self) -> str:
        if self.exponent == 0:
            return f"{self.currency} {self.amount}"
        return f"{self.currency} {self.to_decimal():f}"

    @property
    def is_zero(self) -> bool:
        return self.amount == 0

    @property
    def is_negative(self) -> bool:
        return self.amount < 0

    def allocate(self, ratios: Sequence[int]) -> list[Money]:
        """Split by integer ratios without losing a minor unit (largest remainder method).

        Leftover units go to the shares with the largest remainders, earlier shares first on
        ties; a negative amount splits like its absolute value, negated.
        """
        weights = [_check_int(r, "ratio") for r in ratios]
        if not weights:
            raise ValueError("allocate needs at least one ratio")
        if any(w < 0 for w in weights):
            raise ValueError("ratios cannot be negative")
        whole = sum(weights)
        if whole == 0:
            raise ValueError("ratios must not all be zero")
        magnitude = abs(self.amount)
        shares = [magnitude * w // whole for w in weights]
        remainders = [magnitude * w % whole for w in weights]
        leftover = magnitude - sum(shares)
        by_remainder = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
        for i in by_remainder[:leftover]:
            shares[i] += 1
        sign = -1 if self.amount < 0 else 1
        return [Money(sign * share, self.currency) for share in shares]

    def percentage(self, basis_points: int, rounding: Rounding = Rounding.HALF_EVEN) -> Money:
        """This amount times ``basis_points`` / 10 000 (2 100 bp = 21 %), rounded once."""
        product = self.amount * _check_int(basis_points, "basis_points")
        return Money(divide_rounding(product, BASIS_POINTS, rounding), self.currency)


def tax_on_exclusive(net: Money, rate_bp: int, rounding: Rounding = Rounding.HALF_EVEN) -> Money:
    """The tax to add to a net (tax-exclusive) amount at ``rate_bp`` basis points."""
    return net.percentage(rate_bp, rounding)


def tax_from_inclusive(
    gross: Money, rate_bp: int, rounding: Rounding = Rounding.HALF_EVEN
) -> Money:
    """The tax contained in a gross (tax-inclusive) amount at ``rate_bp`` basis points."""
    rate = _check_int(rate_bp, "rate_bp")
    if rate < 0:
        raise ValueError("a tax rate cannot be negative")
    tax = divide_rounding(gross.amount * rate, BASIS_POINTS + rate, rounding)
    return Money(tax, gross.currency)


class MoneyModel(BaseModel):
    """Money in a request or response: ``{"amount": 1234, "currency": "EUR"}`` (minor units)."""

    model_config = ConfigDict(frozen=True)

    amount: int = Field(strict=True, description="Amount in minor units (cents for EUR).")
    currency: str = Field(
        min_length=3, max_length=3, description="ISO 4217 code.", examples=["EUR"]
    )

    _known_currency = field_validator("currency")(iso_currency)

    @classmethod
    def of(cls, money: Money) -> MoneyModel:
        """The schema form of a Money value."""
        return cls(amount=money.amount, currency=money.currency)

    def to_money(self) -> Money:
        """The Money value this schema carries."""
        return Money(self.amount, self.currency)
