"""The orders service's public contract: carts, orders, vouchers, tax rates, shipping methods.
Every request body forbids unknown fields; amounts are integer minor units with a currency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ecosistema.orders.domain import (
    FulfillmentStatus,
    OrderStatus,
    PaymentStatus,
    VoucherKind,
    voucher_definition_problems,
)
from ecosistema.platform.addresses import Address as Address
from ecosistema.platform.addresses import PostalAddress as PostalAddress
from ecosistema.platform.addresses import is_country
from ecosistema.platform.errors import pattern_rule
from ecosistema.platform.money import iso_currency
from ecosistema.platform.sku import SKU_PATTERN as _SKU
from ecosistema.platform.text import (
    check_display_text,
    check_note_text,
    check_optional_note_text,
)
from ecosistema.platform.timestamps import Timestamp

_COUNTRY = pattern_rule(r"^[A-Za-z]{2}$", "a two-letter ISO 3166-1 country code, e.g. DE")
_CODE = pattern_rule(
    r"^\s*[A-Za-z0-9][A-Za-z0-9_\-]*\s*$",
    "a code: a letter or digit, then letters, digits, `_` or `-`",
)
_METHOD = pattern_rule(
    r"^[a-z0-9][a-z0-9_\-]*$",
    "a code: a lower-case letter or digit, then lower-case letters, digits, `_` or `-`",
)
MAX_AMOUNT = 10**12


class Input(BaseModel):
    """Base for request bodies: unknown fields are an error (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


def _refuse(title: str, problems: list[tuple[tuple[str | int, ...], str, Any]]) -> None:
    """Raise the ``(location, message, input)`` problems a model validator found, each at the
    field at fault (``currency``, ``rates.EUR.0.up_to_grams``) rather than at the whole body."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("invalid", "{message}", {"message": message}),
                    loc=loc,
                    input=value,
                )
                for loc, message, value in problems
            ],
        )


# --- addresses ----------------------------------------------------------------------------------


def address_conflict(address_country: str, country: str) -> str | None:
    """Why ``country`` cannot go with a shipping address in ``address_country`` (None when
    they agree): taxes follow where the order is delivered."""
    if country.upper() == address_country:
        return None
    return (
        f"the shipping address is in {address_country} but the order is for "
        f"{country.upper()}: taxes follow where the order is delivered"
    )


def _country_follows_address(model: Any) -> Any:
    """A request giving both a shipping address and a ``country`` must name one country."""
    shipping, country = model.shipping_address, model.country
    if shipping is not None and country is not None:
        message = address_conflict(shipping.country, country)
        if message is not None:
            loc: tuple[str | int, ...] = ("shipping_address", "country")
            _refuse(type(model).__name__, [(loc, message, shipping.country)])
    return model


# --- carts --------------------------------------------------------------------------------------


class CartItemAdd(Input):
    sku: str = Field(min_length=1, max_length=64, pattern=_SKU)
    quantity: int = Field(strict=True, ge=1, le=10_000)


MAX_CART_CREATE_ITEMS = 100


SHIPPING_ADDRESS_ON_CART = (
    "Where to deliver. The cart's country becomes the address's country (taxes follow "
    "delivery); null clears it. Checkout uses it unless the checkout request gives one."
)
BILLING_ADDRESS_ON_CART = (
    "For the invoice; shown as the shipping address when left out. Null clears it. Checkout "
    "uses it unless the checkout request gives one."
)


class CartCreate(Input):
    currency: str = Field(default="EUR", min_length=3, max_length=3)
    country: str | None = Field(
        default=None,
        pattern=_COUNTRY,
        description="Where the cart ships (ISO 3166-1 alpha-2); with a shipping address, "
        "that address's country.",
    )
    shipping_method: str | None = Field(
        default=None,
        max_length=50,
        pattern=_METHOD,
        description="The code of an active shipping method, as PATCH /carts/{id} takes it.",
    )
    email: EmailStr | None = None
    shipping_address: Address | None = Field(default=None, description=SHIPPING_ADDRESS_ON_CART)
    billing_address: Address | None = Field(default=None, description=BILLING_ADDRESS_ON_CART)
    # Left out, there are no lines; ``null`` is refused like any other value that is no list.
    items: list[CartItemAdd] = Field(
        default_factory=list,
        max_length=MAX_CART_CREATE_ITEMS,
        description="The basket: the answer is a new cart with exactly these lines (a "
        "signed-in customer's active cart in that currency is replaced). Each line is checked "
        "as POST /carts/{id}/items checks one; a bad line refuses the whole request. A "
        "repeated SKU adds up. May be left out, not null.",
    )

    _check_currency = field_validator("currency")(iso_currency)
    _one_country = model_validator(mode="after")(_country_follows_address)


class CartUpdate(Input):
    """PATCH carts/{id}: where it ships, how, the contact email and the addresses; a field
    left out keeps its value, null clears it."""

    country: str | None = Field(
        default=None,
        pattern=_COUNTRY,
        description="Where the cart ships (ISO 3166-1 alpha-2). While the cart has a shipping "
        "address, its country is that address's: another one is refused.",
    )
    shipping_method: str | None = Field(default=None, max_length=50, pattern=_METHOD)
    email: EmailStr | None = None
    shipping_address: Address | None = Field(default=None, description=SHIPPING_ADDRESS_ON_CART)
    billing_address: Address | None = Field(default=None, description=BILLING_ADDRESS_ON_CART)

    _one_country = model_validator(mode="after")(_country_follows_address)


class CartItemUpdate(Input):
    quantity: int = Field(strict=True, ge=0, le=10_000, description="0 removes the line.")


class VoucherApply(Input):
    code: str = Field(min_length=1, max_length=64, pattern=_CODE)


class Totals(BaseModel):
    currency: str
    prices_include_tax: bool
    tax_rate_bp: int
    subtotal: int
    discount_total: int
    shipping_total: int
    tax_total: int
    total: int
    weight_grams: int


class CartLine(BaseModel):
    sku: str
    quantity: int
    product_id: str | None
    product_name: str | None
    variant_name: str | None
    unit_price: int | None
    available: int
    purchasable: bool
    subtotal: int
    discount: int
    tax: int
    total: int


class Cart(BaseModel):
    id: str
    token: str | None = Field(
        default=None,
        description="Only when an anonymous cart is created: send it back in X-Cart-Token.",
    )
    customer_id: str | None
    status: str
    currency: str
    country: str | None
    email: str | None
    shipping_address: PostalAddress | None = None
    billing_address: PostalAddress | None = Field(
        default=None, description="The shipping address when no other was given."
    )
    shipping_method: str | None
    voucher_code: str | None
    lines: list[CartLine]
    totals: Totals
    problems: list[str] = Field(
        default_factory=list, description="What must change before this cart can check out."
    )
    created_at: datetime
    updated_at: datetime


# --- orders -------------------------------------------------------------------------------------


class CheckoutRequest(Input):
    """POST orders: the cart to buy. Amounts always come from the server."""

    cart_id: str = Field(min_length=1, max_length=32)
    email: EmailStr | None = None
    country: str | None = Field(default=None, pattern=_COUNTRY)
    shipping_method: str | None = Field(default=None, max_length=50, pattern=_METHOD)
    shipping_address: Address | None = Field(
        default=None,
        description="Where to deliver; the cart's when left out. Its country is the order's "
        "country (taxes follow it). Needed when the order has a shipping method.",
    )
    billing_address: Address | None = Field(
        default=None,
        description="For the invoice; the cart's when left out, else the shipping address.",
    )

    _one_country = model_validator(mode="after")(_country_follows_address)


class OrderLine(BaseModel):
    line_id: str
    sku: str
    product_id: str | None = None
    name: str
    quantity: int
    unit_price: int
    subtotal: int = 0
    discount: int = 0
    tax: int
    total: int
    fulfilled_quantity: int = 0
    returned_quantity: int = 0
    refunded_quantity: int = 0


class OrderSummary(BaseModel):
    """What other services (payments) learn about an order through ``OrdersClient``."""

    id: str
    number: str
    customer_id: str | None
    email: str
    status: OrderStatus
    fulfillment_status: FulfillmentStatus = Field(
        description="The goods, whatever the money did: unfulfilled, partially_fulfilled, "
        "fulfilled, shipped, delivered."
    )
    payment_status: PaymentStatus = Field(
        description="The money: pending, partially_paid (less than the total captured), paid, "
        "partially_refunded, refunded, voided (cancelled unpaid)."
    )
    amount_paid: int = Field(
        description="What was captured for the order, in minor units, before refunds "
        "(refunded_total); less than total when partially_paid."
    )
    currency: str
    subtotal: int
    discount_total: int
    tax_total: int
    shipping_total: int
    total: int
    prices_include_tax: bool
    tax_rate_bp: int = Field(description="The rate applied to every line and to shipping.")
    shipping_tax: int
    shipping_address: PostalAddress | None = None
    billing_address: PostalAddress | None = Field(
        default=None, description="The shipping address when the buyer gave no other."
    )
    lines: list[OrderLine]
    created_at: datetime
    updated_at: datetime = Field(
        description="When the order last changed: status, note, fulfilment, refund, return."
    )
    reservation_expires_at: datetime | None


class Fulfillment(BaseModel):
    id: str
    tracking_number: str
    carrier: str | None
    lines: list[dict[str, Any]]
    created_at: datetime


class Order(OrderSummary):
    country: str
    shipping_method: str | None
    voucher_code: str | None
    refunded_total: int
    allowed_actions: list[str]
    fulfillments: list[Fulfillment]


# ``-created_at``: newest first; ``updated_at``: least recently changed first (incremental sync).
OrderSort = Literal["-created_at", "updated_at"]


class OrderPage(BaseModel):
    items: list[OrderSummary]
    next_cursor: str | None


class LineQuantity(Input):
    line_id: str = Field(min_length=1, max_length=32)
    quantity: int = Field(strict=True, ge=1, le=10_000)


def _distinct_lines(lines: list[LineQuantity]) -> list[LineQuantity]:
    if len({line.line_id for line in lines}) != len(lines):
        raise ValueError("each line may appear once")
    return lines


NOTE_TEXT = (
    "Not blank; line breaks and tabs are kept, other control or invisible formatting "
    "characters are refused."
)


def _shown_identifier(value: str | None) -> str | None:
    """A tracking number or a carrier: one line of display text, without the spaces around
    it (a customer copies it into a carrier's site)."""
    return None if value is None else check_display_text(value).strip()


class FulfillmentCreate(Input):
    lines: list[LineQuantity] = Field(min_length=1, max_length=500)
    tracking_number: str = Field(
        min_length=1,
        max_length=100,
        description="Shown to the customer: one line, not blank, no control or invisible "
        "formatting characters (422 at tracking_number).",
    )
    carrier: str | None = Field(
        default=None, min_length=1, max_length=100, description="As tracking_number, if given."
    )

    _distinct = field_validator("lines")(_distinct_lines)
    _shown = field_validator("tracking_number", "carrier")(_shown_identifier)


class ReturnCreate(Input):
    lines: list[LineQuantity] = Field(min_length=1, max_length=500)
    reason: str = Field(min_length=1, max_length=2000, description=NOTE_TEXT)

    _distinct = field_validator("lines")(_distinct_lines)
    _reason = field_validator("reason")(check_note_text)


class NoteCreate(Input):
    text: str = Field(min_length=1, max_length=5000, description=NOTE_TEXT)

    _text = field_validator("text")(check_note_text)


class StatusChange(Input):
    """cancel, ship, deliver: an optional reason, kept in the history."""

    reason: str | None = Field(default=None, max_length=2000, description=NOTE_TEXT)

    _reason = field_validator("reason")(check_optional_note_text)


class HistoryEntry(BaseModel):
    id: str
    occurred_at: datetime
    kind: Literal["transition", "note", "event"]
    action: str | None
    from_status: str | None
    to_status: str | None
    actor_kind: str
    actor_id: str | None
    reason: str | None
    details: dict[str, Any]


# --- configuration: tax rates, shipping methods, vouchers ---------------------------------------


class TaxRateSet(Input):
    name: str = Field(min_length=1, max_length=100)
    rate_bp: int = Field(strict=True, ge=0, le=10_000, description="Basis points: 2100 is 21 %.")


class TaxRate(BaseModel):
    country: str
    name: str
    rate_bp: int
    updated_at: datetime


class Bracket(Input):
    up_to_grams: int | None = Field(default=None, strict=True, ge=1, le=10**9)
    amount: int = Field(strict=True, ge=0, le=MAX_AMOUNT)


MAX_BRACKETS = 50
FLAT_RATE = "a flat rate is one bracket with no weight limit"
ShippingKind = Literal["flat", "weight"]
RATES = (
    "Per currency: flat, one bracket with no limit; by weight, brackets by grams, the last one "
    "may have no limit."
)
COUNTRIES = (
    "Where the method ships (ISO 3166-1 alpha-2, any case; kept upper case, each once, in the "
    "order given); empty: everywhere."
)


def _check_rates(value: dict[str, list[Bracket]]) -> dict[str, list[Bracket]]:
    out: dict[str, list[Bracket]] = {}
    for currency, brackets in value.items():
        code = iso_currency(currency)
        if code in out:
            raise ValueError(f"{code} is given twice")
        out[code] = brackets
    return out


def _check_countries(value: list[str]) -> list[str]:
    # Upper case, each country once, in the order first given.
    out = list(dict.fromkeys(c.upper() for c in value))
    unknown = [c for c in out if not is_country(c)]
    if unknown:
        raise ValueError(f"not ISO 3166-1 alpha-2 country codes: {', '.join(unknown[:5])}")
    return out


# Creation and PATCH take rates and countries by the same rules.
Rates = Annotated[dict[str, list[Bracket]], Field(min_length=1), AfterValidator(_check_rates)]
Countries = Annotated[list[str], Field(max_length=300), AfterValidator(_check_countries)]
MethodName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(check_display_text)]


def rate_problems(
    kind: str, limits: Mapping[str, Sequence[int | None]]
) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """Where rates (each currency's brackets' ``up_to_grams``) break what ``kind`` allows: 1 to
    ``MAX_BRACKETS`` brackets a currency; a flat rate is one bracket with no weight limit; by
    weight, no two brackets of a currency share a limit and one at most has none."""
    problems: list[tuple[tuple[str | int, ...], str, Any]] = []
    for currency, up_to in limits.items():
        if not up_to or len(up_to) > MAX_BRACKETS:
            message = f"give between 1 and {MAX_BRACKETS} brackets"
            problems.append((("rates", currency), message, len(up_to)))
        elif kind == "flat":
            if len(up_to) != 1:
                problems.append((("rates", currency), FLAT_RATE, len(up_to)))
            elif up_to[0] is not None:
                problems.append((("rates", currency, 0, "up_to_grams"), FLAT_RATE, up_to[0]))
        elif up_to.count(None) > 1:
            message = "only one bracket may have no weight limit"
            problems.append((("rates", currency), message, up_to.count(None)))
        elif len(set(up_to)) != len(up_to):
            message = "two brackets have the same weight limit"
            problems.append((("rates", currency), message, len(up_to)))
    return problems


def weight_limits(rates: Mapping[str, Sequence[Bracket]]) -> dict[str, list[int | None]]:
    """Each currency's brackets' weight limits, what ``rate_problems`` reads."""
    return {currency: [b.up_to_grams for b in brackets] for currency, brackets in rates.items()}


class ShippingMethodCreate(Input):
    code: str = Field(min_length=1, max_length=50, pattern=_METHOD)
    name: MethodName
    kind: ShippingKind
    rates: Rates = Field(description=RATES)
    countries: Countries = Field(default_factory=list, description=COUNTRIES)
    active: bool = Field(default=True, strict=True)

    @model_validator(mode="after")
    def _flat_is_one_bracket(self) -> ShippingMethodCreate:
        _refuse("shipping_method", rate_problems(self.kind, weight_limits(self.rates)))
        return self


def _not_null(schema: dict[str, Any]) -> None:
    """The published schema of a field that may be left out but not null: its value's."""
    options = schema.pop("anyOf", [])
    schema.pop("default", None)
    for option in options:
        if option != {"type": "null"}:
            schema.update(option)


class ShippingMethodUpdate(Input):
    """PATCH shipping-methods/{code}: a field left out keeps its value; none may be null. The
    method as it would be after the change is checked as creation checks a new one."""

    name: MethodName | None = Field(default=None, json_schema_extra=_not_null)
    kind: ShippingKind | None = Field(default=None, json_schema_extra=_not_null)
    rates: Rates | None = Field(
        default=None,
        description=RATES + " Replaces every currency's rates.",
        json_schema_extra=_not_null,
    )
    countries: Countries | None = Field(
        default=None, description=COUNTRIES, json_schema_extra=_not_null
    )
    active: bool | None = Field(default=None, strict=True, json_schema_extra=_not_null)

    @model_validator(mode="after")
    def _no_nulls(self) -> ShippingMethodUpdate:
        given = self.model_fields_set
        nulls = [n for n in type(self).model_fields if n in given and getattr(self, n) is None]
        _refuse("shipping_method", [((name,), "must not be null", None) for name in nulls])
        return self


class ShippingMethod(BaseModel):
    code: str
    name: str
    kind: str
    rates: dict[str, list[dict[str, int | None]]]
    countries: list[str]
    active: bool


class VoucherCreate(Input):
    code: str = Field(min_length=1, max_length=64, pattern=_CODE)
    kind: VoucherKind
    value: int = Field(
        strict=True, ge=1, le=MAX_AMOUNT, description="Basis points, or minor units if fixed."
    )
    currency: str | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="Needed by a fixed voucher and by a minimum spend; a voucher with a "
        "currency applies only to carts in that currency.",
    )
    minimum_spend: int = Field(
        default=0,
        strict=True,
        ge=0,
        le=MAX_AMOUNT,
        description="Minor units of the voucher's currency.",
    )
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    usage_limit: int | None = Field(default=None, strict=True, ge=1, le=10**9)
    per_customer_limit: int | None = Field(default=None, strict=True, ge=1, le=10**9)
    active: bool = Field(default=True, strict=True)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        return None if value is None else iso_currency(value)

    @model_validator(mode="after")
    def _coherent(self) -> VoucherCreate:
        problems = voucher_definition_problems(
            kind=self.kind,
            value=self.value,
            currency=self.currency,
            minimum_spend=self.minimum_spend,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
        )
        _refuse("voucher", [((name,), message, getattr(self, name)) for name, message in problems])
        return self


class VoucherUpdate(Input):
    active: bool | None = Field(default=None, strict=True)
    ends_at: Timestamp | None = None
    usage_limit: int | None = Field(default=None, strict=True, ge=1, le=10**9)


class Voucher(BaseModel):
    id: str
    code: str
    kind: VoucherKind
    value: int
    currency: str | None
    minimum_spend: int
    starts_at: datetime | None
    ends_at: datetime | None
    usage_limit: int | None
    per_customer_limit: int | None
    times_used: int
    active: bool
