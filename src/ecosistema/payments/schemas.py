"""The payments service's public contract. Request bodies forbid unknown fields; amounts are
integer minor units with a currency; cards come in, only their token and last four go out."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ecosistema.payments.domain import CaptureMethod, PaymentStatus, Period
from ecosistema.platform.text import check_note_text, check_optional_note_text

MAX_AMOUNT = 10**12


class Input(BaseModel):
    """Base for request bodies: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class CardInput(Input):
    """A card as typed by the payer; checked (Luhn, expiry, CVC) and sent to the provider only."""

    number: str = Field(min_length=12, max_length=23, pattern=r"^[0-9 \-]+$")
    exp_month: int = Field(strict=True, ge=1, le=12)
    exp_year: int = Field(strict=True, ge=2000, le=2100)
    cvc: str = Field(min_length=3, max_length=4)

    def __repr__(self) -> str:
        return f"CardInput(last4={self.number[-4:]!r})"


class PaymentMethodInput(Input):
    """A new card, or a token the provider issued earlier."""

    card: CardInput | None = None
    token: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _one_of(self) -> PaymentMethodInput:
        if (self.card is None) == (self.token is None):
            raise ValueError("give exactly one of card or token")
        return self


class PaymentCreate(Input):
    """POST payments: a payment intent for an order; with a payment method it is confirmed."""

    order_id: str = Field(min_length=1, max_length=64)
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    payment_method: PaymentMethodInput | None = None


class PaymentConfirm(Input):
    """POST payments/{id}/confirm: a payment method, or none to finish a required action."""

    payment_method: PaymentMethodInput | None = None


class PaymentCapture(Input):
    """POST payments/{id}/capture: all of the authorization, or part of it."""

    amount_to_capture: int | None = Field(default=None, strict=True, ge=1, le=MAX_AMOUNT)


class PaymentCancel(Input):
    """POST payments/{id}/cancel."""

    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Why, kept on the payment as `cancellation_reason`: not blank, no control "
        "or invisible formatting characters beyond line breaks and tabs (422 at reason).",
    )

    _reason = field_validator("reason")(check_optional_note_text)


class Card(BaseModel):
    """What is kept of a card."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


class Payment(BaseModel):
    """A payment intent."""

    id: str
    order_id: str
    customer_id: str | None
    status: PaymentStatus
    capture_method: CaptureMethod
    amount: int
    currency: str
    amount_capturable: int
    captured_amount: int
    refunded_amount: int
    provider: str
    card: Card | None
    failure_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None
    cancellation_reason: str | None = Field(
        description="Why the payment was canceled: the reason given when canceling it, or "
        "`The order was cancelled.`; null otherwise."
    )
    created_at: datetime
    updated_at: datetime
    captured_at: datetime | None


class RefundLineInput(Input):
    """Refund ``quantity`` units of one order line."""

    line_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(strict=True, ge=1, le=1_000_000)


class RefundCreate(Input):
    """POST payments/{id}/refunds: an amount, or lines, or neither for all that is left."""

    amount: int | None = Field(default=None, strict=True, ge=1, le=MAX_AMOUNT)
    lines: list[RefundLineInput] | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="Units of order lines, each priced per unit from what was captured for its "
        "line (its total on the invoice). A fully discounted line cannot be refunded (422).",
    )
    reason: str = Field(
        min_length=1,
        max_length=255,
        description="Read in the order's history: not blank, no control or invisible formatting "
        "characters beyond line breaks and tabs (422 at reason).",
    )
    restock: bool = Field(
        default=False,
        strict=True,
        description="Put units back in stock: the given lines' units, or, refunding all that is "
        "left, every unit no earlier refund took back by line. Refused (422) with an amount "
        "below what is left.",
    )

    _reason = field_validator("reason")(check_note_text)


class RefundLine(BaseModel):
    """A refunded order line."""

    line_id: str
    sku: str
    quantity: int
    amount: int


class RestockLine(BaseModel):
    """Units a refund put back in stock."""

    sku: str
    quantity: int


class Refund(BaseModel):
    """A refund of (part of) a payment."""

    id: str
    payment_id: str
    order_id: str
    status: Literal["pending", "succeeded", "failed"]
    amount: int
    currency: str
    reason: str
    restock: bool
    lines: list[RefundLine]
    restock_lines: list[RestockLine] = Field(
        default_factory=list,
        description="The units put back in stock, once the refund succeeded: the lines' units, "
        "or, refunding all that was left, every unit no earlier refund took back by line.",
    )
    failure_message: str | None
    created_at: datetime
    completed_at: datetime | None

    @field_validator("restock_lines", mode="before")
    @classmethod
    def _none_yet(cls, value: Any) -> Any:
        return [] if value is None else value


class Party(BaseModel):
    """A seller or buyer as printed on a document."""

    name: str | None = None
    address: str | None = None
    tax_id: str | None = None
    email: str | None = None
    customer_id: str | None = None


class InvoiceLine(BaseModel):
    """One line of an invoice or credit note."""

    sku: str | None
    description: str
    quantity: int
    unit_price: int
    net: int
    tax: int
    total: int
    rate_bp: int | None = Field(
        default=None,
        description="The line's tax rate in basis points (none on documents issued before "
        "invoices recorded each line's rate).",
    )
    discount: int | None = Field(
        default=None,
        description="The discount (a voucher's share) the line's total already takes off "
        "quantity times unit price; negative on a credit note. None on shipping and summary lines, "
        "on a partial capture's shares, and on documents issued before lines recorded it.",
    )


class TaxBreakdown(BaseModel):
    """Net and tax at one rate."""

    rate_bp: int
    net: int
    tax: int


class Invoice(BaseModel):
    """An invoice (on capture) or a credit note (on refund)."""

    id: str
    kind: Literal["invoice", "credit_note"]
    number: str
    payment_id: str
    refund_id: str | None
    related_invoice_id: str | None
    order_id: str
    currency: str
    seller: Party
    buyer: Party
    lines: list[InvoiceLine]
    tax_breakdown: list[TaxBreakdown]
    subtotal: int
    tax_total: int
    total: int
    issued_at: datetime


class PaymentPage(BaseModel):
    """A page of payments, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[Payment]
    next_cursor: str | None = None


class RefundList(BaseModel):
    """A payment's refunds, oldest first."""

    items: list[Refund]


class InvoicePage(BaseModel):
    """A page of invoices and credit notes, newest first."""

    items: list[Invoice]
    next_cursor: str | None = None


class SalesQuery(BaseModel):
    """reports/sales query parameters."""

    group_by: Period = Period.DAY
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    from_: date | None = Field(default=None, alias="from")
    to: date | None = None


class SalesRow(BaseModel):
    """Sales in one period and currency."""

    period: date
    currency: str
    revenue: int
    refunds: int
    net: int
    orders: int
    average_order_value: int


class TopProduct(BaseModel):
    """A product's units and sales over the report's range: invoiced (gross), given back by
    refunds of its lines, and the difference."""

    sku: str
    name: str
    currency: str
    quantity: int
    revenue: int
    refunded_quantity: int = 0
    refunds: int = 0
    net: int = 0


class SalesReport(BaseModel):
    """The sales report."""

    group_by: Period
    rows: list[SalesRow]
    top_products: list[TopProduct]


class WebhookAck(BaseModel):
    """How an incoming provider event was taken."""

    received: bool
    duplicate: bool
    outcome: str


class ReconciliationItem(BaseModel):
    """One movement that differs between the journal and the provider."""

    ref: str
    kind: str
    journal_amount: int | None
    provider_amount: int | None
    journal_fee: int | None
    provider_fee: int | None


class ReconciliationReport(BaseModel):
    """The journal compared with a provider's own records."""

    provider: str
    journal_balanced: bool
    matched: int
    mismatched: list[ReconciliationItem]
    missing_at_provider: list[ReconciliationItem]
    missing_in_journal: list[ReconciliationItem]

    @property
    def clean(self) -> bool:
        """Nothing differs and the journal balances."""
        return self.journal_balanced and not (
            self.mismatched or self.missing_at_provider or self.missing_in_journal
        )
