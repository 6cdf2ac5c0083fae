"""The one interface every payment provider implements, and the values it speaks in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ecosistema.platform.errors import ServiceUnavailable, Unprocessable

OutcomeStatus = Literal["succeeded", "requires_capture", "requires_action", "failed", "canceled"]


@dataclass(frozen=True, slots=True)
class CardDetails:
    """A card as the payer typed it; it goes to the provider and is never stored."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str


@dataclass(frozen=True, slots=True)
class CardToken:
    """What is kept of a card: the provider's token, brand, last four digits and expiry."""

    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class ProviderOutcome:
    """The provider's answer to an authorization, confirmation or capture."""

    status: OutcomeStatus
    ref: str
    captured: int = 0
    fee: int = 0
    transaction_ref: str | None = None
    decline_code: str | None = None
    message: str | None = None
    next_action: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    """The provider's answer to a refund."""

    ref: str
    status: Literal["succeeded", "failed"]
    transaction_ref: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderTransaction:
    """One movement on the provider's balance: a charge (positive) or a refund (negative)."""

    ref: str
    kind: Literal["charge", "refund"]
    amount: int
    fee: int
    currency: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderUnavailable(ServiceUnavailable):
    """The provider could not be reached or answered with an error of its own."""

    type, title = "payment-provider-unavailable", "Payment provider unavailable"


class UnknownPaymentMethod(Unprocessable):
    """The provider does not know the payment method token given."""

    type, title = "unknown-payment-method", "Unknown payment method"

    def __init__(self) -> None:
        super().__init__(
            "payment_method.token: the provider does not know this token",
            errors=[
                {
                    "field": "payment_method.token",
                    "message": "the provider does not know this token",
                    "code": "unknown_token",
                }
            ],
        )


class PaymentProvider(Protocol):
    """A payment provider: tokenizes cards, moves money, and reports its balance movements.

    Every money-moving call takes an ``idempotency_key``: the provider performs it once per
    key, so a retried call after a lost answer never charges twice.
    """

    name: str

    async def tokenize(self, card: CardDetails) -> CardToken:
        """Exchange card details for the provider's reusable token."""
        ...

    async def payment_method(self, token: str) -> CardToken:
        """The card behind a token the provider issued earlier; ``UnknownPaymentMethod`` when
        the provider knows no such token."""
        ...

    async def authorize(
        self,
        *,
        amount: int,
        currency: str,
        token: str,
        capture: bool,
        idempotency_key: str,
        description: str,
    ) -> ProviderOutcome:
        """Charge (``capture``) or authorize ``amount`` on the tokenized card."""
        ...

    async def confirm(self, ref: str, *, idempotency_key: str) -> ProviderOutcome:
        """Finish a payment whose customer action (3-D Secure) is done."""
        ...

    async def capture(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderOutcome:
        """Capture ``amount`` of an authorization; the rest is released."""
        ...

    async def void(self, ref: str, *, idempotency_key: str) -> None:
        """Release an uncaptured authorization."""
        ...

    async def refund(self, ref: str, amount: int, *, idempotency_key: str) -> ProviderRefund:
        """Give back ``amount`` of a captured payment."""
        ...

    async def transactions(self) -> list[ProviderTransaction]:
        """The provider's balance movements, for reconciliation."""
        ...
