"""The catalog's public contract: request and response models (money in integer minor units)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from ecosistema.catalog.domain import CODE_PATTERN, STORED_SKU_PATTERN, ProductStatus, is_slug
from ecosistema.platform.errors import pattern_rule
from ecosistema.platform.money import iso_currency
from ecosistema.platform.sku import SKU_MAX_LENGTH, SKU_PATTERN
from ecosistema.platform.text import check_display_text, check_note_text
from ecosistema.platform.timestamps import Timestamp


def _slug(value: str) -> str:
    if not is_slug(value):
        raise ValueError(
            "must be a slug: lower-case letters and digits joined by single hyphens, "
            "e.g. winter-boots or зимние-ботинки"
        )
    return value


Slug = Annotated[str, Field(min_length=1, max_length=120), AfterValidator(_slug)]
Code = Annotated[str, Field(min_length=1, max_length=120, pattern=CODE_PATTERN)]
# A SKU a request creates; one it names (to price, quote, reserve) may also be an older one.
Sku = Annotated[str, Field(min_length=1, max_length=SKU_MAX_LENGTH, pattern=SKU_PATTERN)]
SkuReference = Annotated[
    str, Field(min_length=1, max_length=SKU_MAX_LENGTH, pattern=STORED_SKU_PATTERN)
]
Currency = Annotated[str, Field(min_length=3, max_length=3, examples=["EUR"])]
Amount = Annotated[int, Field(strict=True, ge=0, le=10**12, description="Minor units.")]
ImageUrl = Annotated[
    str,
    Field(
        max_length=2000,
        pattern=pattern_rule(r"^https?://[^\s]+$", "an http:// or https:// URL without spaces"),
    ),
]


def _description_text(value: str) -> str:
    # Line breaks and tabs lay out a description; other control and invisible characters do not.
    return check_note_text(value, blank_allowed=True)


OPTION_NAME_MAX_LENGTH = 50


def _option_name_problem(name: Any) -> str | None:
    """What is wrong with an option's name, or None when it is a good one."""
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "must not be empty"
    if len(name) > OPTION_NAME_MAX_LENGTH:
        return f"must have at most {OPTION_NAME_MAX_LENGTH} characters"
    try:
        check_display_text(name)
    except ValueError as exc:
        return str(exc)
    return None


def _option_names(value: Any) -> Any:
    # Checked here, not as the dict's key type: pydantic would place a key's error at a path
    # made of the key itself (options..[key] for an empty one), which names no field.
    if isinstance(value, dict):
        bad = [
            f"option name {str(name)[:60]!r} {problem}"
            for name in value
            if (problem := _option_name_problem(name)) is not None
        ]
        if bad:
            raise ValueError("; ".join(bad))
    return value


# A name is one line a person can read: not blank, no control or invisible characters.
_Readable = AfterValidator(check_display_text)
OptionValue = Annotated[str, Field(min_length=1, max_length=100), _Readable]
Options = Annotated[
    dict[str, OptionValue],
    Field(
        max_length=20,
        json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": OPTION_NAME_MAX_LENGTH}},
    ),
    BeforeValidator(_option_names),
]
Name = Annotated[str, Field(min_length=1, max_length=300), _Readable]
ShortName = Annotated[str, Field(min_length=1, max_length=200), _Readable]
Description = Annotated[str, Field(max_length=20_000), AfterValidator(_description_text)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- prices -------------------------------------------------------------------------------------


class PriceInput(_Input):
    """A variant's regular price in one currency."""

    currency: Currency
    amount: Amount

    _currency = field_validator("currency")(iso_currency)


class SalePriceInput(_Input):
    """A scheduled sale price: from ``starts_at`` (inclusive) to ``ends_at`` (exclusive)."""

    currency: Currency
    amount: Amount
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None

    _currency = field_validator("currency")(iso_currency)

    @field_validator("ends_at")
    @classmethod
    def _window(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        # A field validator (not a model one) so the error points at ends_at itself.
        starts_at = info.data.get("starts_at")
        if value is not None and starts_at is not None and value <= starts_at:
            raise ValueError("ends_at must be after starts_at")
        return value


class Price(BaseModel):
    """A regular price."""

    currency: str
    amount: int


class SalePrice(BaseModel):
    """A scheduled sale price."""

    currency: str
    amount: int
    starts_at: datetime | None
    ends_at: datetime | None


# --- categories ---------------------------------------------------------------------------------


class CategoryCreate(_Input):
    """A new category; its slug comes from the name when not given."""

    name: ShortName
    slug: Slug | None = None
    parent_id: Annotated[str, Field(max_length=64)] | None = None
    description: Description = ""


class CategoryUpdate(_Input):
    """Change a category; only the fields given change. ``parent_id`` moves it (with everything
    below it) under another category, or to the root with ``null``."""

    name: ShortName | None = None
    slug: Slug | None = None
    parent_id: Annotated[str, Field(max_length=64)] | None = None
    description: Description | None = None


class Category(BaseModel):
    """A node of the category tree; ``path`` is its ancestors' slugs and its own."""

    id: str
    parent_id: str | None
    name: str
    slug: str
    path: str
    description: str
    created_at: datetime
    updated_at: datetime


# --- products and variants ----------------------------------------------------------------------


class VariantCreate(_Input):
    """A purchasable variant of a product, identified by its SKU."""

    sku: Sku
    name: Name | None = None
    options: Options = Field(default_factory=dict)
    weight_grams: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 0
    position: Annotated[int, Field(strict=True, ge=0, le=10_000)] | None = None
    prices: list[PriceInput] = Field(default_factory=list, max_length=50)
    sale_prices: list[SalePriceInput] = Field(default_factory=list, max_length=50)

    @field_validator("prices")
    @classmethod
    def _one_price_per_currency(cls, value: list[PriceInput]) -> list[PriceInput]:
        currencies = [p.currency for p in value]
        if len(set(currencies)) != len(currencies):
            raise ValueError("one regular price per currency")
        return value


class VariantUpdate(_Input):
    """Change a variant; ``prices`` and ``sale_prices``, when given, replace the current ones."""

    name: Name | None = None
    options: Options | None = None
    weight_grams: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] | None = None
    position: Annotated[int, Field(strict=True, ge=0, le=10_000)] | None = None
    prices: list[PriceInput] | None = Field(default=None, max_length=50)
    sale_prices: list[SalePriceInput] | None = Field(default=None, max_length=50)

    @field_validator("prices")
    @classmethod
    def _one_price_per_currency(cls, value: list[PriceInput] | None) -> list[PriceInput] | None:
        currencies = [p.currency for p in value or []]
        if len(set(currencies)) != len(currencies):
            raise ValueError("one regular price per currency")
        return value


class Variant(BaseModel):
    """A variant with its regular and scheduled prices."""

    id: str
    sku: str
    name: str
    options: dict[str, str]
    weight_grams: int
    position: int
    prices: list[Price]
    current_prices: list[Price] = Field(
        description="What the variant costs now: the regular price, or a running sale's."
    )
    sale_prices: list[SalePrice]


class ProductCreate(_Input):
    """A new product, optionally with its variants; its slug comes from the name when absent."""

    name: Name
    slug: Slug | None = None
    description: Description = ""
    status: ProductStatus = ProductStatus.DRAFT
    category_id: Annotated[str, Field(max_length=64)] | None = None
    images: list[ImageUrl] = Field(default_factory=list, max_length=50)
    variants: list[VariantCreate] = Field(default_factory=list, max_length=200)

    @field_validator("variants")
    @classmethod
    def _unique_skus(cls, value: list[VariantCreate]) -> list[VariantCreate]:
        skus = [v.sku for v in value]
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear once")
        return value


class ProductUpdate(_Input):
    """Change a product; only the fields given change."""

    name: Name | None = None
    slug: Slug | None = None
    description: Description | None = None
    status: ProductStatus | None = None
    category_id: Annotated[str, Field(max_length=64)] | None = None
    images: list[ImageUrl] | None = Field(default=None, max_length=50)


class Product(BaseModel):
    """A product with its variants and their prices."""

    id: str
    slug: str
    name: str
    description: str
    status: ProductStatus
    category_id: str | None
    images: list[str]
    variants: list[Variant]
    created_at: datetime
    updated_at: datetime


class ProductSummary(BaseModel):
    """A product as lists and search results show it; ``price_from`` is its lowest regular
    price in the requested currency."""

    id: str
    slug: str
    name: str
    status: ProductStatus
    category_id: str | None
    images: list[str]
    price_from: Price | None
    created_at: datetime
    updated_at: datetime = Field(
        description="When the product, one of its variants or their prices last changed."
    )


class ProductPage(BaseModel):
    """One page of products; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[ProductSummary]
    next_cursor: str | None


SearchSort = Literal["relevance", "price_asc", "price_desc", "newest", "updated_at"]


# --- price lists --------------------------------------------------------------------------------


class PriceListCreate(_Input):
    """A named set of prices for some customers (e.g. ``wholesale``)."""

    code: Code
    name: ShortName


class PriceListUpdate(_Input):
    """Rename a price list."""

    name: ShortName


class PriceList(BaseModel):
    """A price list and how many customers it applies to."""

    id: str
    code: str
    name: str
    customer_count: int
    created_at: datetime
    updated_at: datetime


class PriceListPrice(_Input):
    """A price list's price for one variant in one currency."""

    sku: SkuReference
    currency: Currency
    amount: Amount

    _currency = field_validator("currency")(iso_currency)


class PriceListPrices(_Input):
    """The whole set of a price list's prices (it replaces the current set)."""

    prices: list[PriceListPrice] = Field(max_length=10_000)


class PriceListCustomers(_Input):
    """The customers (identity user ids) a price list applies to (replaces the current set)."""

    customer_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        max_length=10_000
    )


# --- quotes and reservations (service to service) ----------------------------------------------


class QuoteRequest(_Input):
    """SKUs to price for a customer in a currency, now or at ``at``."""

    skus: list[SkuReference] = Field(max_length=500)
    currency: Currency
    customer_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    at: Timestamp | None = None

    _currency = field_validator("currency")(iso_currency)


class OrderLine(_Input):
    """A SKU and how many units of it."""

    sku: SkuReference
    quantity: Annotated[int, Field(strict=True, ge=1, le=1_000_000)]


class ReservationRequest(_Input):
    """Hold stock for an order's lines for ``ttl_seconds``."""

    order_id: Annotated[str, Field(min_length=1, max_length=64)]
    lines: list[OrderLine] = Field(min_length=1, max_length=500)
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=7 * 24 * 3600)]
    actor: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=pattern_rule(
            r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$",
            "a user id, api_key:<id> or guest:<cart id>: a letter or digit, then letters, "
            "digits, `_`, `.`, `:` or `-`",
        ),
        description="Who the stock is held for, as the movements record it (the buyer's user "
        "id, `api_key:<id>`, or `guest:<cart id>`); left out, the caller.",
    )


class ReleaseRequest(_Input):
    """Why a reservation is given back."""

    reason: Annotated[str, Field(min_length=1, max_length=500)]

    _reason = field_validator("reason")(check_note_text)


class RestockRequest(_Input):
    """Units of an order that come back on hand (a refund with restock)."""

    order_id: Annotated[str, Field(min_length=1, max_length=64)]
    lines: list[OrderLine] = Field(min_length=1, max_length=500)
    reason: Annotated[str, Field(min_length=1, max_length=500)]

    _reason = field_validator("reason")(check_note_text)


class VariantQuote(BaseModel):
    """What a SKU costs a given customer now, and whether it can be bought."""

    sku: str
    product_id: str
    product_name: str
    variant_name: str
    unit_price: int = Field(description="Minor units; 0 when not priced in this currency.")
    currency: str
    tax_inclusive: bool
    weight_grams: int
    available: int
    purchasable: bool
    reason: Literal["archived", "draft", "not_priced"] | None = Field(
        None,
        description="Why it cannot be bought (null when it can): the product is archived or "
        "still a draft, or the variant has no price in this currency.",
    )
    reason_message: str | None = Field(
        None, description='The reason in words, e.g. "SKU-1 is archived: no longer sold".'
    )


# --- warehouses and inventory -------------------------------------------------------------------


class WarehouseCreate(_Input):
    """A place stock is kept; lower ``priority`` ships first."""

    code: Code
    name: ShortName
    priority: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 0


class Warehouse(BaseModel):
    """A warehouse."""

    id: str
    code: str
    name: str
    priority: int
    created_at: datetime


class StockLevel(BaseModel):
    """A SKU's stock in one warehouse."""

    warehouse_id: str
    warehouse_code: str
    on_hand: int
    reserved: int
    available: int


class Availability(BaseModel):
    """A SKU's stock, in total and per warehouse."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    warehouses: list[StockLevel]


class VariantAvailability(BaseModel):
    """What a shopper may know of a SKU's stock: how many units can be bought now."""

    sku: str
    available: int = Field(description="Units on hand in every warehouse, less those reserved.")
    in_stock: bool


class AvailabilityList(BaseModel):
    """The SKUs asked for that belong to active products, in the order asked; others are
    absent, as unknown SKUs are."""

    items: list[VariantAvailability]


class StockAdjustment(_Input):
    """Change on-hand stock: by ``delta``, or to an absolute ``on_hand`` after a count."""

    warehouse: Annotated[str, Field(min_length=1, max_length=64, description="Warehouse code.")]
    delta: Annotated[int, Field(strict=True, ge=-1_000_000, le=1_000_000)] | None = None
    on_hand: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)] | None = Field(
        default=None, validate_default=True
    )
    reason: Annotated[str, Field(min_length=1, max_length=500)]

    _reason = field_validator("reason")(check_note_text)

    # Field validators (not a model one) so an error points at delta or on_hand, not the body.
    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("delta must not be zero")
        return value

    @field_validator("on_hand")
    @classmethod
    def _one_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "delta" not in info.data:  # delta itself was refused; that error says enough
            return value
        delta = info.data["delta"]
        if value is None and delta is None:
            raise ValueError("give on_hand (after a count) or delta (a change)")
        if value is not None and delta is not None:
            raise ValueError("give on_hand or delta, not both")
        return value


class StockMovement(BaseModel):
    """One recorded change of stock: who, why, and by how much."""

    id: str
    sku: str
    warehouse_id: str
    on_hand_delta: int
    reserved_delta: int
    reason: str
    reference: str | None
    note: str | None
    actor: str
    occurred_at: datetime


class MovementPage(BaseModel):
    """One page of stock movements, newest first."""

    items: list[StockMovement]
    next_cursor: str | None


# --- import and export --------------------------------------------------------------------------

ImportMode = Literal["all-or-nothing", "skip-invalid"]
TransferFormat = Literal["csv", "jsonl"]


class RowProblem(BaseModel):
    """One problem of a refused row, and where in the row it is."""

    field: str | None = Field(
        description="The CSV column (`price_EUR`) or JSON Lines field path "
        "(`variants.1.prices.EUR`) at fault; null for a problem of the whole row (not JSON, "
        "unreadable, more fields than the header)."
    )
    reason: str


class RowError(BaseModel):
    """Why the row at ``line`` (1-based, as an editor counts) was refused."""

    line: int
    reason: str = Field(
        description="Every problem of the row, `field: reason` joined by `; `, in the order of "
        "`problems`."
    )
    sku: str | None = None
    slug: str | None = None
    problems: list[RowProblem] = Field(
        default_factory=list,
        description="Every problem of the row, each with its column or field path, in the "
        "order of the CSV header's columns or of a product's fields in JSON Lines.",
    )


class ImportReport(BaseModel):
    """The exact outcome of an import: what was written and which rows were not."""

    mode: ImportMode
    format: TransferFormat
    applied: bool
    rows_read: int
    products_created: int
    products_updated: int
    variants_written: int
    rows_skipped: int
    products_unchanged: int = Field(
        0, description="Products whose rows matched what is stored: nothing written or emitted."
    )
    products_draft: int = Field(
        0,
        description="Products created or updated as draft (invisible to customers), e.g. from "
        "a CSV without a status column.",
    )
    notes: list[str] = Field(default_factory=list, description="Things worth knowing.")
    errors: list[RowError]

    def summary(self) -> dict[str, Any]:
        """The counts without the error list (for logs and the CLI)."""
        return self.model_dump(exclude={"errors", "notes"})
