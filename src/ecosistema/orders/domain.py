"""Orders' pure rules: the one pricing function, vouchers, shipping rates and the order state
machine (as a table of transitions). No I/O; amounts are integer minor units."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.money import (
    Money,
    Rounding,
    tax_from_inclusive,
    tax_on_exclusive,
)

# --- state machine ------------------------------------------------------------------------------


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    FULFILLED = "fulfilled"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class OrderAction(StrEnum):
    """What can happen to an order; each (status, action) pair has at most one outcome."""

    PAY = "pay"
    CANCEL = "cancel"
    EXPIRE = "expire"
    FULFIL_PARTIALLY = "fulfil_partially"
    FULFIL = "fulfil"
    SHIP = "ship"
    DELIVER = "deliver"
    REFUND_PARTIALLY = "refund_partially"
    REFUND = "refund"
    RETURN_LINES = "return_lines"


S, A = OrderStatus, OrderAction

_AFTER_PAYMENT_REFUNDS: dict[OrderAction, OrderStatus] = {
    A.REFUND_PARTIALLY: S.PARTIALLY_REFUNDED,
    A.REFUND: S.REFUNDED,
}

# The whole order life cycle. A status missing from a row, or an action missing from it, is an
# illegal transition. Returns keep the status: they are recorded on the lines and in history.
TRANSITIONS: Mapping[OrderStatus, Mapping[OrderAction, OrderStatus]] = MappingProxyType(
    {
        S.PENDING_PAYMENT: MappingProxyType(
            {A.PAY: S.PAID, A.CANCEL: S.CANCELLED, A.EXPIRE: S.CANCELLED}
        ),
        S.PAID: MappingProxyType(
            {
                A.FULFIL_PARTIALLY: S.PARTIALLY_FULFILLED,
                A.FULFIL: S.FULFILLED,
                **_AFTER_PAYMENT_REFUNDS,
            }
        ),
        S.PARTIALLY_FULFILLED: MappingProxyType(
            {
                A.FULFIL_PARTIALLY: S.PARTIALLY_FULFILLED,
                A.FULFIL: S.FULFILLED,
                A.RETURN_LINES: S.PARTIALLY_FULFILLED,
                **_AFTER_PAYMENT_REFUNDS,
            }
        ),
        S.FULFILLED: MappingProxyType(
            {A.SHIP: S.SHIPPED, A.RETURN_LINES: S.FULFILLED, **_AFTER_PAYMENT_REFUNDS}
        ),
        S.SHIPPED: MappingProxyType(
            {A.DELIVER: S.DELIVERED, A.RETURN_LINES: S.SHIPPED, **_AFTER_PAYMENT_REFUNDS}
        ),
        S.DELIVERED: MappingProxyType({A.RETURN_LINES: S.DELIVERED, **_AFTER_PAYMENT_REFUNDS}),
        S.PARTIALLY_REFUNDED: MappingProxyType(
            {
                A.FULFIL_PARTIALLY: S.PARTIALLY_REFUNDED,
                A.FULFIL: S.PARTIALLY_REFUNDED,
                A.SHIP: S.PARTIALLY_REFUNDED,
                A.DELIVER: S.PARTIALLY_REFUNDED,
                A.RETURN_LINES: S.PARTIALLY_REFUNDED,
                **_AFTER_PAYMENT_REFUNDS,
            }
        ),
        S.REFUNDED: MappingProxyType({A.RETURN_LINES: S.REFUNDED}),
        S.CANCELLED: MappingProxyType({}),
    }
)

TERMINAL: frozenset[OrderStatus] = frozenset(s for s, row in TRANSITIONS.items() if not row)


class FulfillmentStatus(StrEnum):
    """How far the goods have gone, kept apart from the money (as Shopify's and Saleor's
    orders do): a refund never hides it, and it alone decides what fulfilment may do next."""

    UNFULFILLED = "unfulfilled"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    FULFILLED = "fulfilled"
    SHIPPED = "shipped"
    DELIVERED = "delivered"


class PaymentStatus(StrEnum):
    """Where the order's money is, with Shopify's ``financial_status`` names: ``partially_paid``
    when less than the total was captured (Saleor's charge status ``PARTIAL``), ``voided`` when
    the order was cancelled before any money came."""

    PENDING = "pending"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    VOIDED = "voided"


F = FulfillmentStatus

# What fulfilment may do next, whatever the money did: from ``paid`` and from
# ``partially_refunded`` alike, shipping needs every unit fulfilled and delivering needs shipped.
FULFILMENT_TRANSITIONS: Mapping[FulfillmentStatus, Mapping[OrderAction, FulfillmentStatus]] = (
    MappingProxyType(
        {
            F.UNFULFILLED: MappingProxyType(
                {A.FULFIL_PARTIALLY: F.PARTIALLY_FULFILLED, A.FULFIL: F.FULFILLED}
            ),
            F.PARTIALLY_FULFILLED: MappingProxyType(
                {
                    A.FULFIL_PARTIALLY: F.PARTIALLY_FULFILLED,
                    A.FULFIL: F.FULFILLED,
                    A.RETURN_LINES: F.PARTIALLY_FULFILLED,
                }
            ),
            F.FULFILLED: MappingProxyType({A.SHIP: F.SHIPPED, A.RETURN_LINES: F.FULFILLED}),
            F.SHIPPED: MappingProxyType({A.DELIVER: F.DELIVERED, A.RETURN_LINES: F.SHIPPED}),
            F.DELIVERED: MappingProxyType({A.RETURN_LINES: F.DELIVERED}),
        }
    )
)

FULFILMENT_ACTIONS: frozenset[OrderAction] = frozenset(
    {A.FULFIL_PARTIALLY, A.FULFIL, A.SHIP, A.DELIVER, A.RETURN_LINES}
)
# Statuses in which the money, not the goods, stops fulfilment: nothing paid yet, cancelled,
# refunded in full. An action refused there says so by the status; any other refusal of a
# fulfilment action says what the goods still lack.
_MONEY_STOPS_FULFILMENT: frozenset[OrderStatus] = frozenset(
    {S.PENDING_PAYMENT, S.CANCELLED, S.REFUNDED}
)


def _units(lines: Sequence[LineProgress] | None) -> tuple[int, int] | None:
    """(units fulfilled, units to fulfil): every unit not refunded must be fulfilled."""
    if not lines:
        return None
    due = sum(max(line.quantity - line.refunded, 0) for line in lines)
    done = sum(min(line.fulfilled, max(line.quantity - line.refunded, 0)) for line in lines)
    return done, due


def not_ready(
    fulfillment: FulfillmentStatus, action: OrderAction, lines: Sequence[LineProgress] | None
) -> str:
    """Why the goods are not ready for ``action``, in words: what is missing, and with the
    order's lines (``lines``), how many units are fulfilled of those that must be."""
    if action is A.SHIP:
        if fulfillment in (F.SHIPPED, F.DELIVERED):
            return f"The order has already shipped (its fulfilment is {fulfillment.value!r})."
        counted = _units(lines)
        told = (
            f"{counted[0]} of {counted[1]} {'is' if counted[0] == 1 else 'are'}"
            if counted is not None
            else f"its fulfilment is {fulfillment.value!r}"
        )
        return f"Every unit not refunded must be fulfilled before the order ships; {told}."
    if action is A.DELIVER:
        if fulfillment is F.DELIVERED:
            return "The order has already been delivered."
        return (
            "The order must be shipped before it is delivered; its fulfilment is "
            f"{fulfillment.value!r}."
        )
    if action in (A.FULFIL, A.FULFIL_PARTIALLY):
        return (
            "Every unit not refunded is fulfilled already: nothing is left to fulfil (its "
            f"fulfilment is {fulfillment.value!r})."
        )
    return (
        "Nothing has been fulfilled yet, so nothing can be returned (its fulfilment is "
        f"{fulfillment.value!r})."
    )


_PAYMENT_AFTER: Mapping[OrderAction, PaymentStatus] = MappingProxyType(
    {
        A.PAY: PaymentStatus.PAID,
        A.CANCEL: PaymentStatus.VOIDED,
        A.EXPIRE: PaymentStatus.VOIDED,
        A.REFUND_PARTIALLY: PaymentStatus.PARTIALLY_REFUNDED,
        A.REFUND: PaymentStatus.REFUNDED,
    }
)

# Who may take which action, for ``allowed_actions``: the buyer pays (through payments) and
# cancels an unpaid order; staff run fulfilment, returns, refunds (through payments) and cancel;
# ``expire`` is the sweeper's alone.
BUYER_ACTIONS: frozenset[OrderAction] = frozenset({A.PAY, A.CANCEL})
STAFF_ACTIONS: frozenset[OrderAction] = frozenset(
    {
        A.CANCEL,
        A.FULFIL_PARTIALLY,
        A.FULFIL,
        A.SHIP,
        A.DELIVER,
        A.RETURN_LINES,
        A.REFUND_PARTIALLY,
        A.REFUND,
    }
)


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order's three statuses: ``status`` (the life cycle of the issue's state machine),
    ``fulfillment`` (the goods) and ``payment`` (the money)."""

    status: OrderStatus
    fulfillment: FulfillmentStatus = FulfillmentStatus.UNFULFILLED
    payment: PaymentStatus = PaymentStatus.PENDING


def advance(
    state: OrderState,
    action: OrderAction | str,
    *,
    paid_short: bool = False,
    lines: Sequence[LineProgress] | None = None,
) -> OrderState:
    """The state ``action`` leads to: the status by ``TRANSITIONS``, fulfilment by
    ``FULFILMENT_TRANSITIONS``, the payment status by the action (``pay`` with less than the
    total captured, ``paid_short``, is ``partially_paid``).

    A fulfilment action refused is one problem shape whatever the status: an
    ``IllegalTransition`` carrying ``fulfillment_status``, saying what the goods lack (with
    ``lines``, how many units are fulfilled), unless the money stops it (unpaid, cancelled,
    refunded in full), which the message says instead."""
    act = OrderAction(action)
    fulfillment = state.fulfillment
    if act in FULFILMENT_ACTIONS:
        fulfillment = _fulfilment_after(state, act, lines)
    status = next_status(state.status, act)
    payment = _PAYMENT_AFTER.get(act, state.payment)
    if act is A.PAY and paid_short:
        payment = PaymentStatus.PARTIALLY_PAID
    return OrderState(status, fulfillment, payment)


def _fulfilment_after(
    state: OrderState, act: OrderAction, lines: Sequence[LineProgress] | None
) -> FulfillmentStatus:
    target = FULFILMENT_TRANSITIONS[state.fulfillment].get(act)
    moves = TRANSITIONS.get(state.status, {}).get(act) is not None
    if target is not None and moves:
        return target
    if target is None and (moves or state.status not in _MONEY_STOPS_FULFILMENT):
        detail = not_ready(state.fulfillment, act, lines)
    else:
        detail = f"An order in status {state.status.value!r} cannot {act.value.replace('_', ' ')}."
    raise IllegalTransition(
        detail,
        status_now=state.status.value,
        fulfillment_status=state.fulfillment.value,
        action=act.value,
    )


def fulfillment_after_refund(
    current: FulfillmentStatus, lines: Sequence[LineProgress]
) -> FulfillmentStatus:
    """A refund of the units still to fulfil completes a partial fulfilment: what is left is
    fulfilled, so it can ship."""
    if current is F.PARTIALLY_FULFILLED and not any(
        line.quantity - line.fulfilled - line.refunded > 0 for line in lines
    ):
        return F.FULFILLED
    return current


class CartAlreadyOrdered(Conflict):
    """The cart has been checked out already: it is an order now."""

    type, title = "cart-already-ordered", "Cart already ordered"


class VoucherUsedUp(Conflict):
    """The voucher applies but cannot be counted once more: its usage limit, or the buyer's
    per-customer limit, is reached."""

    type, title = "voucher-used-up", "Voucher used up"


class IllegalTransition(Conflict):
    """The order's status does not allow the action."""

    type = "illegal-order-transition"
    title = "The order cannot do that in its current status"


def next_status(current: OrderStatus | str, action: OrderAction | str) -> OrderStatus:
    """The status ``action`` leads to from ``current``; ``IllegalTransition`` (409) if none."""
    status, act = OrderStatus(current), OrderAction(action)
    target = TRANSITIONS.get(status, {}).get(act)
    if target is None:
        raise IllegalTransition(
            f"An order in status {status.value!r} cannot {act.value.replace('_', ' ')}.",
            status_now=status.value,
            action=act.value,
        )
    return target


def allowed_actions(
    current: OrderStatus | str | OrderState,
    lines: Sequence[LineProgress] | None = None,
    *,
    staff: bool = True,
) -> list[str]:
    """The actions this caller may take on an order in ``current`` state, for clients to show
    buttons: staff's (``staff``) or the buyer's (pay and cancel while unpaid); ``expire`` is
    the system's and never listed. Given the fulfilment status, fulfilling, shipping and
    delivering follow it; given the ``lines``, fulfilling needs a unit left to fulfil (neither
    fulfilled nor refunded) and a return a fulfilled unit not yet returned."""
    if isinstance(current, OrderState):
        state: OrderState | None = current
        status = current.status
    else:
        state, status = None, OrderStatus(current)
    mine = STAFF_ACTIONS if staff else BUYER_ACTIONS
    actions = [a for a in TRANSITIONS.get(status, {}) if a in mine]
    if state is not None:
        ready = FULFILMENT_TRANSITIONS[state.fulfillment]
        actions = [a for a in actions if a in ready or a not in FULFILMENT_ACTIONS]
    if lines is not None:
        if not any(line.quantity - line.fulfilled - line.refunded > 0 for line in lines):
            actions = [a for a in actions if a not in (A.FULFIL, A.FULFIL_PARTIALLY)]
        if not any(line.fulfilled - line.returned > 0 for line in lines):
            actions = [a for a in actions if a is not A.RETURN_LINES]
    return [a.value for a in actions]


# --- shipping -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightBracket:
    """A shipping price for parcels up to ``up_to_grams`` (``None``: any heavier parcel)."""

    up_to_grams: int | None
    amount: int


class NotShippable(Unprocessable):
    type = "not-shippable"
    title = "The shipping method cannot carry this cart"


def shipping_cost(brackets: Sequence[WeightBracket], weight_grams: int) -> int:
    """The price of the first bracket the parcel's weight fits in (flat rate: one open bracket)."""
    ordered = sorted(brackets, key=lambda b: (b.up_to_grams is None, b.up_to_grams or 0))
    for bracket in ordered:
        if bracket.up_to_grams is None or weight_grams <= bracket.up_to_grams:
            return bracket.amount
    raise NotShippable(
        f"A parcel of {weight_grams} g is heavier than this shipping method carries.",
        errors=[{"field": "shipping_method", "message": "too heavy", "code": "too_heavy"}],
    )


# --- vouchers -----------------------------------------------------------------------------------


class VoucherKind(StrEnum):
    PERCENTAGE = "percentage"
    FIXED = "fixed"


@dataclass(frozen=True, slots=True)
class Voucher:
    """A discount code. ``value`` is basis points (percentage) or minor units (fixed)."""

    code: str
    kind: VoucherKind
    value: int
    currency: str | None = None
    minimum_spend: int = 0
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    active: bool = True


class VoucherNotApplicable(Unprocessable):
    type = "voucher-not-applicable"
    title = "The voucher cannot be used on this cart"


def normalise_code(code: str) -> str:
    """Voucher codes match case-insensitively and without surrounding spaces."""
    return code.strip().upper()


def voucher_problem(voucher: Voucher, *, subtotal: Money, now: datetime) -> str | None:
    """Why ``voucher`` cannot apply to a cart of ``subtotal`` at ``now``; ``None`` if it can."""
    if not voucher.active:
        return "The voucher is no longer active."
    if voucher.starts_at is not None and now < voucher.starts_at:
        return "The voucher is not valid yet."
    if voucher.ends_at is not None and now >= voucher.ends_at:
        return "The voucher has expired."
    if voucher.currency is not None and voucher.currency != subtotal.currency:
        return f"The voucher is for {voucher.currency} carts."
    # An amount is meaningless without its currency: such a voucher cannot be created (nor is
    # one left by migration 0003), so it never applies rather than guessing the cart's.
    if voucher.currency is None and voucher.kind is VoucherKind.FIXED:
        return "The voucher's amount has no currency."
    if voucher.minimum_spend > 0:
        if voucher.currency is None:
            return "The voucher's minimum spend has no currency."
        if subtotal.amount < voucher.minimum_spend:
            spend = Money(voucher.minimum_spend, voucher.currency)
            return f"The voucher needs a minimum spend of {spend}."
    return None


def voucher_definition_problems(
    *,
    kind: VoucherKind,
    value: int,
    currency: str | None,
    minimum_spend: int,
    starts_at: datetime | None,
    ends_at: datetime | None,
) -> list[tuple[str, str]]:
    """What is wrong with a voucher's terms, as ``(field, message)`` pairs; empty if nothing.
    A fixed amount and a minimum spend are money, so either needs the voucher's currency; a
    voucher with a currency applies only to carts in that currency."""
    problems: list[tuple[str, str]] = []
    if kind is VoucherKind.PERCENTAGE and value > 10_000:
        problems.append(("value", "a percentage voucher is at most 10000 basis points (100 %)"))
    if currency is None:
        if kind is VoucherKind.FIXED:
            problems.append(("currency", "a fixed voucher needs its currency"))
        elif minimum_spend > 0:
            problems.append(
                ("currency", "a voucher with a minimum spend needs the currency it is in")
            )
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        problems.append(("ends_at", "must be after starts_at"))
    return problems


def check_voucher(voucher: Voucher, *, subtotal: Money, now: datetime) -> None:
    """Raise ``VoucherNotApplicable`` (422 on ``code``) unless the voucher applies."""
    problem = voucher_problem(voucher, subtotal=subtotal, now=now)
    if problem is not None:
        raise VoucherNotApplicable(
            problem, errors=[{"field": "code", "message": problem, "code": "not_applicable"}]
        )


def voucher_discount(voucher: Voucher, subtotal: Money) -> Money:
    """The discount a voucher gives on ``subtotal``: never more than the subtotal itself."""
    if voucher.kind is VoucherKind.PERCENTAGE:
        discount = subtotal.percentage(min(voucher.value, 10_000), Rounding.HALF_EVEN)
    else:
        discount = Money(voucher.value, subtotal.currency)
    return Money(max(0, min(discount.amount, subtotal.amount)), subtotal.currency)


# --- pricing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CartLine:
    """A line to price: unit price as catalog quoted it, in the price basis of the channel."""

    sku: str
    quantity: int
    unit_price: int
    weight_grams: int = 0


@dataclass(frozen=True, slots=True)
class LineTotals:
    """One priced line. ``subtotal`` is before discount; ``total`` is what the line costs."""

    sku: str
    quantity: int
    unit_price: int
    subtotal: int
    discount: int
    tax: int
    total: int


@dataclass(frozen=True, slots=True)
class Totals:
    """A cart's or order's amounts.

    Invariants: ``sum(line.discount) == discount_total``; with tax-exclusive prices
    ``total == subtotal - discount_total + shipping_total + tax_total``; with tax-inclusive
    prices the tax is contained and ``total == subtotal - discount_total + shipping_total``;
    in both, ``total == sum(line.total) + shipping_total + shipping_tax_added``.
    """

    currency: str
    prices_include_tax: bool
    tax_rate_bp: int
    subtotal: int
    discount_total: int
    shipping_total: int
    shipping_tax: int
    tax_total: int
    total: int
    weight_grams: int
    lines: tuple[LineTotals, ...] = field(default_factory=tuple)


def price_order(
    lines: Sequence[CartLine],
    *,
    currency: str,
    prices_include_tax: bool,
    tax_rate_bp: int,
    shipping: Sequence[WeightBracket] | None = None,
    voucher: Voucher | None = None,
    now: datetime | None = None,
) -> Totals:
    """Price a cart or an order: the one place subtotal, discount, tax, shipping and total come
    from. The discount is spread over the lines in proportion to their subtotals without losing
    a minor unit; tax is computed per line (and on shipping) at the country's rate. A voucher
    that does not apply (``now`` given) raises ``VoucherNotApplicable``."""
    if tax_rate_bp < 0:
        raise ValueError("a tax rate cannot be negative")
    for line in lines:
        if line.quantity <= 0 or line.unit_price < 0 or line.weight_grams < 0:
            raise ValueError(f"line {line.sku!r} has a non-positive quantity or negative price")
    subtotals = [Money(line.unit_price, currency) * line.quantity for line in lines]
    subtotal = Money.total(subtotals, currency=currency)
    discount = Money.zero(currency)
    if voucher is not None:
        if now is not None:
            check_voucher(voucher, subtotal=subtotal, now=now)
        discount = voucher_discount(voucher, subtotal)
    if discount.amount and subtotal.amount:
        shares = discount.allocate([s.amount for s in subtotals])
    else:
        shares = [Money.zero(currency) for _ in subtotals]

    priced: list[LineTotals] = []
    for line, line_subtotal, share in zip(lines, subtotals, shares, strict=True):
        after_discount = line_subtotal - share
        if prices_include_tax:
            tax = tax_from_inclusive(after_discount, tax_rate_bp)
            line_total = after_discount
        else:
            tax = tax_on_exclusive(after_discount, tax_rate_bp)
            line_total = after_discount + tax
        priced.append(
            LineTotals(
                sku=line.sku,
                quantity=line.quantity,
                unit_price=line.unit_price,
                subtotal=line_subtotal.amount,
                discount=share.amount,
                tax=tax.amount,
                total=line_total.amount,
            )
        )

    weight = sum(line.weight_grams * line.quantity for line in lines)
    shipping_price = Money.zero(currency)
    if shipping is not None and lines:
        shipping_price = Money(shipping_cost(shipping, weight), currency)
    if prices_include_tax:
        shipping_tax = tax_from_inclusive(shipping_price, tax_rate_bp)
        shipping_total = shipping_price
    else:
        shipping_tax = tax_on_exclusive(shipping_price, tax_rate_bp)
        shipping_total = shipping_price
    line_tax = sum(p.tax for p in priced)
    tax_total = line_tax + shipping_tax.amount
    total = subtotal.amount - discount.amount + shipping_total.amount
    if not prices_include_tax:
        total += tax_total
    return Totals(
        currency=currency,
        prices_include_tax=prices_include_tax,
        tax_rate_bp=tax_rate_bp,
        subtotal=subtotal.amount,
        discount_total=discount.amount,
        shipping_total=shipping_total.amount,
        shipping_tax=shipping_tax.amount,
        tax_total=tax_total,
        total=total,
        weight_grams=weight,
        lines=tuple(priced),
    )


# --- fulfilment and returns ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineProgress:
    """How much of an order line has been fulfilled, returned and refunded."""

    line_id: str
    quantity: int
    fulfilled: int = 0
    returned: int = 0
    refunded: int = 0


def fulfilment_action(lines: Sequence[LineProgress], shipping: Mapping[str, int]) -> OrderAction:
    """Check a fulfilment of ``shipping`` (line id -> quantity, in the request's order, so a
    problem names ``lines.N.quantity``) and say whether it completes the order (``FULFIL``) or
    not (``FULFIL_PARTIALLY``). Refunded units need no fulfilment."""
    by_id = {line.line_id: line for line in lines}
    if not shipping:
        raise _line_error("lines", "A fulfilment needs at least one line.")
    for index, (line_id, quantity) in enumerate(shipping.items()):
        line = by_id.get(line_id)
        if line is None:
            raise _line_error(f"lines.{index}.line_id", f"The order has no line {line_id!r}.")
        open_quantity = line.quantity - line.fulfilled - line.refunded
        if quantity <= 0 or quantity > open_quantity:
            raise _line_error(
                f"lines.{index}.quantity",
                f"Line {line_id!r} has {max(open_quantity, 0)} unit(s) left to fulfil.",
            )
    complete = all(
        line.fulfilled + shipping.get(line.line_id, 0) + line.refunded >= line.quantity
        for line in lines
    )
    return OrderAction.FULFIL if complete else OrderAction.FULFIL_PARTIALLY


def check_return(lines: Sequence[LineProgress], returning: Mapping[str, int]) -> None:
    """A return may only bring back units that were fulfilled and not yet returned; a problem
    names the line as the request gave it (``lines.N.quantity``)."""
    by_id = {line.line_id: line for line in lines}
    if not returning:
        raise _line_error("lines", "A return needs at least one line.")
    for index, (line_id, quantity) in enumerate(returning.items()):
        line = by_id.get(line_id)
        if line is None:
            raise _line_error(f"lines.{index}.line_id", f"The order has no line {line_id!r}.")
        returnable = line.fulfilled - line.returned
        if quantity <= 0 or quantity > returnable:
            raise _line_error(
                f"lines.{index}.quantity",
                f"Line {line_id!r} has {max(returnable, 0)} unit(s) that can be returned.",
            )


def refunded_units(
    lines: Sequence[LineProgress], named: Mapping[str, int], *, settles_the_order: bool
) -> dict[str, int]:
    """The units each line gains as refunded by one refund (line id -> units, none at 0).

    A refund naming lines refunds those units, each capped at what the line has left to
    refund; lines the order does not have are ignored. A refund naming no lines that settles
    the order (nothing left to refund: "the rest") refunds every unit left, which are the units
    payments puts back in stock when it restocks the rest, so the lines agree with the stock.
    A refund of an amount that leaves money to refund touches no line."""
    by_id = {line.line_id: line for line in lines}
    gained: dict[str, int] = {}
    if named:
        for line_id, quantity in named.items():
            line = by_id.get(line_id)
            if line is not None:
                gained[line_id] = max(0, min(quantity, line.quantity - line.refunded))
    elif settles_the_order:
        gained = {line.line_id: max(0, line.quantity - line.refunded) for line in lines}
    return {line_id: units for line_id, units in gained.items() if units}


def _line_error(field_name: str, message: str) -> Unprocessable:
    return Unprocessable(
        message, errors=[{"field": field_name, "message": message, "code": "invalid"}]
    )
