"""Payments use cases: intents, confirmation, capture, void, refunds, invoices, the journal,
provider webhooks, reconciliation and sales reports.

Money-moving use cases run in three steps so no lock is held across a provider call: a short
transaction claims the payment with a guarded UPDATE (compare-and-set on its status or its
refunded amount), the provider is called with an idempotency key derived from our ids, and a
second transaction records the outcome with its journal entries, documents and events. A lost
provider answer leaves the claim to be undone; the same key then makes the retry safe.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.payments import domain, events
from ecosistema.payments.domain import (
    CREDIT_NOTE_SERIES,
    INVOICE_SERIES,
    Account,
    CaptureMethod,
    IllegalTransition,
    PaymentStatus,
    Period,
    Posting,
)
from ecosistema.payments.models import (
    document_counters,
    invoices,
    journal,
    payments,
    provider_events,
    refunds,
)
from ecosistema.payments.providers.base import (
    CardDetails,
    PaymentProvider,
    ProviderOutcome,
)
from ecosistema.payments.schemas import (
    Invoice,
    InvoicePage,
    Payment,
    PaymentCreate,
    PaymentMethodInput,
    PaymentPage,
    ReconciliationItem,
    ReconciliationReport,
    Refund,
    RefundCreate,
    RefundList,
    SalesReport,
    SalesRow,
    TopProduct,
    WebhookAck,
)
from ecosistema.platform.auth import Principal
from ecosistema.platform.csvsafe import escape_row
from ecosistema.platform.db import DriverTransaction, new_id, statements, utcnow
from ecosistema.platform.errors import (
    Conflict,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    field_error,
    refuse_inverted_range,
)
from ecosistema.platform.pagination import decode_cursor, encode_cursor
from ecosistema.platform.policy import can_reach, ensure, ensure_any, ensure_owner, owner_filter
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)


# The moment use cases record. A caller may set it (``at=``) to write history in the past: the
# demo data's weeks of orders go through the same use cases as live ones.
_RECORDED_AT: ContextVar[datetime | None] = ContextVar("payments_recorded_at", default=None)


def _now() -> datetime:
    """Now, or the moment the running use case was asked to record with ``at``."""
    return _RECORDED_AT.get() or utcnow()


@contextmanager
def _recorded_at(at: datetime | None) -> Iterator[None]:
    token = _RECORDED_AT.set(at)
    try:
        yield
    finally:
        _RECORDED_AT.reset(token)


PAYMENT_NOT_FOUND = "No payment with this id."
INVOICE_NOT_FOUND = "No invoice with this id."
ORDER_NOT_FOUND = "No order with this id."
PAYABLE_ORDER_STATUSES = frozenset({"pending_payment"})
# A claimed payment whose provider call has not been recorded after this long is resumed.
RESUME_AFTER = timedelta(minutes=2)


# Statements of the payment path and of the helpers it shares with refunds, captures and
# webhooks, built once for driver transactions (``Database.driver_write``).
_PAYMENT = select(payments).where(payments.c.id == bindparam("payment_id"))
_PAYMENT_LOCKED = _PAYMENT.with_for_update()
_PAYMENT_BY_PROVIDER_REF = select(payments).where(
    payments.c.provider == bindparam("provider"), payments.c.provider_ref == bindparam("ref")
)
_TAKE_REFUND = (
    update(payments)
    .where(
        payments.c.id == bindparam("payment_id"),
        payments.c.status == PaymentStatus.SUCCEEDED.value,
        payments.c.refunded_amount + bindparam("amount") <= payments.c.captured_amount,
    )
    .values(
        refunded_amount=payments.c.refunded_amount + bindparam("amount"),
        updated_at=bindparam("at"),
    )
)
_REFUNDS_OF_PAYMENT = (
    select(refunds)
    .where(refunds.c.payment_id == bindparam("payment_id"))
    .order_by(refunds.c.created_at, refunds.c.id)
)
_REFUNDED_LINES = select(refunds.c.lines).where(
    refunds.c.payment_id == bindparam("payment_id"), refunds.c.status != "failed"
)
_OTHER_REFUNDED_LINES = _REFUNDED_LINES.where(refunds.c.id != bindparam("refund_id"))
_OTHER_SETTLED_LINES = select(refunds.c.lines).where(
    refunds.c.payment_id == bindparam("payment_id"),
    refunds.c.status == "succeeded",
    refunds.c.id != bindparam("refund_id"),
)
# What the provider has given back: refunds claimed but still at the provider are not in it.
_SETTLED_REFUNDS_TOTAL = select(func.coalesce(func.sum(refunds.c.amount), 0)).where(
    refunds.c.payment_id == bindparam("payment_id"), refunds.c.status == "succeeded"
)
_SETTLE_REFUND = (
    update(refunds)
    .where(refunds.c.id == bindparam("refund_id"), refunds.c.status == "pending")
    .values(
        status="succeeded",
        provider_ref=bindparam("provider_ref"),
        completed_at=bindparam("completed_at"),
        restock_lines=bindparam("restock_lines"),
    )
)
_INVOICE_OF_PAYMENT = select(invoices.c.id).where(
    invoices.c.payment_id == bindparam("payment_id"), invoices.c.kind == "invoice"
)
_DOCUMENT_LINES_OF_PAYMENT = select(invoices.c.kind, invoices.c.lines).where(
    invoices.c.payment_id == bindparam("payment_id")
)
_BUMP_COUNTER = (
    update(document_counters)
    .where(
        document_counters.c.series == bindparam("series"),
        document_counters.c.year == bindparam("year"),
    )
    .values(last_value=document_counters.c.last_value + 1)
    .returning(document_counters.c.last_value)
)
# By ``Database.is_postgres``: the counter's first row, unless a concurrent issuer made it.
_START_COUNTER = {
    postgres: dialect_insert(document_counters)
    .values(series=bindparam("series"), year=bindparam("year"), last_value=1)
    .on_conflict_do_nothing()
    for postgres, dialect_insert in ((False, sqlite_insert), (True, pg_insert))
}
_RECEIVE_PROVIDER_EVENT = {
    postgres: dialect_insert(provider_events)
    .values(
        provider=bindparam("provider"),
        event_id=bindparam("event_id"),
        type=bindparam("type"),
        outcome="received",
        received_at=bindparam("received_at"),
    )
    .on_conflict_do_nothing()
    for postgres, dialect_insert in ((False, sqlite_insert), (True, pg_insert))
}
_PROVIDER_EVENT_OUTCOME = (
    update(provider_events)
    .where(
        provider_events.c.provider == bindparam("provider"),
        provider_events.c.event_id == bindparam("event_id"),
    )
    .values(outcome=bindparam("outcome"))
)

# UPDATE statements of a payment by the columns they set, and whether they are guarded by the
# status the payment must still be in; built once per shape (a handful).
_PAYMENT_UPDATES: dict[tuple[tuple[str, ...], bool], Any] = {}


def _payment_update(columns: tuple[str, ...], *, guarded: bool) -> Any:
    key = (columns, guarded)
    found = _PAYMENT_UPDATES.get(key)
    if found is None:
        where = [payments.c.id == bindparam("payment_id")]
        if guarded:
            where.append(payments.c.status == bindparam("expected_status"))
        found = _PAYMENT_UPDATES[key] = (
            update(payments)
            .where(*where)
            .values({payments.c[name]: bindparam(name) for name in columns})
        )
    return found


async def _update_payment(
    tx: DriverTransaction,
    payment_id: str,
    values: Mapping[str, Any],
    *,
    expected: PaymentStatus | None = None,
) -> int:
    """Set ``values`` on a payment (only while it is in status ``expected``, when given); the
    number of rows changed."""
    statement = _payment_update(tuple(values), guarded=expected is not None)
    if expected is None:
        return await tx.execute(statement, payment_id=payment_id, **values)
    return await tx.execute(
        statement, payment_id=payment_id, expected_status=expected.value, **values
    )


class OrderNotPayable(Conflict):
    """The order is not waiting for payment."""

    type, title = "order-not-payable", "Order not payable"


class PaymentAlreadyExists(Conflict):
    """The order already has a payment that is not canceled."""

    type, title = "order-already-has-payment", "Order already has a payment"


# --- providers ----------------------------------------------------------------------------------


def provider_for(ctx: ServiceContext, name: str | None = None) -> PaymentProvider:
    """The named provider (default: the configured one), built once per context."""
    name = name or ctx.settings.payment_provider
    providers: dict[str, PaymentProvider] = ctx.extras.setdefault("providers", {})
    if name not in providers:
        if name == "sandbox":
            from ecosistema.payments.providers.sandbox import SandboxProvider

            providers[name] = SandboxProvider(ctx.db)
        elif name == "stripe":
            if ctx.settings.stripe_api_key is None:
                raise ServiceUnavailable("Stripe is not configured (ECOSISTEMA_STRIPE_API_KEY).")
            from ecosistema.payments.providers.stripe import StripeProvider

            providers[name] = StripeProvider(
                ctx.settings.stripe_api_key.get_secret_value(),
                api_base=ctx.settings.stripe_api_base,
            )
        else:
            raise NotFound(f"No payment provider named {name!r}.")
    return providers[name]


def use_provider(ctx: ServiceContext, provider: PaymentProvider) -> None:
    """Register a provider instance under its name (operators and tests wire their own)."""
    ctx.extras.setdefault("providers", {})[provider.name] = provider


# --- reading ------------------------------------------------------------------------------------


def _payment(row: Mapping[str, Any]) -> Payment:
    return Payment.model_validate({**row, "card": row["card"]}, from_attributes=False)


async def _load(tx: DriverTransaction, payment_id: str) -> dict[str, Any]:
    row = await tx.row(_PAYMENT, payment_id=payment_id)
    if row is None:
        raise NotFound(PAYMENT_NOT_FOUND)
    return row


def _ensure_reach(principal: Principal, row: Mapping[str, Any], *, bypass: str) -> None:
    if can_reach(principal, row["customer_id"], bypass=bypass):
        return
    # A payment a customer started for their own order stays theirs.
    ensure_owner(principal, row["created_by"], bypass=bypass, detail=PAYMENT_NOT_FOUND)


def _check_caller(principal: Principal | None, cart_token: str | None, *permissions: str) -> None:
    """A signed-in caller without a cart token needs one of ``permissions`` (403); a caller with
    neither credentials nor a cart token is told what a missing id is told."""
    if principal is not None and not cart_token:
        ensure_any(principal, *permissions)
    elif principal is None and not cart_token:
        raise NotFound(PAYMENT_NOT_FOUND)


async def _ensure_payer(
    ctx: ServiceContext,
    principal: Principal | None,
    cart_token: str | None,
    row: Mapping[str, Any],
    *,
    own: str,
    bypass: str,
) -> None:
    """Let through the payment's customer (or whoever started it), staff holding ``bypass``,
    and a guest holding the token of the cart the payment's order came from; anyone else gets
    the answer a missing id gets."""
    if (
        principal is not None
        and (principal.has(own) or principal.has(bypass))
        and any(can_reach(principal, row[c], bypass=bypass) for c in ("customer_id", "created_by"))
    ):
        return
    # Orders decides who holds a guest order: the same check as the guest's own order reads.
    if cart_token and row["customer_id"] is None:
        try:
            await _order(ctx, row["order_id"], cart_token=cart_token)
        except NotFound:
            pass
        else:
            return
    raise NotFound(PAYMENT_NOT_FOUND)


async def get_payment(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    payment_id: str,
    cart_token: str | None = None,
) -> Payment:
    """One payment, if the caller may see it (a guest: with their order's cart token)."""
    _check_caller(principal, cart_token, "payments:read_own", "payments:read_all")
    async with ctx.db.driver_read() as tx:
        row = await _load(tx, payment_id)
    await _ensure_payer(
        ctx, principal, cart_token, row, own="payments:read_own", bypass="payments:read_all"
    )
    return _payment(row)


async def list_payments(
    ctx: ServiceContext,
    *,
    principal: Principal,
    order_id: str | None = None,
    status: PaymentStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> PaymentPage:
    """Payments the caller may see, newest first."""
    ensure_any(principal, "payments:read_own", "payments:read_all")
    query = select(payments)
    owner = owner_filter(principal, bypass="payments:read_all")
    if owner is not None:
        query = query.where(payments.c.customer_id == owner)
    if order_id is not None:
        query = query.where(payments.c.order_id == order_id)
    if status is not None:
        query = query.where(payments.c.status == status.value)
    query = _after_cursor(query, payments.c.created_at, payments.c.id, cursor)
    query = query.order_by(payments.c.created_at.desc(), payments.c.id.desc()).limit(limit + 1)
    async with ctx.db.read() as session:
        rows = [dict(r) for r in (await session.execute(query)).mappings()]
    return PaymentPage(
        items=[_payment(r) for r in rows[:limit]],
        next_cursor=_cursor_of(rows[limit - 1]) if len(rows) > limit else None,
    )


def _cursor_of(row: Mapping[str, Any], column: str = "created_at") -> str:
    return encode_cursor(row[column], row["id"])


def _after_cursor(query: Any, at: Any, id_: Any, cursor: str | None) -> Any:
    if not cursor:
        return query
    moment, ident = decode_cursor(cursor, datetime, str)
    return query.where(or_(at < moment, and_(at == moment, id_ < ident)))


# --- orders -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


async def _order(
    ctx: ServiceContext, order_id: str, *, cart_token: str | None = None
) -> dict[str, Any]:
    """The order's summary; with ``cart_token``, only if the guest holding it may read it."""
    try:
        orders = ctx.client("orders")
    except LookupError as exc:
        raise ServiceUnavailable("The orders service cannot be reached from here.") from exc
    summary: dict[str, Any] = _plain(await orders.get_order(order_id, cart_token=cart_token))
    return summary


async def _payable_order(
    ctx: ServiceContext, principal: Principal | None, cart_token: str | None, order_id: str
) -> dict[str, Any]:
    """The order to pay, if the caller may pay it: their own (staff: any), or a guest order
    whose cart token they hold; anyone else gets the answer a missing order gets."""
    if principal is not None and (
        principal.has("payments:write_own") or principal.has("payments:write_all")
    ):
        order = await _order(ctx, order_id)
        if can_reach(principal, order.get("customer_id"), bypass="payments:write_all"):
            return order
        if not cart_token or order.get("customer_id") is not None:
            raise NotFound(ORDER_NOT_FOUND)
    elif not cart_token:
        if principal is not None:
            ensure_any(principal, "payments:write_own", "payments:write_all")
        raise NotFound(ORDER_NOT_FOUND)
    return await _order(ctx, order_id, cart_token=cart_token)


# The buyer's personal data in an order: kept apart from the snapshot, encrypted.
PERSONAL_FIELDS = ("email", "billing_address", "shipping_address")


def _snapshot(order: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "id",
        "number",
        "customer_id",
        "currency",
        "subtotal",
        "discount_total",
        "tax_total",
        "shipping_total",
        "total",
        "lines",
        "prices_include_tax",
        "tax_rate_bp",
        "shipping_tax",
    )
    return {k: order.get(k) for k in keep if k in order}


def _seal(ctx: ServiceContext, value: Any, table: str, row_id: str) -> str:
    return ctx.cipher.encrypt(
        json.dumps(value, separators=(",", ":")),
        table=table,
        column="buyer_encrypted",
        row_id=row_id,
    )


def _open(ctx: ServiceContext, row: Mapping[str, Any], table: str) -> dict[str, Any]:
    """The decrypted ``buyer_encrypted`` JSON of a payment or invoice row ({} when none)."""
    token = row.get("buyer_encrypted")
    if not token:
        return {}
    plain = ctx.cipher.decrypt(
        str(token), table=table, column="buyer_encrypted", row_id=str(row["id"])
    )
    value = json.loads(plain)
    return value if isinstance(value, dict) else {}


# --- creating and confirming --------------------------------------------------------------------


async def create_payment(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    data: PaymentCreate,
    at: datetime | None = None,
    cart_token: str | None = None,
) -> Payment:
    """A payment intent for an order, amount and currency from the order; confirmed at once
    when a payment method is given. A guest pays with the token of the cart the order came
    from."""
    with _recorded_at(at):
        order = await _payable_order(ctx, principal, cart_token, data.order_id)
        if order.get("status") not in PAYABLE_ORDER_STATUSES:
            raise OrderNotPayable(
                f"Order {order.get('number')} is {order.get('status')}, not payable."
            )
        tokenized = None
        if data.payment_method is not None:
            provider = provider_for(ctx, ctx.settings.payment_provider)
            tokenized = await _tokenize(provider, data.payment_method, "payment_method")
        now = _now()
        payment_id = new_id()
        values = _new_payment(ctx, payment_id, principal, data, order, now)
        if tokenized is not None:
            # Confirmed at once: the payment is written already claimed for the authorization,
            # as ``_confirm`` would claim it, in the same transaction that creates it.
            values = {
                **values,
                **_EMPTY_OUTCOME,
                **_claim_values(tokenized, attempt=1, operation="authorize"),
            }
        try:
            # ``live_order_id`` is unique while a payment is not canceled: one live payment per
            # order, even when two requests race.
            async with ctx.db.driver_write() as tx:
                await tx.insert(payments, values)
        except IntegrityError:
            async with ctx.db.read() as session:
                active = await session.scalar(
                    select(payments.c.id).where(payments.c.live_order_id == data.order_id)
                )
            raise PaymentAlreadyExists(
                "This order already has a payment; confirm or cancel it.", payment_id=active
            ) from None
        if tokenized is None:
            return _payment({**values, **_EMPTY_OUTCOME})
        try:
            return await _finish(ctx, values, PaymentStatus.REQUIRES_PAYMENT_METHOD)
        except ProblemError as problem:
            # The intent exists; the caller confirms it with another method using this id.
            problem.extra.setdefault("payment_id", payment_id)
            raise


# The columns a new payment leaves empty.
_EMPTY_OUTCOME: dict[str, Any] = {
    "provider_ref": None,
    "card": None,
    "failure_code": None,
    "failure_message": None,
    "next_action": None,
    "cancellation_reason": None,
    "pending_operation": None,
    "pending_amount": None,
    "resume_after": None,
    "captured_at": None,
}


# ``created_by`` of a payment a guest (no account, a cart token) started.
GUEST = "guest"


def _new_payment(
    ctx: ServiceContext,
    payment_id: str,
    principal: Principal | None,
    data: PaymentCreate,
    order: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": payment_id,
        "order_id": data.order_id,
        "live_order_id": data.order_id,
        "customer_id": order.get("customer_id"),
        "created_by": principal.subject if principal is not None else GUEST,
        "status": PaymentStatus.REQUIRES_PAYMENT_METHOD.value,
        "capture_method": data.capture_method.value,
        "amount": int(order["total"]),
        "currency": str(order["currency"]),
        "amount_capturable": 0,
        "captured_amount": 0,
        "refunded_amount": 0,
        "fee": 0,
        "provider": ctx.settings.payment_provider,
        "attempt": 0,
        "order_snapshot": _snapshot(order),
        "buyer_encrypted": _seal(
            ctx, {k: order.get(k) for k in PERSONAL_FIELDS if order.get(k)}, "payments", payment_id
        ),
        "created_at": now,
        "updated_at": now,
    }


async def confirm_payment(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    payment_id: str,
    payment_method: PaymentMethodInput | None,
    cart_token: str | None = None,
) -> Payment:
    """Charge (or authorize) with a payment method, or finish a required customer action."""
    _check_caller(principal, cart_token, "payments:write_own", "payments:write_all")
    return await _confirm(ctx, principal, cart_token, payment_id, payment_method, "payment_method")


async def _confirm(
    ctx: ServiceContext,
    principal: Principal | None,
    cart_token: str | None,
    payment_id: str,
    method: PaymentMethodInput | None,
    field: str,
) -> Payment:
    async with ctx.db.driver_read() as tx:
        row = await _load(tx, payment_id)
    await _ensure_payer(
        ctx, principal, cart_token, row, own="payments:write_own", bypass="payments:write_all"
    )
    previous = PaymentStatus(row["status"])
    if previous not in domain.CONFIRMABLE:
        raise IllegalTransition(
            f"A payment in status {previous.value!r} cannot be confirmed.",
            status_now=previous.value,
        )
    provider = provider_for(ctx, row["provider"])
    completing_action = previous is PaymentStatus.REQUIRES_ACTION and method is None
    if completing_action:
        claim = _claim_values(row["card"], attempt=int(row["attempt"]), operation="action")
    else:
        if method is None:
            raise field_error(field, "a payment method is needed to confirm", code="missing")
        card = await _tokenize(provider, method, field)
        claim = _claim_values(card, attempt=int(row["attempt"]) + 1, operation="authorize")
    async with ctx.db.driver_write() as tx:
        if await _update_payment(tx, payment_id, claim, expected=previous) != 1:
            raise IllegalTransition("The payment changed while confirming; read it again.")
    # The guarded update changed only what ``claim`` says, on the row read above.
    return await _finish(ctx, {**row, **claim}, previous)


def _claim_values(card: dict[str, Any] | None, *, attempt: int, operation: str) -> dict[str, Any]:
    """Column values that claim a payment for a provider call (``_finish`` makes it)."""
    return {
        "status": PaymentStatus.PROCESSING.value,
        "attempt": attempt,
        "card": card,
        "failure_code": None,
        "failure_message": None,
        "next_action": None,
        **_pending(operation),
    }


def _pending(operation: str | None, amount: int | None = None) -> dict[str, Any]:
    """Column values for a claim (or, with ``None``, for its release)."""
    now = _now()
    return {
        "pending_operation": operation,
        "pending_amount": amount,
        "resume_after": now + RESUME_AFTER if operation else None,
        "updated_at": now,
    }


async def _perform(ctx: ServiceContext, row: Mapping[str, Any]) -> ProviderOutcome:
    """Make the provider call a claimed payment is waiting for, with its idempotency key.

    The key depends only on the payment's row, so calling this again for the same claim, after
    a crash or a lost answer, repeats nothing at the provider.
    """
    provider = provider_for(ctx, row["provider"])
    operation = row["pending_operation"]
    key = f"{row['id']}:attempt:{row['attempt']}"
    if operation == "authorize":
        return await provider.authorize(
            amount=int(row["amount"]),
            currency=str(row["currency"]),
            token=str(row["card"]["token"]),
            capture=row["capture_method"] == CaptureMethod.AUTOMATIC.value,
            idempotency_key=key,
            description=f"Order {row['order_snapshot'].get('number') or row['order_id']}",
        )
    if operation == "action":
        return await provider.confirm(str(row["provider_ref"]), idempotency_key=key + ":action")
    if operation == "capture":
        return await provider.capture(
            str(row["provider_ref"]),
            int(row["pending_amount"]),
            idempotency_key=f"{row['id']}:capture",
        )
    if operation == "void":
        if row["provider_ref"]:
            await provider.void(str(row["provider_ref"]), idempotency_key=f"{row['id']}:void")
        return ProviderOutcome("canceled", str(row["provider_ref"] or ""))
    raise ValueError(f"no provider operation {operation!r} to perform")


async def _finish(ctx: ServiceContext, row: Mapping[str, Any], previous: PaymentStatus) -> Payment:
    """Perform a claimed payment's provider call and record its answer; undo the claim when
    the provider gives none."""
    try:
        outcome = await _perform(ctx, row)
    except BaseException:
        await _restore(ctx, str(row["id"]), previous, attempt=_attempt_before(row, previous))
        raise
    async with ctx.db.driver_write() as tx:
        recorded = await _record_outcome(ctx, tx, str(row["id"]), outcome)
    return _payment(recorded)


def _attempt_before(row: Mapping[str, Any], previous: PaymentStatus) -> int:
    if row["pending_operation"] == "authorize":
        return int(row["attempt"]) - 1
    return int(row["attempt"])


async def _tokenize(
    provider: PaymentProvider, method: PaymentMethodInput, field: str
) -> dict[str, Any]:
    """The card to keep for ``method``: a new card tokenized, or a token the provider already
    knows; an unknown token is refused here, before any payment is written for it."""
    if method.card is None:
        assert method.token is not None
        token = await provider.payment_method(method.token)
    else:
        card = method.card
        errors = domain.card_errors(
            card.number,
            card.exp_month,
            card.exp_year,
            card.cvc,
            today=_now().date(),
            prefix=f"{field}.card.",
        )
        if errors:
            raise Unprocessable(
                "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
            )
        number = card.number.replace(" ", "").replace("-", "")
        token = await provider.tokenize(
            CardDetails(number, card.exp_month, card.exp_year, card.cvc)
        )
    return {
        "token": token.token,
        "brand": token.brand,
        "last4": token.last4,
        "exp_month": token.exp_month,
        "exp_year": token.exp_year,
    }


async def _restore(
    ctx: ServiceContext, payment_id: str, previous: PaymentStatus, *, attempt: int | None = None
) -> None:
    """Undo a claim after a provider call that gave no answer."""
    # A payment is restored to a status it left, never to canceled: it has no cancellation.
    values: dict[str, Any] = {
        "status": previous.value,
        "cancellation_reason": None,
        **_pending(None),
    }
    if attempt is not None:
        values["attempt"] = attempt
    async with ctx.db.transaction() as session:
        await session.execute(
            update(payments)
            .where(payments.c.id == payment_id, payments.c.status == PaymentStatus.PROCESSING.value)
            .values(**values)
        )


async def _record_outcome(
    ctx: ServiceContext, tx: DriverTransaction, payment_id: str, outcome: ProviderOutcome
) -> dict[str, Any]:
    """Record a provider's answer for a claimed payment; the payment as it now is."""
    row = await _load(tx, payment_id)
    now = _now()
    target = PaymentStatus(outcome.status)
    domain.ensure_transition(PaymentStatus(row["status"]), target)
    values: dict[str, Any] = {"status": target.value, **_pending(None)}
    if outcome.ref:
        values["provider_ref"] = outcome.ref
    if target is PaymentStatus.FAILED:
        values.update(failure_code=outcome.decline_code, failure_message=outcome.message)
        await ctx.outbox.add(
            tx,
            events.PAYMENT_FAILED,
            {
                "payment_id": payment_id,
                "order_id": row["order_id"],
                "reason": outcome.message or "declined",
                "decline_code": outcome.decline_code,
                "occurred_at": now.isoformat(),
            },
        )
    elif target is PaymentStatus.REQUIRES_ACTION:
        values["next_action"] = outcome.next_action
    elif target is PaymentStatus.REQUIRES_CAPTURE:
        values["amount_capturable"] = int(row["amount"])
    elif target is PaymentStatus.SUCCEEDED:
        values.update(
            captured_amount=outcome.captured,
            amount_capturable=0,
            fee=outcome.fee,
            captured_at=now,
        )
    elif target is PaymentStatus.CANCELED:
        # A canceled payment asks nothing more of the customer.
        values.update(amount_capturable=0, live_order_id=None, next_action=None)
    await _update_payment(tx, payment_id, values)
    recorded = {**row, **values}
    if target is PaymentStatus.SUCCEEDED:
        await _record_capture(ctx, tx, recorded, outcome)
    return recorded


async def _record_capture(
    ctx: ServiceContext, tx: DriverTransaction, row: Mapping[str, Any], outcome: ProviderOutcome
) -> None:
    """Journal, invoice and PaymentSucceeded for a capture, in the capture's transaction."""
    await _post(
        tx,
        domain.capture_postings(outcome.captured, outcome.fee),
        kind="capture",
        payment=row,
        refund_id=None,
        provider_ref=outcome.transaction_ref,
    )
    await ctx.outbox.add(
        tx,
        events.PAYMENT_SUCCEEDED,
        {
            "payment_id": row["id"],
            "order_id": row["order_id"],
            "amount": int(row["amount"]),
            "currency": row["currency"],
            "captured_amount": outcome.captured,
            "occurred_at": (row.get("captured_at") or _now()).isoformat(),
        },
    )
    await _issue_invoice(ctx, tx, row, outcome.captured)


async def _post(
    tx: DriverTransaction,
    postings: Sequence[Posting],
    *,
    kind: str,
    payment: Mapping[str, Any],
    refund_id: str | None,
    provider_ref: str | None,
) -> None:
    if not domain.is_balanced(postings):
        raise ValueError("an unbalanced journal transaction")
    transaction_id = new_id()
    now = _now()
    await tx.insert(
        journal,
        [
            {
                "transaction_id": transaction_id,
                "kind": kind,
                "payment_id": payment["id"],
                "refund_id": refund_id,
                "provider": payment["provider"],
                "provider_ref": provider_ref,
                "account": p.account.value,
                "debit": p.debit,
                "credit": p.credit,
                "currency": payment["currency"],
                "created_at": now,
            }
            for p in postings
        ],
    )


# --- capture and void ---------------------------------------------------------------------------


async def capture_payment(
    ctx: ServiceContext,
    *,
    principal: Principal,
    payment_id: str,
    amount: int | None,
    at: datetime | None = None,
) -> Payment:
    """Capture all or part of an authorization; the rest is released."""
    with _recorded_at(at):
        ensure(principal, "payments:write_all")
        async with ctx.db.driver_read() as tx:
            row = await _load(tx, payment_id)
        if row["status"] != PaymentStatus.REQUIRES_CAPTURE.value:
            raise IllegalTransition(
                f"Only an authorized payment can be captured; this one is {row['status']}.",
                status_now=row["status"],
            )
        to_capture = int(row["amount_capturable"]) if amount is None else amount
        domain.check_capture(int(row["amount_capturable"]), to_capture)
        claimed = await _claim(
            ctx, payment_id, PaymentStatus.REQUIRES_CAPTURE, "capture", to_capture
        )
        return await _finish(ctx, claimed, PaymentStatus.REQUIRES_CAPTURE)


async def _claim(
    ctx: ServiceContext,
    payment_id: str,
    previous: PaymentStatus,
    operation: str,
    amount: int | None = None,
    *,
    cancellation_reason: str | None = None,
) -> dict[str, Any]:
    """Move a payment from ``previous`` to processing for ``operation``, or raise 409."""
    claim = {"status": PaymentStatus.PROCESSING.value, **_pending(operation, amount)}
    if cancellation_reason is not None:
        claim["cancellation_reason"] = cancellation_reason
    async with ctx.db.driver_write() as tx:
        if await _update_payment(tx, payment_id, claim, expected=previous) != 1:
            raise IllegalTransition("The payment changed meanwhile; read it again.")
        return await _load(tx, payment_id)


async def cancel_payment(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    payment_id: str,
    reason: str | None = None,
    cart_token: str | None = None,
) -> Payment:
    """Cancel a payment that has taken no money; an authorization is voided at the provider.
    ``reason`` is kept on the payment as its ``cancellation_reason``."""
    _check_caller(principal, cart_token, "payments:write_own", "payments:write_all")
    async with ctx.db.driver_read() as tx:
        row = await _load(tx, payment_id)
    await _ensure_payer(
        ctx, principal, cart_token, row, own="payments:write_own", bypass="payments:write_all"
    )
    previous = PaymentStatus(row["status"])
    domain.ensure_transition(previous, PaymentStatus.CANCELED)
    claimed = await _claim(ctx, payment_id, previous, "void", cancellation_reason=reason)
    return await _finish(ctx, claimed, previous)


async def resume_interrupted_payments(ctx: ServiceContext) -> int:
    """Finish provider calls whose answer was never recorded (the process stopped, or an order
    was cancelled under an authorization); returns how many payments were settled."""
    async with ctx.db.read() as session:
        due = [
            dict(r)
            for r in (
                await session.execute(
                    select(payments)
                    .where(
                        payments.c.status == PaymentStatus.PROCESSING.value,
                        payments.c.resume_after <= _now(),
                    )
                    .order_by(payments.c.resume_after)
                    .limit(100)
                )
            ).mappings()
        ]
    settled = 0
    for row in due:
        try:
            outcome = await _perform(ctx, row)
            async with ctx.db.driver_write() as tx:
                current = await _load(tx, str(row["id"]))
                if current["status"] != PaymentStatus.PROCESSING.value:
                    continue
                await _record_outcome(ctx, tx, str(row["id"]), outcome)
            settled += 1
        except Exception as exc:
            log.warning("payment_resume_failed", payment_id=row["id"], error=repr(exc))
    return settled


# ``cancellation_reason`` of the payments an order's cancellation cancels, and of those the
# provider reports canceled without saying why.
ORDER_CANCELLED_REASON = "The order was cancelled."
CANCELED_AT_PROVIDER_REASON = "Canceled at the provider."


async def cancel_payments_of_cancelled_order(
    ctx: ServiceContext, session: AsyncSession, order_id: str
) -> None:
    """An order was cancelled: payments that took nothing are canceled, authorizations are
    queued for voiding at the provider (by ``resume_interrupted_payments``)."""
    now = _now()
    await session.execute(
        update(payments)
        .where(
            payments.c.order_id == order_id,
            payments.c.status.in_(
                [PaymentStatus.REQUIRES_PAYMENT_METHOD.value, PaymentStatus.FAILED.value]
            ),
        )
        .values(
            status=PaymentStatus.CANCELED.value,
            cancellation_reason=ORDER_CANCELLED_REASON,
            live_order_id=None,
            updated_at=now,
        )
    )
    voiding = await session.execute(
        update(payments)
        .where(
            payments.c.order_id == order_id,
            payments.c.status.in_(
                [PaymentStatus.REQUIRES_CAPTURE.value, PaymentStatus.REQUIRES_ACTION.value]
            ),
        )
        .values(
            status=PaymentStatus.PROCESSING.value,
            cancellation_reason=ORDER_CANCELLED_REASON,
            pending_operation="void",
            pending_amount=None,
            resume_after=now,
            updated_at=now,
        )
    )
    if getattr(voiding, "rowcount", 0):
        # The provider is asked to void them as soon as this transaction commits, not at the
        # job's next run; the job stays the fallback should that call fail.
        statements(session).after_commit(lambda: _soon(resume_interrupted_payments(ctx)))


# --- refunds ------------------------------------------------------------------------------------


async def create_refund(
    ctx: ServiceContext,
    *,
    principal: Principal,
    payment_id: str,
    data: RefundCreate,
    at: datetime | None = None,
) -> Refund:
    """Refund an amount, some lines, or all that is left; never more than was captured."""
    with _recorded_at(at):
        ensure(principal, "payments:refund")
        if data.amount is not None and data.lines is not None:
            raise field_error("amount", "give an amount or lines, not both", "amount_and_lines")
        async with ctx.db.driver_read() as tx:
            row = await _load(tx, payment_id)
        if row["status"] != PaymentStatus.SUCCEEDED.value:
            raise IllegalTransition(
                f"Only a captured payment can be refunded; this one is {row['status']}.",
                status_now=row["status"],
            )
        order = row["order_snapshot"]
        wanted = _refund_lines(order, data, order_id=str(row["order_id"]))
        left = domain.refundable(int(row["captured_amount"]), int(row["refunded_amount"]))
        if data.restock and not wanted and data.amount is not None and data.amount < left:
            raise field_error(
                "restock",
                "a refund of part of the amount cannot tell which units come back; "
                "give lines to restock, or refund all that is left",
                "restock_needs_lines",
            )
        amount = data.amount if data.amount is not None else left
        if not wanted and amount <= 0:
            raise domain.RefundExceedsCaptured("Nothing is left to refund.", refundable=0)
        refund_id = new_id()
        now = _now()
        lines: list[dict[str, Any]] = []
        rest = not wanted and amount == left
        async with ctx.db.driver_write() as tx:
            locked: dict[str, Any] = row
            if wanted or rest:
                # Units are priced from what earlier line refunds took, so line refunds of one
                # payment are counted one after the other.
                found = await tx.row(_PAYMENT_LOCKED, payment_id=payment_id)
                assert found is not None  # payments are never deleted
                locked = found
            if wanted:
                lines = await _priced_refund_lines(tx, locked, wanted)
                amount = sum(line["amount"] for line in lines)
            elif rest:
                lines = await _rest_lines(tx, locked, amount)
            taken = await _take_refund(
                tx,
                row,
                refund_id,
                amount,
                reason=data.reason,
                restock=data.restock,
                lines=lines,
                created_by=principal.actor,
                now=now,
            )
            if not taken:
                current = await _load(tx, payment_id)
                domain.check_refund(
                    int(current["captured_amount"]), int(current["refunded_amount"]), amount
                )
                raise IllegalTransition("The payment changed meanwhile; read it again.")
        async with ctx.db.read() as session:
            pending = await _refund_row(session, refund_id)
        await _settle_refund(ctx, pending, row, on_error="raise")
        return await _refund(ctx, refund_id)


# A refund of a payment its order refused (it succeeded after the order was cancelled): made
# by payments itself, settled by the resume job at once rather than after RESUME_AFTER, and not
# a refund of the order (orders leaves the order's totals alone).
REFUSED_PAYMENT_REFUNDER = "payments"
REFUSED_PAYMENT_REASON = "The order was cancelled before this payment completed."


async def refund_refused_payment(
    ctx: ServiceContext, tx: DriverTransaction, payment_id: str
) -> None:
    """Take a refund of all that is left of a payment its order refused, in the consumer's
    transaction; the ``resume-interrupted-payments`` job asks the provider for it."""
    row = await tx.row(_PAYMENT_LOCKED, payment_id=payment_id)
    if row is None or row["status"] != PaymentStatus.SUCCEEDED.value:
        log.warning("refused_payment_not_refundable", payment_id=payment_id)
        return
    left = domain.refundable(int(row["captured_amount"]), int(row["refunded_amount"]))
    if left <= 0:
        return
    taken = await _take_refund(
        tx,
        row,
        new_id(),
        left,
        reason=REFUSED_PAYMENT_REASON,
        restock=False,
        lines=[],
        created_by=REFUSED_PAYMENT_REFUNDER,
        now=_now(),
    )
    if taken:
        tx.after_commit(lambda: _soon(resume_pending_refunds(ctx)))


async def _take_refund(
    tx: DriverTransaction,
    payment: Mapping[str, Any],
    refund_id: str,
    amount: int,
    *,
    reason: str,
    restock: bool,
    lines: list[dict[str, Any]],
    created_by: str,
    now: datetime,
) -> bool:
    """Take ``amount`` off what is left of a payment and write the pending refund for it; False
    (nothing written) when less than that is left. The guard is the limit: concurrent refunds
    serialize on the payment's row and the sum of refunds can never pass the captured amount,
    whatever the interleaving."""
    if await tx.execute(_TAKE_REFUND, payment_id=payment["id"], amount=amount, at=now) != 1:
        return False
    await tx.insert(
        refunds,
        {
            "id": refund_id,
            "payment_id": payment["id"],
            "order_id": payment["order_id"],
            "status": "pending",
            "amount": amount,
            "currency": payment["currency"],
            "reason": reason,
            "restock": restock,
            "lines": lines,
            "created_by": created_by,
            "created_at": now,
        },
    )
    return True


# Tasks started by ``_soon``, kept until done (the loop keeps only weak references).
_background: set[asyncio.Task[Any]] = set()


def _soon(work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` on the loop once the caller is done; what it raises is logged."""

    async def _logged() -> None:
        try:
            await work
        except Exception as exc:
            log.warning("payments_background_work_failed", error=repr(exc))

    task = asyncio.get_running_loop().create_task(_logged())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _refund_row(session: AsyncSession, refund_id: str) -> dict[str, Any]:
    row = (await session.execute(select(refunds).where(refunds.c.id == refund_id))).mappings().one()
    return dict(row)


async def _settle_refund(
    ctx: ServiceContext,
    refund: Mapping[str, Any],
    payment: Mapping[str, Any],
    *,
    on_error: str,
) -> None:
    """Ask the provider for a pending refund (once per refund, by its idempotency key) and
    record the answer: journal, credit note and PaymentRefunded, or the amount given back."""
    refund_id, amount = str(refund["id"]), int(refund["amount"])
    try:
        result = await provider_for(ctx, payment["provider"]).refund(
            str(payment["provider_ref"]), amount, idempotency_key=f"{refund_id}:refund"
        )
    except BaseException as exc:
        if on_error == "raise":
            await _fail_refund(ctx, refund_id, str(payment["id"]), amount, str(exc)[:255])
        raise
    if result.status == "failed":
        await _fail_refund(ctx, refund_id, str(payment["id"]), amount, result.message or "failed")
        return
    lines: list[dict[str, Any]] = list(refund["lines"] or [])
    async with ctx.db.driver_write() as tx:
        # Settles of one payment's refunds take turns (the payment's row lock, as claims do),
        # so the sum of those settled below sees every other that committed.
        current = await tx.row(_PAYMENT_LOCKED, payment_id=str(payment["id"]))
        if current is None:
            raise NotFound(PAYMENT_NOT_FOUND)
        restock_lines: list[dict[str, Any]] = []
        if refund["restock"]:
            restock_lines = (
                [{"sku": line["sku"], "quantity": line["quantity"]} for line in lines]
                if lines
                else await _units_left(tx, payment, refund_id)
            )
        settled = await tx.execute(
            _SETTLE_REFUND,
            refund_id=refund_id,
            provider_ref=result.ref,
            completed_at=_now(),
            restock_lines=restock_lines,
        )
        if settled != 1:
            return
        await _post(
            tx,
            domain.refund_postings(amount),
            kind="refund",
            payment=current,
            refund_id=refund_id,
            provider_ref=result.transaction_ref,
        )
        # Not ``refunded_amount``, which counts refunds other requests have claimed and not
        # settled: the refund that settles last says the payment is all given back.
        settled_total = await tx.scalar(_SETTLED_REFUNDS_TOTAL, payment_id=current["id"])
        fully = int(settled_total or 0) >= int(current["captured_amount"])
        await ctx.outbox.add(
            tx,
            events.PAYMENT_REFUNDED,
            {
                "payment_id": current["id"],
                "order_id": current["order_id"],
                "refund_id": refund_id,
                "amount": amount,
                "currency": current["currency"],
                "lines": lines,
                "restock": bool(refund["restock"]),
                "restock_lines": restock_lines,
                "reason": refund["reason"],
                "fully_refunded": fully,
                # False for a payment the order refused: not a refund of the order.
                "order_refund": refund["created_by"] != REFUSED_PAYMENT_REFUNDER,
                "occurred_at": _now().isoformat(),
            },
        )
        await _issue_credit_note(ctx, tx, current, refund_id, amount, lines)


def _units_by_line(earlier_refunds: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The units refunds took back by line, by order line id."""
    taken: dict[str, int] = {}
    for earlier_refund in earlier_refunds:
        for line in earlier_refund["lines"] or []:
            line_id = str(line["line_id"])
            taken[line_id] = taken.get(line_id, 0) + int(line["quantity"])
    return taken


async def _units_left(
    tx: DriverTransaction, payment: Mapping[str, Any], refund_id: str
) -> list[dict[str, Any]]:
    """Each order line's units no other refund of the payment has taken back (by lines): what
    a refund of everything left with ``restock`` puts back in stock."""
    taken = _units_by_line(
        await tx.rows(_OTHER_REFUNDED_LINES, payment_id=payment["id"], refund_id=refund_id)
    )
    out = []
    for line in payment["order_snapshot"].get("lines") or []:
        left = int(line["quantity"]) - taken.get(str(line.get("line_id")), 0)
        if left > 0 and line.get("sku"):
            out.append({"sku": str(line["sku"]), "quantity": left})
    return out


async def resume_pending_refunds(ctx: ServiceContext) -> int:
    """Settle refunds whose provider answer was never recorded; returns how many were."""
    cutoff = _now() - RESUME_AFTER
    async with ctx.db.read() as session:
        due = [
            dict(r)
            for r in (
                await session.execute(
                    select(refunds)
                    .where(
                        refunds.c.status == "pending",
                        or_(
                            refunds.c.created_at <= cutoff,
                            refunds.c.created_by == REFUSED_PAYMENT_REFUNDER,
                        ),
                    )
                    .order_by(refunds.c.created_at)
                    .limit(100)
                )
            ).mappings()
        ]
    settled = 0
    for refund in due:
        try:
            async with ctx.db.driver_read() as tx:
                payment = await _load(tx, str(refund["payment_id"]))
            await _settle_refund(ctx, refund, payment, on_error="keep")
            settled += 1
        except Exception as exc:
            log.warning("refund_resume_failed", refund_id=refund["id"], error=repr(exc))
    return settled


def _refund_lines(
    order: Mapping[str, Any], data: RefundCreate, *, order_id: str
) -> list[dict[str, Any]]:
    """The order lines a refund names, each with its units (not priced yet)."""
    if not data.lines:
        return []
    by_id = {str(line.get("line_id")): line for line in order.get("lines") or []}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, wanted in enumerate(data.lines):
        line = by_id.get(wanted.line_id)
        if line is None or wanted.line_id in seen:
            raise field_error(f"lines.{index}.line_id", "is not a line of this order (or twice)")
        seen.add(wanted.line_id)
        # Units beyond the line's (or beyond what earlier refunds left of it) are refused when
        # they are priced, against the line's refunds so far: "only N left to refund".
        if int(line["total"]) <= 0:
            raise _nothing_to_refund(
                index,
                order_id,
                str(line["sku"]),
                "this line was fully discounted: the buyer paid nothing for it, so there is "
                "nothing to refund for it",
                "line_fully_discounted",
                field="line_id",
            )
        out.append(
            {
                "index": index,
                "line_id": wanted.line_id,
                "sku": str(line["sku"]),
                "quantity": wanted.quantity,
            }
        )
    return out


def _nothing_to_refund(
    index: int, order_id: str, sku: str, reason: str, code: str, *, field: str
) -> Unprocessable:
    """A 422 for a refund line worth nothing, saying how its units come back instead."""
    how = (
        f"to take its units back, put them in stock with POST /api/v1/restocks (order_id "
        f"{order_id}, lines [{{sku: {sku}, quantity}}], a reason) and record units that had "
        f"shipped with POST /api/v1/orders/{order_id}/returns"
    )
    return Unprocessable(
        f"Line {index} cannot be refunded: {reason}. No refund was made; {how}.",
        errors=[{"field": f"lines.{index}.{field}", "message": f"{reason}; {how}", "code": code}],
    )


def _captured_line_totals(order: Mapping[str, Any], captured: int) -> dict[str, int]:
    """What the capture took for each order line, by line id: the line's total on the invoice
    (its share of a partial capture, ``_invoiced_lines``)."""
    invoiced = _invoiced_line_splits(order, captured)
    # An order worth nothing has no share per line; nothing was captured for any of them.
    return {
        str(line.get("line_id")): invoiced.get(str(line.get("line_id")), (0, 0))[0]
        for line in order.get("lines") or []
    }


async def _rest_lines(
    tx: DriverTransaction, payment: Mapping[str, Any], amount: int
) -> list[dict[str, Any]]:
    """A refund of all that is left, by the order lines it gives back: every unit no earlier
    refund took back by line, whatever refunds of an amount came before (they took back no
    unit). ``amount`` is split over those units and what was captured beyond the order lines
    (shipping, say) in proportion to what each was worth: with no earlier refund of an amount,
    each unit costs what a refund of it by line would (a unit worth nothing is listed at 0);
    after one, each gives up its share of it. What is left beyond the units names no line."""
    order = payment["order_snapshot"]
    refunded = _units_by_line(await tx.rows(_REFUNDED_LINES, payment_id=payment["id"]))
    captured = _captured_line_totals(order, int(payment["captured_amount"]))
    out: list[dict[str, Any]] = []
    for line in order.get("lines") or []:
        line_id, units = str(line.get("line_id")), int(line["quantity"])
        before = refunded.get(line_id, 0)
        if before >= units or not line.get("sku"):
            continue
        share = captured.get(line_id, 0)
        worth = share - domain.prorated_line_amount(share, units, before)
        out.append(
            {"line_id": line_id, "sku": line["sku"], "quantity": units - before, "amount": worth}
        )
    beyond = max(0, int(payment["captured_amount"]) - sum(captured.values()))
    weights = [line["amount"] for line in out] + [beyond]
    if sum(weights) > amount:
        for line, share in zip(out, domain.proportional_shares(amount, weights), strict=False):
            line["amount"] = share
    return out


async def _priced_refund_lines(
    tx: DriverTransaction,
    payment: Mapping[str, Any],
    wanted: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Refund lines priced from what the capture took for each line, per unit: ``quantity``
    units after the ``r`` earlier refunds took cost ``share(r + quantity) - share(r)``, so a
    line refunded unit by unit adds up to exactly its captured total. Refuses units beyond what
    is left of a line, and units worth nothing."""
    order = payment["order_snapshot"]
    refunded = _units_by_line(await tx.rows(_REFUNDED_LINES, payment_id=payment["id"]))
    ordered = {str(line["line_id"]): int(line["quantity"]) for line in order.get("lines") or []}
    captured = _captured_line_totals(order, int(payment["captured_amount"]))
    out: list[dict[str, Any]] = []
    for line in wanted:
        index, line_id, quantity = line["index"], line["line_id"], int(line["quantity"])
        before, units = refunded.get(line_id, 0), ordered[line_id]
        if before + quantity > units:
            raise field_error(f"lines.{index}.quantity", f"only {units - before} left to refund")
        share = captured.get(line_id, 0)
        amount = domain.prorated_line_amount(
            share, units, before + quantity
        ) - domain.prorated_line_amount(share, units, before)
        if amount <= 0:
            raise _nothing_to_refund(
                index,
                str(payment["order_id"]),
                str(line["sku"]),
                f"the captured amount's share of these {quantity} unit(s) is 0",
                "nothing_captured_for_units",
                field="quantity",
            )
        out.append({"line_id": line_id, "sku": line["sku"], "quantity": quantity, "amount": amount})
    return out


async def _fail_refund(
    ctx: ServiceContext, refund_id: str, payment_id: str, amount: int, message: str
) -> None:
    async with ctx.db.transaction() as session:
        await session.execute(
            update(refunds)
            .where(refunds.c.id == refund_id, refunds.c.status == "pending")
            .values(status="failed", failure_message=message, completed_at=_now())
        )
        await session.execute(
            update(payments)
            .where(payments.c.id == payment_id)
            .values(refunded_amount=payments.c.refunded_amount - amount, updated_at=_now())
        )


async def _refund(ctx: ServiceContext, refund_id: str) -> Refund:
    async with ctx.db.read() as session:
        row = (
            (await session.execute(select(refunds).where(refunds.c.id == refund_id)))
            .mappings()
            .one()
        )
    return Refund.model_validate(dict(row))


async def list_refunds(ctx: ServiceContext, *, principal: Principal, payment_id: str) -> RefundList:
    """A payment's refunds, oldest first."""
    ensure_any(principal, "payments:read_own", "payments:read_all")
    async with ctx.db.driver_read() as tx:
        row = await _load(tx, payment_id)
        _ensure_reach(principal, row, bypass="payments:read_all")
        rows = await tx.rows(_REFUNDS_OF_PAYMENT, payment_id=payment_id)
    return RefundList(items=[Refund.model_validate(r) for r in rows])


# --- invoices -----------------------------------------------------------------------------------


async def next_document_number(tx: DriverTransaction, series: str, year: int) -> int:
    """Take the next number of a series and year in the caller's transaction.

    The counter row is bumped with one guarded UPDATE, so concurrent issuers queue on the row
    and a rolled-back transaction gives its number back: no gaps, no duplicates.
    """
    value = await tx.scalar(_BUMP_COUNTER, series=series, year=year)
    if value is not None:
        return int(value)
    if await tx.execute(_START_COUNTER[tx.db.is_postgres], series=series, year=year) == 1:
        return 1
    # A concurrent issuer created the row first (and has committed): bump it after all.
    return int(await tx.scalar(_BUMP_COUNTER, series=series, year=year))


def _seller(ctx: ServiceContext) -> dict[str, Any]:
    s = ctx.settings
    return {"name": s.seller_name, "address": s.seller_address, "tax_id": s.seller_tax_id}


# An address's parts in the order they are printed on an invoice, after the name.
_ADDRESS_PARTS = ("company", "line1", "line2", "postal_code", "city", "region", "country")


def _buyer(order: Mapping[str, Any]) -> dict[str, Any]:
    address = order.get("billing_address") or order.get("shipping_address")
    name = address.get("name") if isinstance(address, dict) else None
    text = (
        ", ".join(str(address[k]) for k in _ADDRESS_PARTS if address.get(k)) or None
        if isinstance(address, dict)
        else None
    )
    return {
        "name": name,
        "address": text,
        "email": order.get("email"),
        "customer_id": order.get("customer_id"),
    }


def _order_rate(order: Mapping[str, Any]) -> int | None:
    """The tax rate the order applied to its lines and shipping (None in snapshots taken
    before orders reported it)."""
    rate = order.get("tax_rate_bp")
    return None if rate is None else int(rate)


def _invoice_lines(order: Mapping[str, Any]) -> list[dict[str, Any]]:
    rate = _order_rate(order)
    out = []
    for line in order.get("lines") or []:
        total, tax = int(line["total"]), int(line.get("tax") or 0)
        out.append(
            {
                "sku": line.get("sku"),
                "description": str(line.get("name") or line.get("sku") or "Item"),
                "quantity": int(line["quantity"]),
                "unit_price": int(line["unit_price"]),
                "net": total - tax,
                "tax": tax,
                "total": total,
                "rate_bp": rate,
                "discount": int(line.get("discount") or 0),
            }
        )
    lines_total = sum(line["total"] for line in out)
    lines_tax = sum(line["tax"] for line in out)
    shipping = int(order.get("shipping_total") or 0)
    if shipping:
        if order.get("shipping_tax") is not None:
            shipping_tax = int(order["shipping_tax"])
        else:
            shipping_tax = max(0, int(order.get("tax_total") or 0) - lines_tax)
        # With tax-exclusive prices the order's shipping_total is before tax, and the unit
        # price is shown before tax, like the lines' catalogue prices.
        exclusive = _prices_before_tax(order)
        if exclusive:
            shipping += shipping_tax
        out.append(_extra_line("Shipping", shipping, shipping_tax, rate, unit_before_tax=exclusive))
    discount = int(order.get("discount_total") or 0)
    expected = int(order.get("total") or 0)
    gap = expected - (lines_total + shipping)
    if discount and gap < 0:
        out.append(_extra_line("Discount", gap, 0))
    return out


def _extra_line(
    description: str,
    total: int,
    tax: int,
    rate: int | None = None,
    *,
    unit_before_tax: bool = False,
) -> dict[str, Any]:
    return {
        "sku": None,
        "description": description,
        "quantity": 1,
        "unit_price": total - tax if unit_before_tax else total,
        "net": total - tax,
        "tax": tax,
        "total": total,
        "rate_bp": rate,
    }


def _prices_before_tax(order: Mapping[str, Any]) -> bool:
    """Whether the order's prices excluded tax: its documents' unit prices are then net."""
    return order.get("prices_include_tax") is False


def _by_rate(
    description: str, amount: int, lines: list[dict[str, Any]], *, unit_before_tax: bool
) -> list[dict[str, Any]]:
    """One line per tax rate of ``lines`` for a document worth ``amount`` in all."""
    return [
        _extra_line(
            description,
            part["total"],
            part["tax"],
            part["rate_bp"],
            unit_before_tax=unit_before_tax,
        )
        for part in domain.allocate_by_rate(amount, lines)
    ]


def _is_share(amount: int, total: int) -> bool:
    """Whether a document worth ``amount`` of an order worth ``total`` gives its lines shares
    (a partial capture) rather than the order's own lines."""
    return amount != total and total > 0


def _scaled(
    lines: list[dict[str, Any]], amount: int, total: int, *, unit_before_tax: bool
) -> list[dict[str, Any]]:
    """Lines for a document worth ``amount`` when the order was worth ``total``: each order
    line keeps its SKU, name, quantity, unit price and rate, with its pro-rated share of the
    amount and of its tax."""
    if not _is_share(amount, total):
        return lines
    if sum(int(line["total"]) for line in lines) <= 0:
        return _by_rate(
            "Partial capture of the order", amount, lines, unit_before_tax=unit_before_tax
        )
    # A share of a line is not a number of its units: no discount can be told apart in it.
    return [
        {
            **line,
            "net": part["total"] - part["tax"],
            "tax": part["tax"],
            "total": part["total"],
            "discount": None,
        }
        for line, part in zip(lines, domain.allocate_by_line(amount, lines), strict=True)
    ]


async def _issue_document(
    ctx: ServiceContext,
    tx: DriverTransaction,
    *,
    kind: str,
    series: str,
    payment: Mapping[str, Any],
    lines: list[dict[str, Any]],
    refund_id: str | None,
    related_invoice_id: str | None,
) -> dict[str, Any]:
    now = _now()
    sequence = await next_document_number(tx, series, now.year)
    total = sum(int(line["total"]) for line in lines)
    tax_total = sum(int(line["tax"]) for line in lines)
    order = {**payment["order_snapshot"], **_open(ctx, payment, "payments")}
    document_id = new_id()
    buyer = _buyer(order)
    document = {
        "id": document_id,
        "kind": kind,
        "number": domain.document_number(series, now.year, sequence),
        "series": series,
        "year": now.year,
        "sequence": sequence,
        "payment_id": payment["id"],
        "refund_id": refund_id,
        "order_id": payment["order_id"],
        "customer_id": payment["customer_id"],
        "currency": payment["currency"],
        "seller": _seller(ctx),
        "buyer_encrypted": _seal(ctx, buyer, "invoices", document_id),
        "lines": lines,
        "tax_breakdown": domain.tax_breakdown(lines),
        "subtotal": total - tax_total,
        "tax_total": tax_total,
        "total": total,
        "related_invoice_id": related_invoice_id,
        "issued_at": now,
    }
    await tx.insert(invoices, document)
    event = events.INVOICE_ISSUED if kind == "invoice" else events.CREDIT_NOTE_ISSUED
    await ctx.outbox.add(
        tx,
        event,
        {
            "invoice_id": document["id"],
            "number": document["number"],
            "kind": kind,
            "payment_id": payment["id"],
            "refund_id": refund_id,
            "order_id": payment["order_id"],
            "customer_id": payment["customer_id"],
            "currency": payment["currency"],
            "total": total,
            "tax_total": tax_total,
        },
    )
    return document


def _invoiced_lines(order: Mapping[str, Any], captured: int) -> list[dict[str, Any]]:
    """The invoice's lines for a capture of ``captured``: the order's lines, or for a partial
    capture each one's share of it."""
    return _scaled(
        _invoice_lines(order),
        captured,
        int(order.get("total") or captured),
        unit_before_tax=_prices_before_tax(order),
    )


async def _issue_invoice(
    ctx: ServiceContext, tx: DriverTransaction, payment: Mapping[str, Any], captured: int
) -> None:
    lines = _invoiced_lines(payment["order_snapshot"], captured)
    await _issue_document(
        ctx,
        tx,
        kind="invoice",
        series=INVOICE_SERIES,
        payment=payment,
        lines=lines,
        refund_id=None,
        related_invoice_id=None,
    )


def _invoiced_line_splits(order: Mapping[str, Any], captured: int) -> dict[str, tuple[int, int]]:
    """Each order line's total and tax on the invoice (its share of a partial capture), by line
    id; none when the invoice has no line per order line (an order worth nothing)."""
    order_lines = list(order.get("lines") or [])
    invoiced = _invoiced_lines(order, captured)
    if len(invoiced) < len(order_lines) or any(
        line["sku"] is None for line in invoiced[: len(order_lines)]
    ):
        return {}
    return {
        str(line.get("line_id")): (int(share["total"]), int(share["tax"]))
        for line, share in zip(order_lines, invoiced, strict=False)
    }


async def _credited_line_amounts(
    tx: DriverTransaction, payment: Mapping[str, Any], refund_id: str
) -> dict[str, int]:
    """What the payment's other settled refunds gave back for each order line (their credit
    notes), by line id. The caller (``_settle_refund``) holds the payment's lock, so
    settlements of its refunds read them, and its earlier credit notes, in turn."""
    credited: dict[str, int] = {}
    for earlier in await tx.rows(
        _OTHER_SETTLED_LINES, payment_id=payment["id"], refund_id=refund_id
    ):
        for line in earlier["lines"] or []:
            line_id = str(line["line_id"])
            credited[line_id] = credited.get(line_id, 0) + int(line["amount"])
    return credited


async def _issue_credit_note(
    ctx: ServiceContext,
    tx: DriverTransaction,
    payment: Mapping[str, Any],
    refund_id: str,
    amount: int,
    refund_lines: Sequence[Mapping[str, Any]],
) -> None:
    order = payment["order_snapshot"]
    invoice_id = await tx.scalar(_INVOICE_OF_PAYMENT, payment_id=payment["id"])
    rate = _order_rate(order)
    by_id = {str(line.get("line_id")): line for line in order.get("lines") or []}
    # As on the invoice: a line's share of a partial capture tells no discount apart.
    captured = int(payment["captured_amount"])
    shares = _is_share(captured, int(order.get("total") or captured))
    invoiced = _invoiced_line_splits(order, captured)
    credited = await _credited_line_amounts(tx, payment, refund_id)
    lines: list[dict[str, Any]] = []
    for refunded in refund_lines:
        # A unit given back worth nothing (of a refund of all that was left) is listed at 0.
        line_id = str(refunded["line_id"])
        source = by_id[line_id]
        # The tax of the line's credits so far, and with this one, as contained in the line's
        # invoiced total: credits of every unit add up to the invoice line's net and tax.
        total, tax = invoiced.get(line_id, (int(source["total"]), int(source.get("tax") or 0)))
        before = credited.get(line_id, 0)
        after = before + int(refunded["amount"])
        line_tax = -(domain.split_tax(after, total, tax) - domain.split_tax(before, total, tax))
        lines.append(
            {
                "sku": refunded["sku"],
                "description": f"Refund: {source.get('name') or refunded['sku']}",
                "quantity": int(refunded["quantity"]),
                "unit_price": -int(source["unit_price"]),
                "net": -int(refunded["amount"]) - line_tax,
                "tax": line_tax,
                "total": -int(refunded["amount"]),
                "rate_bp": rate,
                "discount": None
                if shares
                else -domain.prorated_line_amount(
                    int(source.get("discount") or 0),
                    int(source["quantity"]),
                    int(refunded["quantity"]),
                ),
            }
        )
    # What the refund holds beyond its lines (all of it, for a refund of an amount; shipping's
    # share, for a refund of all that was left) names no order line.
    beyond = amount - sum(int(r["amount"]) for r in refund_lines)
    if beyond > 0 or not lines:
        invoice_lines = _invoice_lines(order)
        extras = [line for line in invoice_lines if line["sku"] is None and line["total"] > 0]
        lines += _by_rate(
            "Refund",
            -beyond,
            extras if refund_lines and extras else invoice_lines,
            unit_before_tax=_prices_before_tax(order),
        )
    if invoice_id is not None:
        earlier = await tx.rows(_DOCUMENT_LINES_OF_PAYMENT, payment_id=payment["id"])
        lines = domain.credit_within_invoice(
            lines,
            [line for doc in earlier if doc["kind"] == "invoice" for line in doc["lines"]],
            [line for doc in earlier if doc["kind"] == "credit_note" for line in doc["lines"]],
        )
    await _issue_document(
        ctx,
        tx,
        kind="credit_note",
        series=CREDIT_NOTE_SERIES,
        payment=payment,
        lines=lines,
        refund_id=refund_id,
        related_invoice_id=invoice_id,
    )


def _invoice(ctx: ServiceContext, row: Mapping[str, Any]) -> Invoice:
    return Invoice.model_validate({**row, "buyer": _open(ctx, row, "invoices")})


async def _guest_order_id(ctx: ServiceContext, cart_token: str, order_id: str | None) -> str:
    """The guest order whose invoices the cart token reaches (orders decides, as when the guest
    reads the order); a token that does not reach it gets the answer a missing order gets."""
    if order_id is None:
        raise field_error(
            "order_id", "a guest lists the invoices of their order: give its id", "required"
        )
    order = await _order(ctx, order_id, cart_token=cart_token)
    if order.get("customer_id") is not None:
        raise NotFound(ORDER_NOT_FOUND)
    return order_id


def _signed_in_reader(principal: Principal | None, cart_token: str | None) -> bool:
    """Whether the caller reads invoices as a signed-in customer or staff (not with a guest's
    cart token); with neither, a 401."""
    if principal is not None and not cart_token:
        ensure_any(principal, "invoices:read_own", "invoices:read_all")
        return True
    if not cart_token:
        raise Unauthorized("Sign in, or send the order's cart token in X-Cart-Token.")
    return False


async def list_invoices(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    cart_token: str | None = None,
    order_id: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> InvoicePage:
    """Invoices and credit notes the caller may see, newest first: staff all, a customer their
    own, a guest those of the order their cart token reaches."""
    query = select(invoices)
    if _signed_in_reader(principal, cart_token):
        assert principal is not None
        owner = owner_filter(principal, bypass="invoices:read_all")
        if owner is not None:
            query = query.where(invoices.c.customer_id == owner)
    else:
        assert cart_token is not None
        order_id = await _guest_order_id(ctx, cart_token, order_id)
        query = query.where(invoices.c.customer_id.is_(None))
    if order_id is not None:
        query = query.where(invoices.c.order_id == order_id)
    if kind is not None:
        query = query.where(invoices.c.kind == kind)
    query = _after_cursor(query, invoices.c.issued_at, invoices.c.id, cursor)
    query = query.order_by(invoices.c.issued_at.desc(), invoices.c.id.desc()).limit(limit + 1)
    async with ctx.db.read() as session:
        rows = [dict(r) for r in (await session.execute(query)).mappings()]
    return InvoicePage(
        items=[_invoice(ctx, r) for r in rows[:limit]],
        next_cursor=_cursor_of(rows[limit - 1], "issued_at") if len(rows) > limit else None,
    )


async def get_invoice(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    invoice_id: str,
    cart_token: str | None = None,
) -> Invoice:
    """One invoice or credit note: staff any, a customer their own, a guest one of the order
    their cart token reaches; anyone else gets the answer a missing id gets."""
    signed_in = _signed_in_reader(principal, cart_token)
    async with ctx.db.read() as session:
        row = (
            (await session.execute(select(invoices).where(invoices.c.id == invoice_id)))
            .mappings()
            .one_or_none()
        )
    if row is None:
        raise NotFound(INVOICE_NOT_FOUND)
    if signed_in:
        assert principal is not None
        ensure_owner(
            principal, row["customer_id"], bypass="invoices:read_all", detail=INVOICE_NOT_FOUND
        )
    else:
        assert cart_token is not None
        if row["customer_id"] is not None:
            raise NotFound(INVOICE_NOT_FOUND)
        try:
            await _order(ctx, row["order_id"], cart_token=cart_token)
        except NotFound:
            raise NotFound(INVOICE_NOT_FOUND) from None
    return _invoice(ctx, dict(row))


# --- provider webhooks --------------------------------------------------------------------------


async def receive_provider_event(
    ctx: ServiceContext,
    *,
    provider: str,
    payload: bytes,
    signature: str | None,
    now: int | None = None,
) -> WebhookAck:
    """Verify a provider's signed event, and apply it once (duplicates are acknowledged)."""
    secret = ctx.settings.payment_webhook_secrets.get(provider)
    if secret is None:
        raise NotFound(f"No webhook endpoint for provider {provider!r}.")
    if not signature or not domain.signature_valid(
        secret.get_secret_value(),
        signature,
        payload,
        now=int(time.time()) if now is None else now,
        tolerance=ctx.settings.payment_webhook_tolerance_seconds,
    ):
        raise Unauthorized(
            "The Stripe-Signature header does not sign this payload, or is too old.",
            type="invalid-webhook-signature",
            headers={},
        )
    event_id, event_type, obj = _provider_event(payload)
    latest = await _provider_view(ctx, provider, event_type, obj)
    async with ctx.db.driver_write() as tx:
        fresh = await tx.execute(
            _RECEIVE_PROVIDER_EVENT[ctx.db.is_postgres],
            provider=provider,
            event_id=event_id[:255],
            type=event_type[:100],
            received_at=_now(),
        )
        if fresh != 1:
            return WebhookAck(received=True, duplicate=True, outcome="duplicate")
        outcome = await _apply_provider_event(ctx, tx, provider, event_type, obj, latest)
        await tx.execute(
            _PROVIDER_EVENT_OUTCOME, provider=provider, event_id=event_id, outcome=outcome
        )
    return WebhookAck(received=True, duplicate=False, outcome=outcome)


def _provider_event(payload: bytes) -> tuple[str, str, dict[str, Any]]:
    """The id, type and payment object of a provider's event document (``{}`` for a type the
    platform does not act on); a 422 naming each field at fault when it is not one."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):  # also bytes that are not UTF-8, or nesting too deep
        event = None
    errors = domain.provider_event_errors(event)
    if errors:
        raise Unprocessable(
            "The event is not a provider event document: "
            + "; ".join(f"{e['field']} {e['message']}" for e in errors),
            errors=errors,
        )
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return str(event["id"]), str(event["type"]), obj if isinstance(obj, dict) else {}


async def _provider_view(
    ctx: ServiceContext, provider: str, event_type: str, obj: Mapping[str, Any]
) -> ProviderOutcome | None:
    """The provider's own current view of a payment an event says succeeded: events carry no
    fee or balance transaction, and the journal needs both, and an event may be older than
    what happened since. None when it cannot be had."""
    if event_type != "payment_intent.succeeded" or not obj.get("id"):
        return None
    try:
        outcome = await provider_for(ctx, provider).confirm(
            str(obj["id"]), idempotency_key=f"webhook:{obj['id']}"
        )
    except (ProblemError, ValueError) as exc:
        log.warning("provider_view_unavailable", provider=provider, error=repr(exc))
        return None
    return outcome


async def _apply_provider_event(
    ctx: ServiceContext,
    tx: DriverTransaction,
    provider: str,
    event_type: str,
    obj: dict[str, Any],
    latest: ProviderOutcome | None = None,
) -> str:
    target = domain.PROVIDER_EVENT_TARGETS.get(event_type)
    if target is None:
        return "ignored"
    if latest is not None and latest.status != target.value:
        # The provider, asked now, does not say what the event says: its word wins, and the
        # event changes nothing (a later event will bring what did happen).
        return f"ignored_provider_says_{latest.status}"
    row = await tx.row(_PAYMENT_BY_PROVIDER_REF, provider=provider, ref=str(obj.get("id")))
    if row is None:
        return "unknown_payment"
    current = PaymentStatus(row["status"])
    if current is target:
        return "already_applied"
    if not domain.can_transition(current, target) and not (
        current is PaymentStatus.REQUIRES_ACTION and target is PaymentStatus.SUCCEEDED
    ):
        return f"ignored_in_{current.value}"
    if current is not PaymentStatus.PROCESSING:
        # The provider finished what the customer started elsewhere; pass through processing.
        await _update_payment(tx, str(row["id"]), {"status": PaymentStatus.PROCESSING.value})
    error = obj.get("last_payment_error") or {}
    charge = obj.get("latest_charge") if isinstance(obj.get("latest_charge"), dict) else {}
    txn = charge.get("balance_transaction") if isinstance(charge, dict) else None
    outcome = ProviderOutcome(
        status=target.value,  # type: ignore[arg-type]
        ref=str(obj["id"]),
        captured=int(obj.get("amount_received") or 0),
        fee=int(txn.get("fee") or 0) if isinstance(txn, dict) else 0,
        transaction_ref=txn.get("id") if isinstance(txn, dict) else None,
        # Cut to the columns that keep them: a provider's text must not fail the recording.
        decline_code=(error.get("decline_code") or error.get("code") or "")[:64] or None,
        message=(error.get("message") or "")[:255] or None,
    )
    recorded = await _record_outcome(ctx, tx, str(row["id"]), latest or outcome)
    if target is PaymentStatus.CANCELED and not recorded["cancellation_reason"]:
        reason = obj.get("cancellation_reason")
        await _update_payment(
            tx,
            str(row["id"]),
            {"cancellation_reason": str(reason)[:255] if reason else CANCELED_AT_PROVIDER_REASON},
        )
    return f"applied_{target.value}"


# --- ledger and reconciliation ------------------------------------------------------------------


async def journal_totals(ctx: ServiceContext) -> dict[str, dict[str, int]]:
    """Per currency, each account's debit-minus-credit balance (operations and tests)."""
    query = select(
        journal.c.currency,
        journal.c.account,
        func.sum(journal.c.debit - journal.c.credit),
    ).group_by(journal.c.currency, journal.c.account)
    async with ctx.db.read() as session:
        rows = (await session.execute(query)).all()
    out: dict[str, dict[str, int]] = {}
    for currency, account, balance in rows:
        out.setdefault(str(currency), {})[str(account)] = int(balance or 0)
    return out


async def reconcile(ctx: ServiceContext, *, provider: str | None = None) -> ReconciliationReport:
    """Compare the journal's captures and refunds with the provider's own balance movements."""
    name = provider or ctx.settings.payment_provider
    theirs = {t.ref: t for t in await provider_for(ctx, name).transactions()}
    query = select(
        journal.c.transaction_id,
        journal.c.kind,
        journal.c.provider_ref,
        journal.c.account,
        journal.c.debit,
        journal.c.credit,
    ).where(journal.c.provider == name)
    async with ctx.db.read() as session:
        entries = (await session.execute(query)).all()
    ours: dict[str, dict[str, Any]] = {}
    debits = credits = 0
    for transaction_id, kind, ref, account, debit, credit in entries:
        debits += int(debit)
        credits += int(credit)
        key = ref or f"unreferenced:{transaction_id}"
        item = ours.setdefault(key, {"kind": kind, "amount": 0, "fee": 0})
        if kind == "capture" and account == Account.REVENUE.value:
            item["amount"] += int(credit)
        elif kind == "capture" and account == Account.FEES.value:
            item["fee"] += int(debit)
        elif kind == "refund" and account == Account.REFUNDS.value:
            item["amount"] -= int(debit)
    report = ReconciliationReport(
        provider=name,
        journal_balanced=debits == credits,
        matched=0,
        mismatched=[],
        missing_at_provider=[],
        missing_in_journal=[],
    )
    for ref, item in ours.items():
        other = theirs.get(ref)
        entry = ReconciliationItem(
            ref=ref,
            kind=item["kind"],
            journal_amount=item["amount"],
            provider_amount=other.amount if other else None,
            journal_fee=item["fee"],
            provider_fee=other.fee if other else None,
        )
        if other is None:
            report.missing_at_provider.append(entry)
        elif other.amount != item["amount"] or other.fee != item["fee"]:
            report.mismatched.append(entry)
        else:
            report.matched += 1
    for ref, other in theirs.items():
        if ref not in ours:
            report.missing_in_journal.append(
                ReconciliationItem(
                    ref=ref,
                    kind=other.kind,
                    journal_amount=None,
                    provider_amount=other.amount,
                    journal_fee=None,
                    provider_fee=other.fee,
                )
            )
    return report


# --- reports ------------------------------------------------------------------------------------


def _range(start: date | None, end: date | None) -> tuple[datetime | None, datetime | None]:
    """The instants ``[low, high)`` of the days ``start`` to ``end`` (inclusive), in UTC; no
    bound where a day is not given, and none after ``end`` when it is the calendar's last day."""
    low = datetime.combine(start, dtime.min, UTC) if start else None
    high = (
        datetime.combine(end + timedelta(days=1), dtime.min, UTC)
        if end and end < date.max
        else None
    )
    return low, high


def _within(column: Any, low: datetime | None, high: datetime | None) -> list[Any]:
    bounds = []
    if low is not None:
        bounds.append(column >= low)
    if high is not None:
        bounds.append(column < high)
    return bounds


async def sales_report(
    ctx: ServiceContext,
    *,
    principal: Principal,
    group_by: Period = Period.DAY,
    currency: str | None = None,
    start: date | None = None,
    end: date | None = None,
    top: int = 10,
) -> SalesReport:
    """Revenue, refunds, net, orders and average order value per period and currency, and the
    top products, over captures and refunds from ``start`` to ``end`` (inclusive days)."""
    ensure(principal, "payments:reports")
    refuse_inverted_range("from", start, "to", end)
    low, high = _range(start, end)
    captured = select(
        payments.c.captured_at, payments.c.currency, payments.c.captured_amount
    ).where(
        payments.c.captured_at.is_not(None),
        *_within(payments.c.captured_at, low, high),
        payments.c.captured_amount > 0,
    )
    refunded = select(refunds.c.completed_at, refunds.c.currency, refunds.c.amount).where(
        refunds.c.status == "succeeded",
        refunds.c.completed_at.is_not(None),
        *_within(refunds.c.completed_at, low, high),
    )
    sold = select(invoices.c.kind, invoices.c.currency, invoices.c.lines).where(
        invoices.c.kind.in_(("invoice", "credit_note")),
        *_within(invoices.c.issued_at, low, high),
    )
    if currency:
        captured = captured.where(payments.c.currency == currency)
        refunded = refunded.where(refunds.c.currency == currency)
        sold = sold.where(invoices.c.currency == currency)
    async with ctx.db.read() as session:
        captures = (await session.execute(captured)).all()
        refund_rows = (await session.execute(refunded)).all()
        sold_rows = (await session.execute(sold)).all()
    buckets: dict[tuple[date, str], list[int]] = {}
    for at, cur, amount in captures:
        bucket = buckets.setdefault((domain.period_start(at, group_by), cur), [0, 0, 0])
        bucket[0] += int(amount)
        bucket[2] += 1
    for at, cur, amount in refund_rows:
        bucket = buckets.setdefault((domain.period_start(at, group_by), cur), [0, 0, 0])
        bucket[1] += int(amount)
    rows = [
        SalesRow(
            period=period,
            currency=cur,
            revenue=v[0],
            refunds=v[1],
            net=v[0] - v[1],
            orders=v[2],
            average_order_value=domain.average(v[0], v[2]),
        )
        for (period, cur), v in sorted(buckets.items())
    ]
    return SalesReport(group_by=group_by, rows=rows, top_products=_top_products(sold_rows, top))


def _top_products(documents: Sequence[Any], top: int) -> list[TopProduct]:
    """Products ranked by net sales: what their invoice lines sold, less what credit notes of
    refunds by line gave back for them. A refund of an amount, not of lines, names no product and
    is left out here (it is in the period rows' refunds)."""
    products: dict[tuple[str, str], TopProduct] = {}
    for kind, cur, lines in documents:
        for line in lines or []:
            if not line.get("sku"):
                continue
            key = (str(line["sku"]), cur)
            item = products.get(key)
            if item is None:
                name = str(line["description"])
                if kind != "invoice":
                    name = name.removeprefix("Refund: ")
                item = products[key] = TopProduct(
                    sku=key[0], name=name, currency=cur, quantity=0, revenue=0
                )
            elif kind == "invoice":
                item.name = str(line["description"])
            if kind == "invoice":
                item.quantity += int(line["quantity"])
                item.revenue += int(line["total"])
            else:
                item.refunded_quantity += int(line["quantity"])
                item.refunds += -int(line["total"])
            item.net = item.revenue - item.refunds
    ranked = sorted(products.values(), key=lambda p: (-p.net, -p.revenue, p.sku, p.currency))
    return ranked[:top]


def sales_report_csv(report: SalesReport) -> str:
    """The report's rows as CSV (one header line, amounts in minor units); a cell a spreadsheet
    would run as a formula is written with a leading quote (``platform/csvsafe.py``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["period", "currency", "revenue", "refunds", "net", "orders", "average_order_value"]
    )
    for row in report.rows:
        writer.writerow(
            escape_row(
                [
                    row.period.isoformat(),
                    row.currency,
                    row.revenue,
                    row.refunds,
                    row.net,
                    row.orders,
                    row.average_order_value,
                ]
            )
        )
    return out.getvalue()


def top_products_csv(report: SalesReport) -> str:
    """The report's top products as CSV, in rank order (amounts in minor units), cells escaped
    as in ``sales_report_csv``."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["sku", "name", "currency", "quantity", "revenue", "refunded_quantity", "refunds", "net"]
    )
    for p in report.top_products:
        writer.writerow(
            escape_row(
                [
                    p.sku,
                    p.name,
                    p.currency,
                    p.quantity,
                    p.revenue,
                    p.refunded_quantity,
                    p.refunds,
                    p.net,
                ]
            )
        )
    return out.getvalue()
