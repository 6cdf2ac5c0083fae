"""Payment rules with no I/O: the intent state machine, capture and refund limits, card checks,
the double-entry journal, document numbering and report periods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.money import Rounding, divide_rounding
from ecosistema.platform.signatures import parse_signature_header, signature_header


class PaymentStatus(StrEnum):
    """Where a payment intent stands, after Stripe's model."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class CaptureMethod(StrEnum):
    """Capture at once, or authorize now and capture later (all or part)."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


S = PaymentStatus

# The whole state machine: from each status, the statuses a payment may move to. A failed
# payment may be confirmed again with another card, as Stripe allows.
TRANSITIONS: Mapping[PaymentStatus, frozenset[PaymentStatus]] = MappingProxyType(
    {
        S.REQUIRES_PAYMENT_METHOD: frozenset({S.PROCESSING, S.CANCELED}),
        S.PROCESSING: frozenset(
            {S.REQUIRES_ACTION, S.REQUIRES_CAPTURE, S.SUCCEEDED, S.FAILED, S.CANCELED}
        ),
        S.REQUIRES_ACTION: frozenset({S.PROCESSING, S.FAILED, S.CANCELED}),
        # Processing again while a capture or a void is under way at the provider.
        S.REQUIRES_CAPTURE: frozenset({S.PROCESSING, S.SUCCEEDED, S.CANCELED}),
        S.FAILED: frozenset({S.PROCESSING, S.CANCELED}),
        S.SUCCEEDED: frozenset(),
        S.CANCELED: frozenset(),
    }
)

# Statuses from which ``confirm`` starts a new attempt (or finishes a customer action).
CONFIRMABLE: frozenset[PaymentStatus] = frozenset(
    {S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION, S.FAILED}
)


class IllegalTransition(Conflict):
    """The payment's status does not allow this action."""

    type, title = "illegal-payment-transition", "Payment cannot do that now"


class RefundExceedsCaptured(Conflict):
    """The refund would take the total refunded above what was captured."""

    type, title = "refund-exceeds-captured", "Refund exceeds captured amount"


def can_transition(current: PaymentStatus | str, target: PaymentStatus | str) -> bool:
    """Whether the state machine allows ``current`` to become ``target``."""
    return PaymentStatus(target) in TRANSITIONS[PaymentStatus(current)]


def ensure_transition(current: PaymentStatus | str, target: PaymentStatus | str) -> None:
    """Raise ``IllegalTransition`` (409) unless ``current`` may become ``target``."""
    if not can_transition(current, target):
        raise IllegalTransition(
            f"A payment in status {PaymentStatus(current).value!r} cannot become "
            f"{PaymentStatus(target).value!r}.",
            status_now=PaymentStatus(current).value,
        )


def check_capture(authorized: int, amount: int) -> None:
    """A capture takes at least one minor unit and at most what was authorized."""
    if amount <= 0 or amount > authorized:
        raise Unprocessable(
            f"amount_to_capture must be between 1 and {authorized}.",
            errors=[
                {
                    "field": "amount_to_capture",
                    "message": f"must be between 1 and {authorized}",
                    "code": "capture_out_of_range",
                }
            ],
        )


def refundable(captured: int, refunded: int) -> int:
    """What may still be refunded."""
    return max(0, captured - refunded)


def check_refund(captured: int, refunded: int, amount: int) -> None:
    """A refund is positive and never takes the refunded total above the captured amount."""
    if amount <= 0:
        raise Unprocessable(
            "amount: must be positive",
            errors=[{"field": "amount", "message": "must be positive", "code": "too_small"}],
        )
    if refunded + amount > captured:
        raise RefundExceedsCaptured(
            f"Only {refundable(captured, refunded)} of {captured} can still be refunded.",
            refundable=refundable(captured, refunded),
        )


def prorated_line_amount(line_total: int, line_quantity: int, quantity: int) -> int:
    """The share of a line's total for ``quantity`` of its units (half-even rounding)."""
    if quantity == line_quantity:
        return line_total
    return divide_rounding(line_total * quantity, line_quantity, Rounding.HALF_EVEN)


# --- cards --------------------------------------------------------------------------------------


def luhn_valid(number: str) -> bool:
    """The Luhn checksum every card number carries."""
    if not number.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_brand(number: str) -> str:
    """The card network from the number's leading digits."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith(("6011", "65")):
        return "discover"
    return "unknown"


def card_errors(
    number: str, exp_month: int, exp_year: int, cvc: str, *, today: date, prefix: str = ""
) -> list[dict[str, str]]:
    """Field errors for a card (Luhn, expiry not past, CVC 3 or 4 digits; 4 for amex)."""
    errors: list[dict[str, str]] = []
    digits = number.replace(" ", "").replace("-", "")
    if not (12 <= len(digits) <= 19) or not luhn_valid(digits):
        errors.append(_err(prefix + "number", "is not a valid card number", "invalid_number"))
    if not 1 <= exp_month <= 12:
        errors.append(_err(prefix + "exp_month", "must be between 1 and 12", "invalid_expiry"))
    elif (exp_year, exp_month) < (today.year, today.month):
        errors.append(_err(prefix + "exp_year", "the card has expired", "expired_card"))
    expected = (4,) if card_brand(digits) == "amex" else (3,)
    if not cvc.isdigit() or len(cvc) not in expected:
        errors.append(_err(prefix + "cvc", "is not a valid security code", "invalid_cvc"))
    return errors


def _err(field: str, message: str, code: str) -> dict[str, str]:
    return {"field": field, "message": message, "code": code}


# --- ledger -------------------------------------------------------------------------------------


class Account(StrEnum):
    """The journal's accounts."""

    CUSTOMER_FUNDS = "customer_funds"
    REVENUE = "revenue"
    REFUNDS = "refunds"
    FEES = "fees"
    PROVIDER_BALANCE = "provider_balance"


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a journal transaction: a debit or a credit to one account."""

    account: Account
    debit: int = 0
    credit: int = 0


def is_balanced(postings: Iterable[Posting]) -> bool:
    """Debits equal credits, and no posting is negative."""
    debits = credits = 0
    for p in postings:
        if p.debit < 0 or p.credit < 0:
            return False
        debits += p.debit
        credits += p.credit
    return debits == credits


def capture_postings(amount: int, fee: int) -> list[Posting]:
    """A capture: the customer's funds become revenue and settle at the provider less its fee."""
    if amount < 0 or fee < 0 or fee > amount:
        raise ValueError("a capture needs 0 <= fee <= amount")
    return [
        Posting(Account.CUSTOMER_FUNDS, debit=amount),
        Posting(Account.REVENUE, credit=amount),
        Posting(Account.PROVIDER_BALANCE, debit=amount - fee),
        Posting(Account.FEES, debit=fee),
        Posting(Account.CUSTOMER_FUNDS, credit=amount),
    ]


def refund_postings(amount: int) -> list[Posting]:
    """A refund: money leaves the provider balance and is booked against refunds."""
    if amount < 0:
        raise ValueError("a refund amount is never negative")
    return [
        Posting(Account.REFUNDS, debit=amount),
        Posting(Account.PROVIDER_BALANCE, credit=amount),
    ]


def account_balances(postings: Iterable[Posting]) -> dict[Account, int]:
    """Debit-minus-credit balance of every account touched."""
    out: dict[Account, int] = {}
    for p in postings:
        out[p.account] = out.get(p.account, 0) + p.debit - p.credit
    return out


def sandbox_fee(amount: int) -> int:
    """The sandbox provider's fee: 1.4 % plus 25 minor units, never more than the amount."""
    return min(amount, divide_rounding(amount * 140, 10_000, Rounding.HALF_UP) + 25)


# --- documents ----------------------------------------------------------------------------------

INVOICE_SERIES = "INV"
CREDIT_NOTE_SERIES = "CN"


def document_number(series: str, year: int, sequence: int) -> str:
    """An invoice or credit note number: ``INV-2026-000123``."""
    return f"{series}-{year:04d}-{sequence:06d}"


def line_rate(line: Mapping[str, Any]) -> int:
    """A document line's tax rate in basis points: the rate the order applied to it
    (``rate_bp``). Lines of documents issued before orders carried their rate have none; their
    rate is read back from the line's net and tax."""
    rate = line.get("rate_bp")
    if rate is not None:
        return int(rate)
    net, tax = int(line["net"]), int(line["tax"])
    return divide_rounding(tax * 10_000, net, Rounding.HALF_EVEN) if net else 0


def tax_breakdown(lines: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
    """Net and tax per rate (basis points), one row per rate, from lines carrying ``net``,
    ``tax`` and ``rate_bp``; the rows add up to the lines' net and tax."""
    groups: dict[int, list[int]] = {}
    for line in lines:
        bucket = groups.setdefault(line_rate(line), [0, 0])
        bucket[0] += int(line["net"])
        bucket[1] += int(line["tax"])
    return [{"rate_bp": r, "net": v[0], "tax": v[1]} for r, v in sorted(groups.items())]


def allocate_by_rate(amount: int, lines: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
    """Part of a document worth ``amount`` (a partial capture, a refund by amount), split over
    the rates of ``lines`` (the whole order's document lines: ``total``, ``tax``, ``rate_bp``).

    Each rate gets a share of ``amount`` in proportion to its lines' totals (largest remainder,
    so the shares add up to ``amount`` exactly) and the tax that share contains at that rate's
    tax-to-total ratio. Returns ``{"rate_bp", "total", "tax"}`` per rate with a non-zero share,
    lowest rate first.
    """
    groups: dict[int, list[int]] = {}
    for line in lines:
        bucket = groups.setdefault(line_rate(line), [0, 0])
        bucket[0] += int(line["total"])
        bucket[1] += int(line["tax"])
    rates = sorted(r for r, v in groups.items() if v[0] > 0)
    if not rates:
        return [{"rate_bp": 0, "total": amount, "tax": 0}] if amount else []
    shares = proportional_shares(abs(amount), [groups[r][0] for r in rates])
    sign = -1 if amount < 0 else 1
    out = []
    for rate, share in zip(rates, shares, strict=True):
        if share:
            gross, tax = groups[rate]
            out.append(
                {"rate_bp": rate, "total": sign * share, "tax": sign * split_tax(share, gross, tax)}
            )
    return out


def allocate_by_line(amount: int, lines: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
    """Part of a document worth ``amount`` (a partial capture) split over the order's document
    ``lines`` themselves, so each keeps its product.

    Each line gets a share of ``amount`` in proportion to its ``total`` (largest remainder, so
    the shares add up to ``amount`` exactly; a discount line's negative total gets its negative
    share) and the tax that share contains at the line's tax-to-total ratio. Returns
    ``{"total", "tax"}`` per line, in the order of ``lines``, which must add up to more than
    zero.
    """
    shares = proportional_shares(abs(amount), [int(line["total"]) for line in lines])
    sign = -1 if amount < 0 else 1
    return [
        {
            "total": sign * share,
            "tax": sign * split_tax(share, int(line["total"]), int(line["tax"])),
        }
        for line, share in zip(lines, shares, strict=True)
    ]


def proportional_shares(amount: int, weights: Sequence[int]) -> list[int]:
    """``amount`` (zero or more) split in proportion to ``weights``, which must add up to more
    than zero: largest remainder, ties to the first, so the shares add up to ``amount``
    exactly (a negative weight gets its negative share)."""
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("weights that add up to nothing have no share to give")
    # Floor division keeps every remainder in [0, whole), negative weights included.
    shares = [amount * w // whole for w in weights]
    remainders = [amount * w - share * whole for w, share in zip(weights, shares, strict=True)]
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[: amount - sum(shares)]:
        shares[i] += 1
    return shares


def credit_within_invoice(
    lines: Sequence[Mapping[str, Any]],
    invoiced: Sequence[Mapping[str, Any]],
    credited: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """A credit note's ``lines`` with the tax they give back at each rate kept within what the
    invoice has left at that rate: the ``invoiced`` lines less the earlier credit notes'
    ``credited`` lines (all with ``net``, ``tax``, ``total`` and a rate, credit lines negative).

    Each line's tax was rounded on its own, so credit notes may together give back a cent more
    tax (or net) at a rate than the invoice charged. At each rate the note's tax is kept where
    neither its tax nor its net passes what is left; so the note that gives back all that is
    left at a rate gives back exactly the invoice's net and tax left at it. The cents moved go
    to the rate's largest lines, each keeping its tax between nothing and its total.
    """
    left = {row["rate_bp"]: [row["net"], row["tax"]] for row in tax_breakdown(invoiced)}
    for row in tax_breakdown(credited):
        if row["rate_bp"] in left:
            left[row["rate_bp"]][0] += row["net"]
            left[row["rate_bp"]][1] += row["tax"]
    out = [dict(line) for line in lines]
    for row in tax_breakdown(out):
        rate = row["rate_bp"]
        if rate not in left or left[rate][0] + left[rate][1] <= 0:
            continue
        net_left, tax_left = max(0, left[rate][0]), max(0, left[rate][1])
        total, tax = -(row["net"] + row["tax"]), -row["tax"]
        low, high = max(0, total - net_left), min(tax_left, total)
        if low > high:
            continue  # more than is left at this rate: no tax keeps both within it
        wanted = min(max(tax, low), high)
        at_rate = sorted(
            (line for line in out if line_rate(line) == rate), key=lambda line: int(line["total"])
        )
        for line in at_rate:
            if wanted == tax:
                break
            line_total, line_tax = -int(line["total"]), -int(line["tax"])
            moved = max(-line_tax, min(line_total - line_tax, wanted - tax))
            line["tax"] = -(line_tax + moved)
            line["net"] = -(line_total - line_tax - moved)
            tax += moved
    return out


def split_tax(amount: int, total: int, tax_total: int) -> int:
    """The tax contained in ``amount`` when ``total`` carries ``tax_total`` of tax."""
    if total <= 0:
        return 0
    return divide_rounding(amount * tax_total, total, Rounding.HALF_EVEN)


# --- webhooks -----------------------------------------------------------------------------------

SIGNATURE_TOLERANCE_SECONDS = 300


def sign_payload(secret: str, timestamp: int, payload: bytes) -> str:
    """The ``Stripe-Signature`` header value for a payload: ``t=<ts>,v1=<hex hmac>``."""
    return signature_header([secret], timestamp, payload)


def signature_valid(
    secret: str, header: str, payload: bytes, *, now: int, tolerance: int = 300
) -> bool:
    """Whether a ``Stripe-Signature`` header signs ``payload`` and is within the tolerance."""
    parsed = parse_signature_header(header)
    if parsed.timestamp is None or abs(now - parsed.timestamp) > tolerance:
        return False
    return parsed.signed_by(secret, payload)


# The provider events that move a payment, and the status each moves it to. Any other type is
# recorded and ignored, whatever its ``data`` holds.
PROVIDER_EVENT_TARGETS: Mapping[str, PaymentStatus] = MappingProxyType(
    {
        "payment_intent.succeeded": S.SUCCEEDED,
        "payment_intent.amount_capturable_updated": S.REQUIRES_CAPTURE,
        "payment_intent.payment_failed": S.FAILED,
        "payment_intent.canceled": S.CANCELED,
    }
)


def provider_event_errors(event: object) -> list[dict[str, str]]:
    """Field errors for a provider's event document: an ``id`` and a ``type`` always, and for a
    type that moves a payment, a ``data.object`` whose fields the platform reads are of the
    kind Stripe sends."""
    if not isinstance(event, dict):
        return [_err("body", "must be a JSON object", "invalid")]
    errors = [
        _missing_or_invalid(name, event.get(name), "must be a non-empty string")
        for name in ("id", "type")
        if not (isinstance(event.get(name), str) and event[name])
    ]
    if event.get("type") not in PROVIDER_EVENT_TARGETS:
        return errors
    data = event.get("data")
    if not isinstance(data, dict):
        return [*errors, _missing_or_invalid("data", data, "must be an object")]
    obj = data.get("object")
    if not isinstance(obj, dict):
        return [*errors, _missing_or_invalid("data.object", obj, "must be an object")]
    return errors + _payment_intent_errors(obj, "data.object.")


def _payment_intent_errors(obj: Mapping[str, Any], prefix: str) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    if not (isinstance(obj.get("id"), str) and obj["id"]):
        errors.append(
            _missing_or_invalid(prefix + "id", obj.get("id"), "must be a non-empty string")
        )
    if not _is_count(obj.get("amount_received")):
        errors.append(
            _err(prefix + "amount_received", "must be a whole number, zero or more", "invalid")
        )
    failure = obj.get("last_payment_error")
    if failure is not None and not isinstance(failure, dict):
        errors.append(_err(prefix + "last_payment_error", "must be an object", "invalid"))
    elif failure is not None:
        errors += [
            _err(f"{prefix}last_payment_error.{k}", "must be a string", "invalid")
            for k in ("decline_code", "code", "message")
            if failure.get(k) is not None and not isinstance(failure[k], str)
        ]
    charge = obj.get("latest_charge")
    if charge is not None and not isinstance(charge, str | dict):
        errors.append(_err(prefix + "latest_charge", "must be an id or an object", "invalid"))
    txn = charge.get("balance_transaction") if isinstance(charge, dict) else None
    where = prefix + "latest_charge.balance_transaction"
    if txn is not None and not isinstance(txn, str | dict):
        errors.append(_err(where, "must be an id or an object", "invalid"))
    elif isinstance(txn, dict):
        if not _is_count(txn.get("fee")):
            errors.append(_err(where + ".fee", "must be a whole number, zero or more", "invalid"))
        if txn.get("id") is not None and not isinstance(txn["id"], str):
            errors.append(_err(where + ".id", "must be a string", "invalid"))
    return errors


def _is_count(value: object) -> bool:
    """Absent, or a whole number of minor units, zero or more (a JSON ``true`` is no number)."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _missing_or_invalid(field: str, value: object, message: str) -> dict[str, str]:
    if value is None:
        return _err(field, "is required", "missing")
    return _err(field, message, "invalid")


# --- reports ------------------------------------------------------------------------------------


class Period(StrEnum):
    """How report rows are grouped."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def period_start(moment: datetime | date, group_by: Period) -> date:
    """The first day of the day, ISO week (Monday) or month that ``moment`` falls in."""
    day = moment.date() if isinstance(moment, datetime) else moment
    if group_by is Period.DAY:
        return day
    if group_by is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def average(total: int, count: int) -> int:
    """An average in minor units, rounded half-even; zero when there is nothing to average."""
    return divide_rounding(total, count, Rounding.HALF_EVEN) if count else 0
