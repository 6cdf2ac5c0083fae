"""Mail to the buyer about their order: what each message says, and the queue that sends them.

Four messages, as a shop sends them: the order confirmation when the order is paid
(``OrderPaid``), a shipping confirmation for each parcel sent with a tracking number
(``OrderFulfillmentCreated``), the cancellation notice (``OrderCancelled``) and the refund notice
(``OrderRefunded``). The consumer of these events queues one row in ``order_emails`` per event,
in the transaction that records the event as processed, with what the event said that may
change later (the refunded total a refund left, the parcel of a fulfilment, what a payment
captured); the ``send-order-emails`` job renders each from that and the order as it is then
(its lines, addresses and totals, which do not change once it is paid) and hands it to the
mailer, retrying with backoff while the mail server fails. Delivery is at least once: a
process that stops after the mailer took a message and before the row is marked sent sends it
again once its claim lapses. A mail sent or given up is an entry in the order's history,
written in the transaction that settles it.

The rendering functions are pure (no I/O). Messages carry no payment details (orders has none),
and nothing here logs a recipient, a subject or a body.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import formataddr, parseaddr
from typing import Any, Final, Protocol

import structlog
from sqlalchemy import bindparam, delete, insert, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ecosistema.orders import schemas
from ecosistema.orders.events import (
    ORDER_CANCELLED,
    ORDER_FULFILLMENT_CREATED,
    ORDER_PAID,
    ORDER_REFUNDED,
)
from ecosistema.orders.models import order_emails, order_history, orders
from ecosistema.orders.service import BILLING_ADDRESS, SHIPPING_ADDRESS, OrderRead, buyer_of
from ecosistema.platform.db import Statements, new_id, statements, utcnow
from ecosistema.platform.errors import NotFound
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.money import minor_unit_exponent
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

KINDS: Final = {
    ORDER_PAID: "confirmation",
    ORDER_FULFILLMENT_CREATED: "shipping",
    ORDER_CANCELLED: "cancellation",
    ORDER_REFUNDED: "refund",
}
EVENT_TYPES: Final = tuple(KINDS)

# A claimed message is someone's for this long: longer than a mail server may take to answer.
CLAIM_SECONDS: Final = 600
RETRY_BASE_SECONDS: Final = 30
RETRY_CAP_SECONDS: Final = 3600
# About half a day of attempts before a message is given up.
MAX_ATTEMPTS: Final = 20
BATCH: Final = 50
# Sent and given-up mail is kept this long (to answer "was my confirmation sent?"), then deleted.
KEEP_DAYS: Final = 30

_SYMBOLS: Final = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}

# What an order's cancellation reason says when it is one of the platform's own codes.
_REASONS: Final = {
    "reservation_expired": (
        "The order was not paid in time, so the items held for it were released."
    ),
    "expire": "The order was not paid in time, so the items held for it were released.",
    "cancel": "The order was cancelled before it was paid.",
}


# --- what the messages say ---------------------------------------------------------------------


class MailedLine(Protocol):
    """What a message says of an order line."""

    @property
    def line_id(self) -> str: ...
    @property
    def sku(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def unit_price(self) -> int: ...


class MailedOrder(Protocol):
    """What a message says of its order: a :class:`schemas.Order`, or the :class:`MailOrder`
    the sender reads."""

    @property
    def id(self) -> str: ...
    @property
    def number(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def subtotal(self) -> int: ...
    @property
    def discount_total(self) -> int: ...
    @property
    def tax_total(self) -> int: ...
    @property
    def shipping_total(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def prices_include_tax(self) -> bool: ...
    @property
    def tax_rate_bp(self) -> int: ...
    @property
    def shipping_method(self) -> str | None: ...
    @property
    def voucher_code(self) -> str | None: ...
    @property
    def amount_paid(self) -> int: ...
    @property
    def refunded_total(self) -> int: ...
    @property
    def shipping_address(self) -> schemas.PostalAddress | None: ...
    @property
    def billing_address(self) -> schemas.PostalAddress | None: ...
    @property
    def lines(self) -> Sequence[MailedLine]: ...


@dataclass(frozen=True, slots=True)
class MailLine:
    """An order line as its mail shows it."""

    line_id: str
    sku: str
    name: str
    quantity: int
    unit_price: int


@dataclass(frozen=True, slots=True)
class MailOrder:
    """An order as its mail shows it: what the sender reads instead of the whole order."""

    id: str
    number: str
    email: str
    currency: str
    subtotal: int
    discount_total: int
    tax_total: int
    shipping_total: int
    total: int
    prices_include_tax: bool
    tax_rate_bp: int
    shipping_method: str | None
    voucher_code: str | None
    amount_paid: int
    refunded_total: int
    shipping_address: schemas.PostalAddress | None
    billing_address: schemas.PostalAddress | None
    lines: tuple[MailLine, ...]


@dataclass(frozen=True)
class OrderMail:
    """One message: its subject, plain text and HTML alternative."""

    subject: str
    text: str
    html: str


def format_amount(amount: int, currency: str) -> str:
    """An amount in minor units as a buyer reads it: ``€1,234.50``, ``¥1,200``, ``CHF 12.00``,
    with as many decimals as the currency has."""
    exponent = minor_unit_exponent(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**exponent)
    digits = f"{whole:,}" + (f".{fraction:0{exponent}d}" if exponent else "")
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{currency} {digits}"


def _rate(tax_rate_bp: int) -> str:
    percent = f"{tax_rate_bp / 100:.2f}".rstrip("0").rstrip(".")
    return f"{percent}%"


def _address_lines(address: schemas.PostalAddress | None) -> list[str]:
    if address is None:
        return []
    place = " ".join(p for p in (address.postal_code, address.city) if p)
    parts = [address.name, address.company, address.line1, address.line2, place, address.region]
    return [*(p for p in parts if p), address.country]


def _totals(order: MailedOrder) -> list[tuple[str, str]]:
    money = order.currency
    rows = [("Subtotal", format_amount(order.subtotal, money))]
    if order.discount_total:
        label = f"Discount ({order.voucher_code})" if order.voucher_code else "Discount"
        rows.append((label, format_amount(-order.discount_total, money)))
    if order.shipping_method is not None or order.shipping_total:
        rows.append(("Shipping", format_amount(order.shipping_total, money)))
    rate = _rate(order.tax_rate_bp)
    if order.prices_include_tax:
        rows.append(("Total", format_amount(order.total, money)))
        rows.append((f"Including tax ({rate})", format_amount(order.tax_total, money)))
    else:
        rows.append((f"Tax ({rate})", format_amount(order.tax_total, money)))
        rows.append(("Total", format_amount(order.total, money)))
    return rows


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


def _line_rows(order: MailedOrder, quantities: Mapping[str, int] | None = None) -> list[str]:
    """``2 x Tee (TEE-M) at €20.00  €40.00`` per line, at the prices the subtotal adds up (as
    the shop shows them, before the discount): every line, or those in ``quantities``."""
    found = []
    for line in order.lines:
        quantity = line.quantity if quantities is None else quantities.get(line.line_id, 0)
        if quantity <= 0:
            continue
        unit = format_amount(line.unit_price, order.currency)
        amount = format_amount(line.unit_price * quantity, order.currency)
        found.append(f"{quantity} x {line.name} ({line.sku}) at {unit}  {amount}")
    return found


def _html(paragraphs: Sequence[str | Sequence[str]]) -> str:
    """Each item a paragraph, or a list of lines kept together."""
    body = []
    for item in paragraphs:
        if isinstance(item, str):
            body.append(f"<p>{html.escape(item)}</p>")
        else:
            body.append("<p>" + "<br>".join(html.escape(line) for line in item) + "</p>")
    return (
        '<!doctype html><html><body style="font-family:sans-serif">'
        + "".join(body)
        + ("</body></html>")
    )


def _mail(subject: str, paragraphs: Sequence[str | Sequence[str]]) -> OrderMail:
    text = "\n\n".join(p if isinstance(p, str) else "\n".join(p) for p in paragraphs)
    return OrderMail(subject=subject, text=text + "\n", html=_html(paragraphs))


def _greeting(order: MailedOrder) -> str:
    address = order.shipping_address or order.billing_address
    return f"Hello {address.name}," if address is not None else "Hello,"


def render_confirmation(
    order: MailedOrder, *, store: str, order_url: str, amount_paid: int | None = None
) -> OrderMail:
    """The order confirmation, sent once the order is paid: what was received (``amount_paid``,
    as the payment left it) when it is less than the total, and no word of a payment when
    there was nothing to pay."""
    paid = order.amount_paid if amount_paid is None else amount_paid
    totals = _totals(order)
    if order.total <= 0:
        opening = (
            f"Thank you for your order {order.number}. There is nothing to pay for it, and we "
            "are getting it ready."
        )
    elif paid < order.total:
        received = format_amount(paid, order.currency)
        opening = (
            f"Thank you for your order {order.number}. We have received {received} of its "
            f"total of {format_amount(order.total, order.currency)} and are getting it ready."
        )
        totals.append(("Paid", received))
    else:
        opening = (
            f"Thank you for your order {order.number}. We have received your payment and are "
            "getting it ready."
        )
    paragraphs: list[str | Sequence[str]] = [
        _greeting(order),
        opening,
        ["Order summary:", *_line_rows(order)],
        _table(totals),
    ]
    if order.shipping_address is not None:
        paragraphs.append(["Shipping to:", *_address_lines(order.shipping_address)])
    paragraphs += [f"View your order: {order_url}", f"— {store}"]
    return _mail(f"Order {order.number} confirmed", paragraphs)


def render_shipping(
    order: MailedOrder,
    *,
    tracking_number: str,
    carrier: str | None,
    lines: Sequence[Mapping[str, Any]],
    store: str,
    order_url: str,
) -> OrderMail:
    """A shipping confirmation: one parcel, its carrier and tracking number."""
    quantities: dict[str, int] = {}
    for item in lines:
        key = str(item.get("line_id"))
        quantities[key] = quantities.get(key, 0) + int(item.get("quantity") or 0)
    every = all(quantities.get(line.line_id, 0) >= line.quantity for line in order.lines)
    tracking = [f"Carrier: {carrier}"] if carrier else []
    tracking.append(f"Tracking number: {tracking_number}")
    paragraphs: list[str | Sequence[str]] = [
        _greeting(order),
        f"{'Your order' if every else 'Part of your order'} {order.number} is on its way.",
        ["In this parcel:", *_line_rows(order, quantities)],
        tracking,
    ]
    if order.shipping_address is not None:
        paragraphs.append(["Shipping to:", *_address_lines(order.shipping_address)])
    paragraphs += [f"View your order: {order_url}", f"— {store}"]
    return _mail(f"Order {order.number} shipped", paragraphs)


def cancellation_reason(reason: str | None) -> str:
    """The reason as the buyer reads it: the platform's codes in words, others as given."""
    if not reason:
        return _REASONS["cancel"]
    return _REASONS.get(reason, f"Reason: {reason}")


def render_cancellation(
    order: MailedOrder, *, reason: str | None, store: str, order_url: str
) -> OrderMail:
    """The cancellation notice."""
    paragraphs: list[str | Sequence[str]] = [
        _greeting(order),
        f"Your order {order.number} has been cancelled.",
        cancellation_reason(reason),
        "Nothing is charged for it; should a payment have been under way, it is refunded in full.",
        f"View your order: {order_url}",
        f"— {store}",
    ]
    return _mail(f"Order {order.number} cancelled", paragraphs)


def render_refund(
    order: MailedOrder,
    *,
    amount: int,
    lines: Sequence[Mapping[str, Any]],
    store: str,
    order_url: str,
    refunded_total: int | None = None,
) -> OrderMail:
    """The refund notice: how much comes back and for which items, and how much of the order
    was refunded once this refund was made (``refunded_total``; the order's own as a last
    resort, for a mail queued before its event carried it). The items listed add up to the
    amount: what the units do not account for (shipping, when the rest of an order is
    refunded) is a line of its own, and so is what they overstate (a discount, a partial
    capture)."""
    quantities: dict[str, int] = {}
    for item in lines:
        key = str(item.get("line_id"))
        quantities[key] = quantities.get(key, 0) + int(item.get("quantity") or 0)
    money = order.currency
    refunded = format_amount(amount, money)
    paragraphs: list[str | Sequence[str]] = [
        _greeting(order),
        f"We have refunded {refunded} for your order {order.number}. It goes back to the way "
        "you paid; your bank may take a few days to show it.",
    ]
    items = _line_rows(order, quantities) if quantities else []
    if items:
        prices = {line.line_id: line.unit_price for line in order.lines}
        listed = sum(prices.get(key, 0) * units for key, units in quantities.items() if units > 0)
        rest = amount - listed
        if rest > 0:
            items.append(f"Shipping and other charges  {format_amount(rest, money)}")
        elif rest < 0:
            items.append(f"Less discounts and adjustments  {format_amount(rest, money)}")
        paragraphs.append(["Refunded items:", *items])
    in_all = order.refunded_total if refunded_total is None else refunded_total
    paragraphs.append(
        _table(
            [
                ("Refunded now", refunded),
                ("Refunded in all", format_amount(in_all, money)),
                ("Order total", format_amount(order.total, money)),
            ]
        )
    )
    paragraphs += [f"View your order: {order_url}", f"— {store}"]
    return _mail(f"Refund for order {order.number}", paragraphs)


def render(
    kind: str, order: MailedOrder, details: Mapping[str, Any], *, store: str, order_url: str
) -> OrderMail:
    """The message of ``kind`` for ``order``, with what its event said (``details``)."""
    if kind == "confirmation":
        paid = details.get("amount_paid")
        return render_confirmation(
            order,
            store=store,
            order_url=order_url,
            amount_paid=None if paid is None else int(paid),
        )
    if kind == "shipping":
        return render_shipping(
            order,
            tracking_number=str(details.get("tracking_number") or ""),
            carrier=details.get("carrier"),
            lines=details.get("lines") or [],
            store=store,
            order_url=order_url,
        )
    if kind == "cancellation":
        return render_cancellation(
            order, reason=details.get("reason"), store=store, order_url=order_url
        )
    if kind == "refund":
        return render_refund(
            order,
            amount=int(details.get("amount") or 0),
            lines=details.get("lines") or [],
            store=store,
            order_url=order_url,
            refunded_total=(
                None if details.get("refunded_total") is None else int(details["refunded_total"])
            ),
        )
    raise ValueError(f"no order mail of kind {kind!r}")


# --- what the order's history says ------------------------------------------------------------

# The mail as staff name it in the order's history.
_LABELS: Final = {
    "confirmation": "Order confirmation",
    "shipping": "Shipping confirmation",
    "cancellation": "Cancellation notice",
    "refund": "Refund notice",
}


def mask_email(address: str) -> str:
    """An address as the order's history shows it: the first character of the mailbox and the
    whole domain (``b***@example.com``), enough to tell a mistyped domain without keeping the
    address, which orders otherwise stores only encrypted."""
    mailbox, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{mailbox[:1]}***@{domain}"


def sent_entry(kind: str, to: str) -> str:
    """The history's words for a mail that went: ``Order confirmation sent to b***@example.com``."""
    return f"{_LABELS.get(kind, 'Mail')} sent to {mask_email(to)}"


def given_up_entry(kind: str, to: str, *, attempts: int, error: str | None) -> str:
    """The history's words for a mail given up, with the class of the last error."""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    why = f" ({error})" if error else ""
    return f"{_LABELS.get(kind, 'Mail')} to {mask_email(to)} not sent: given up after {tries}{why}"


# --- the queue ----------------------------------------------------------------------------------

# What each event's mail says that may change after the event (no personal data: payloads
# carry none), kept with the queued mail so that it says what was true when the event happened:
# the parcel of this fulfilment, this refund and the refunded total it left.
_DETAILS: Final = {
    ORDER_PAID: (),
    ORDER_FULFILLMENT_CREATED: ("fulfillment_id", "tracking_number", "carrier", "lines"),
    ORDER_CANCELLED: ("reason",),
    ORDER_REFUNDED: ("refund_id", "amount", "lines", "fully_refunded", "refunded_total"),
}

_NOTIFY_BUYER = select(orders.c.notify_buyer, orders.c.amount_paid).where(
    orders.c.id == bindparam("order_id")
)


_QUEUE = {
    dialect: insert(order_emails)
    .values({c: bindparam(c.name) for c in order_emails.c})
    .on_conflict_do_nothing(index_elements=[order_emails.c.event_id])
    for dialect, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


def _queue_statement(tx: Statements) -> Any:
    return _QUEUE["postgresql" if tx.is_postgres else "sqlite"]


async def queue_order_email(ctx: ServiceContext, tx: Any, envelope: EventEnvelope) -> None:
    """Queue the buyer's mail about an order event, in the consumer's transaction: nothing for
    an order whose buyer is not mailed (the demo's past orders) or that orders does not have."""
    kind = KINDS.get(envelope.type)
    if kind is None:
        return
    writing = statements(tx)
    order_id = str(envelope.payload.get("order_id") or "")
    found = await writing.row(_NOTIFY_BUYER, order_id=order_id)
    if found is None or not found["notify_buyer"]:
        return
    payload = envelope.payload
    details = {k: payload[k] for k in _DETAILS[envelope.type] if k in payload}
    if kind == "confirmation":
        # What was captured is set when the order is paid, in OrderPaid's transaction, and
        # never changes after: the order's as it is now is the payment's.
        details["amount_paid"] = int(found["amount_paid"])
    now = utcnow()
    await writing.execute(
        _queue_statement(writing),
        id=new_id(),
        event_id=envelope.id,
        order_id=order_id,
        kind=kind,
        details=details,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        last_error=None,
        created_at=now,
        sent_at=None,
    )


async def order_emails_wanted(ctx: ServiceContext, envelope: EventEnvelope) -> bool:
    """With order mails turned off, events are not even recorded: nothing is queued."""
    return ctx.settings.orders_emails


def retry_delay(attempts: int) -> timedelta:
    """How long a message waits after its ``attempts``-th failed attempt."""
    return timedelta(seconds=min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempts - 1)))


def sender_in_shop_name(mail_from: str, shop: str) -> str:
    """The platform's sender address under the shop's name: buyers see who the order is from."""
    _, address = parseaddr(mail_from)
    return formataddr((shop, address)) if address and shop.strip() else mail_from


def _mailer(ctx: ServiceContext) -> Any:
    mailer = ctx.extras.get("order_mailer")
    if mailer is None:
        from ecosistema.platform.mail import create_mailer

        settings = ctx.settings
        sender = settings.orders_email_from or sender_in_shop_name(
            settings.mail_from, settings.seller_name
        )
        mailer = ctx.extras["order_mailer"] = create_mailer(
            settings.model_copy(update={"mail_from": sender})
        )
    return mailer


def check_order_url(template: str) -> None:
    """Refuse (ValueError) a link template that names anything but its three placeholders."""
    try:
        template.format(public_url="", order_id="", number="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            "ECOSISTEMA_ORDERS_EMAIL_ORDER_URL may use only {public_url}, {order_id} and "
            f"{{number}}: {exc!r}"
        ) from exc


def order_url(ctx: ServiceContext, order: MailedOrder) -> str:
    """Where the buyer views the order (``orders_email_order_url`` filled in)."""
    template = ctx.settings.orders_email_order_url
    return template.format(
        public_url=ctx.settings.public_url.rstrip("/"), order_id=order.id, number=order.number
    )


_DUE = (
    select(order_emails.c.id, order_emails.c.attempts)
    .where(order_emails.c.status == "pending", order_emails.c.next_attempt_at <= bindparam("now"))
    .order_by(order_emails.c.next_attempt_at)
    .limit(BATCH)
)
# Guarded on the attempts seen, so of two senders (replicas) one claims the message.
_CLAIM = (
    update(order_emails)
    .where(
        order_emails.c.id == bindparam("email_id"),
        order_emails.c.status == "pending",
        order_emails.c.attempts == bindparam("seen"),
    )
    .values(attempts=order_emails.c.attempts + 1, next_attempt_at=bindparam("until"))
    .returning(*order_emails.c)
)
# Guarded on the claim: a sender whose claim lapsed (and was taken by another) settles nothing.
_SETTLE = (
    update(order_emails)
    .where(
        order_emails.c.id == bindparam("email_id"),
        order_emails.c.status == "pending",
        order_emails.c.attempts == bindparam("claimed_attempts"),
    )
    .values(
        status=bindparam("status"),
        next_attempt_at=bindparam("next_at"),
        last_error=bindparam("error"),
        sent_at=bindparam("sent_at"),
    )
)
# A mail sent or given up, in its order's history: written in the transaction that settles the
# mail, and only if that settled it (the mail row as the settlement left it), so the two always
# agree and a mail is in the history once. One statement per mail.
_RECORD_SETTLED = insert(order_history).from_select(
    ["id", "order_id", "occurred_at", "kind", "action", "actor_kind", "reason", "details"],
    select(
        bindparam("entry_id", type_=order_history.c.id.type),
        order_emails.c.order_id,
        bindparam("at", type_=order_history.c.occurred_at.type),
        literal_column("'event'"),
        bindparam("action", type_=order_history.c.action.type),
        literal_column("'system'"),
        bindparam("reason", type_=order_history.c.reason.type),
        bindparam("details", type_=order_history.c.details.type),
    ).where(
        order_emails.c.id == bindparam("email_id"),
        order_emails.c.status == bindparam("settled_status"),
        order_emails.c.attempts == bindparam("claimed_attempts"),
    ),
)


# What the mail says of its order, in one statement (one snapshot) run on the driver: the order
# and its lines, without the columns no message shows.
_MAIL_ORDER: Final = OrderRead(
    (
        *("id", "number", "email_encrypted", "currency", "subtotal", "discount_total"),
        *("tax_total", "shipping_total", "total", "prices_include_tax", "tax_rate_bp"),
        *("shipping_method", "voucher_code", "amount_paid", "refunded_total"),
        *(SHIPPING_ADDRESS, BILLING_ADDRESS),
    ),
    ("id", "sku", "name", "quantity", "unit_price"),
)


async def read_mail_order(ctx: ServiceContext, order_id: str) -> MailOrder:
    """The order as its mail shows it (NotFound when orders does not have it; ValueError when
    it has no address to mail)."""
    row, lines = await _MAIL_ORDER.fetch(ctx, order_id)
    buyer = buyer_of(ctx, row)
    if not buyer.email:
        raise ValueError("the order has no address to mail")
    return MailOrder(
        id=row["id"],
        number=row["number"],
        email=buyer.email,
        currency=row["currency"],
        subtotal=int(row["subtotal"]),
        discount_total=int(row["discount_total"]),
        tax_total=int(row["tax_total"]),
        shipping_total=int(row["shipping_total"]),
        total=int(row["total"]),
        prices_include_tax=bool(row["prices_include_tax"]),
        tax_rate_bp=int(row["tax_rate_bp"]),
        shipping_method=row["shipping_method"],
        voucher_code=row["voucher_code"],
        amount_paid=int(row["amount_paid"]),
        refunded_total=int(row["refunded_total"]),
        shipping_address=buyer.shipping_address,
        billing_address=buyer.billing_address,
        lines=tuple(
            MailLine(
                line_id=line["id"],
                sku=line["sku"],
                name=line["name"],
                quantity=int(line["quantity"]),
                unit_price=int(line["unit_price"]),
            )
            for line in lines
        ),
    )


async def _send_one(
    ctx: ServiceContext,
    mailer: Any,
    row: Mapping[str, Any],
    moment: datetime,
    read: dict[str, MailOrder],
) -> tuple[dict[str, Any], str | None]:
    """Render and send one claimed message; how it is to be settled (sent, to be tried again
    later, or given up), and the address it was for (None when its order is gone). ``read``
    holds the orders this round has read already."""
    attempts = int(row["attempts"])
    settled: dict[str, Any] = {"status": "sent", "next_at": moment, "error": None}
    to: str | None = None
    try:
        order = read.get(row["order_id"])
        if order is None:
            order = read[row["order_id"]] = await read_mail_order(ctx, row["order_id"])
        to = order.email
        message = render(
            row["kind"],
            order,
            row["details"],
            store=ctx.settings.seller_name,
            order_url=order_url(ctx, order),
        )
        await mailer.send(order.email, message.subject, message.text, message.html)
    except (NotFound, ValueError) as exc:
        # No such order any more, or an address no message can be built for: trying again
        # would fail the same way.
        settled.update(status="failed", error=type(exc).__name__)
    except Exception as exc:  # the mail server is down or refused: try again later
        retry = attempts < MAX_ATTEMPTS
        settled.update(
            status="pending" if retry else "failed",
            next_at=utcnow() + retry_delay(attempts),
            error=type(exc).__name__[:200],
        )
    return settled, to


def _history_entry(
    row: Mapping[str, Any], settled: Mapping[str, Any], to: str, at: datetime
) -> dict[str, Any]:
    """The parameters of ``_RECORD_SETTLED`` for a mail sent or given up."""
    kind, attempts = row["kind"], int(row["attempts"])
    details: dict[str, Any] = {
        "email_id": row["id"],
        "mail": kind,
        "to": mask_email(to),
        "attempts": attempts,
    }
    if settled["status"] == "sent":
        action, reason = "email_sent", sent_entry(kind, to)
    else:
        action = "email_failed"
        reason = given_up_entry(kind, to, attempts=attempts, error=settled["error"])
        details["error"] = settled["error"]
    return {
        "entry_id": new_id(),
        "at": at,
        "action": action,
        "reason": reason,
        "details": details,
        "email_id": row["id"],
        "settled_status": settled["status"],
        "claimed_attempts": attempts,
    }


async def send_due_emails(ctx: ServiceContext, *, now: datetime | None = None) -> int:
    """Send the queued mail that is due; returns how many were sent. A failure leaves the
    message to be tried again later (backoff), or gives it up when it can never go."""
    if not ctx.settings.orders_emails:
        return 0
    moment = now or utcnow()
    # Outside the loop: a mailer or a link the settings cannot make is the operator's to fix,
    # and the messages wait for it rather than being given up.
    mailer = _mailer(ctx)
    check_order_url(ctx.settings.orders_email_order_url)
    async with ctx.db.driver_read() as reading:
        due = await reading.rows(_DUE, now=moment)
    if not due:
        return 0
    # One transaction claims the round and one settles it: a round of mail costs two commits,
    # not two per message. A crash between sending and settling sends those again once their
    # claim lapses (at least once, as documented).
    claimed: list[dict[str, Any]] = []
    async with ctx.db.driver_write() as tx:
        for item in due:
            row = await tx.row(
                _CLAIM,
                email_id=item["id"],
                seen=item["attempts"],
                until=moment + timedelta(seconds=CLAIM_SECONDS),
            )
            if row is not None:  # else another sender took it
                claimed.append(row)
    sent = 0
    settlements: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    read: dict[str, MailOrder] = {}
    for row in claimed:
        settled, to = await _send_one(ctx, mailer, row, moment, read)
        at = utcnow()
        settlements.append(
            {
                "email_id": row["id"],
                "claimed_attempts": row["attempts"],
                "sent_at": at if settled["status"] == "sent" else None,
                **settled,
            }
        )
        if settled["status"] != "pending" and to is not None:
            entries.append(_history_entry(row, settled, to, at))
        sent += settled["status"] == "sent"
    if settlements:
        async with ctx.db.driver_write() as tx:
            await tx.executemany(_SETTLE, settlements)
            if entries:
                await tx.executemany(_RECORD_SETTLED, entries)
    for row, settled in zip(claimed, settlements, strict=True):
        attempts = int(row["attempts"])
        fields = {"email_id": row["id"], "order_id": row["order_id"], "kind": row["kind"]}
        if settled["status"] == "sent":
            log.info("order_email_sent", **fields)
        elif settled["status"] == "failed":
            log.warning("order_email_given_up", attempts=attempts, error=settled["error"], **fields)
        else:
            log.warning(
                "order_email_failed",
                attempts=attempts,
                error=settled["error"],
                retry_at=settled["next_at"].isoformat(),
                **fields,
            )
    return sent


_PURGE = delete(order_emails).where(
    order_emails.c.id.in_(
        select(order_emails.c.id)
        .where(
            order_emails.c.status != "pending",
            order_emails.c.created_at < bindparam("before"),
        )
        .limit(1000)
    )
)


async def purge_old_emails(ctx: ServiceContext, *, now: datetime | None = None) -> int:
    """Delete sent and given-up mail older than ``KEEP_DAYS``; returns how many (at most 1000)."""
    before = (now or utcnow()) - timedelta(days=KEEP_DAYS)
    async with ctx.db.driver_write() as tx:
        return await tx.execute(_PURGE, before=before)


async def send_order_emails(ctx: ServiceContext) -> None:
    """The periodic job's entry point: send until nothing more is due, then forget old mail."""
    while await send_due_emails(ctx) == BATCH:
        pass
    while await purge_old_emails(ctx) == 1000:
        pass
