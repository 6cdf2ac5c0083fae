"""Orders' use cases: carts, checkout, the order life cycle, and shop configuration (tax rates,
shipping methods, vouchers). Each command owns its transaction and writes its events to the
outbox inside it. Data access is SQLAlchemy Core: checkout and cart reads are hot paths, and
checkout's own transactions (a new cart, placing the order, the payment's outcome) run on the
driver with statements built once."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import structlog
from sqlalchemy import (
    CursorResult,
    RowMapping,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.orders import domain, schemas
from ecosistema.orders.domain import OrderAction, OrderStatus
from ecosistema.orders.events import (
    CART_CREATED,
    ORDER_CANCELLED,
    ORDER_FULFILLED,
    ORDER_FULFILLMENT_CREATED,
    ORDER_PAID,
    ORDER_PAYMENT_REFUSED,
    ORDER_PLACED,
    ORDER_REFUNDED,
)
from ecosistema.orders.models import (
    ACTIVE_CART,
    cart_lines,
    carts,
    fulfillments,
    order_history,
    order_lines,
    order_numbers,
    orders,
    shipping_methods,
    tax_rates,
    voucher_usages,
    vouchers,
)
from ecosistema.platform.addresses import is_country
from ecosistema.platform.auth import Principal
from ecosistema.platform.crypto import DecryptionError
from ecosistema.platform.db import (
    DriverTransaction,
    Statements,
    as_utc_datetime,
    new_id,
    statements,
    utcnow,
)
from ecosistema.platform.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    field_error,
    refuse_inverted_range,
)
from ecosistema.platform.money import Money
from ecosistema.platform.pagination import InvalidCursor, decode_cursor, encode_cursor
from ecosistema.platform.policy import ensure, ensure_owner, owner_filter
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)


# The moment use cases record. A caller may set it (``at=``) to write history in the past: the
# demo data's weeks of orders go through the same use cases as live ones.
_RECORDED_AT: ContextVar[datetime | None] = ContextVar("orders_recorded_at", default=None)


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


recorded_at = _recorded_at


def event_time(payload: Mapping[str, Any]) -> datetime | None:
    """When a consumed event says its change happened (``occurred_at``), if it says so sensibly:
    a valid, zone-aware moment not in the future."""
    value = payload.get("occurred_at")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None or moment > utcnow():
        return None
    return moment


CART_NOT_FOUND = "No cart with this id."
ORDER_NOT_FOUND = "No order with this id."
STAFF = "orders:write_all"
# Who catalog shows draft products to: to anyone else a draft's SKU is one it does not know.
CATALOG_STAFF = "catalog:write"
WRITE_OWN = "orders:write_own"
READ_ALL = "orders:read_all"
MANAGE = "orders:manage"
MAX_LINE_QUANTITY = 10_000
# Catalog holds an order's stock this long past the order's own deadline. Orders' sweeper
# cancels an unpaid order first (and catalog releases its stock on OrderCancelled), so the two
# never race: a payment that lands before the order is cancelled always finds its stock still
# reserved. Catalog's own expiry stays as the backstop should orders not cancel at all.
CATALOG_RESERVATION_GRACE_SECONDS = 600
PAGE_LIMIT = 100

ActorKind = Literal["customer", "staff", "guest", "system", "payments"]


class Quote(Protocol):
    """What catalog's ``quote`` answers per SKU (catalog's VariantQuote)."""

    sku: str
    product_id: str
    product_name: str
    variant_name: str
    unit_price: int
    currency: str
    tax_inclusive: bool
    weight_grams: int
    available: int
    purchasable: bool
    # Why it cannot be bought: ``archived``, ``draft`` or ``not_priced``, and in words.
    reason: str | None
    reason_message: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something to an order, as the history records it."""

    kind: ActorKind
    id: str | None = None

    @classmethod
    def of(cls, principal: Principal | None) -> Actor:
        """The actor a request's principal (or its absence) stands for."""
        if principal is None:
            return cls("guest")
        return cls("staff" if principal.has(STAFF) else "customer", principal.actor)


SYSTEM = Actor("system")
PAYMENTS = Actor("payments")
EMAIL_INDEX_PURPOSE = "order.email"


def email_index(ctx: ServiceContext, email: str) -> str:
    """The blind index orders are looked up by email with (trimmed, lower-cased)."""
    return ctx.cipher.blind_index(email.strip().lower(), purpose=EMAIL_INDEX_PURPOSE)


def _seal(ctx: ServiceContext, value: str | None, table: str, row_id: str) -> str | None:
    if value is None:
        return None
    return ctx.cipher.encrypt(value, table=table, column="email_encrypted", row_id=row_id)


SHIPPING_ADDRESS = "shipping_address_encrypted"
BILLING_ADDRESS = "billing_address_encrypted"


def _seal_address(
    ctx: ServiceContext,
    address: schemas.Address | schemas.PostalAddress | None,
    column: str,
    row_id: str,
    table: Literal["carts", "orders"] = "orders",
) -> str | None:
    """An address as a cart or order row keeps it in ``column``: JSON, encrypted."""
    if address is None:
        return None
    plain = address.model_dump_json(exclude_none=True)
    return ctx.cipher.encrypt(plain, table=table, column=column, row_id=row_id)


def _address_of(
    ctx: ServiceContext,
    row: Mapping[Any, Any],
    column: str,
    table: Literal["carts", "orders"] = "orders",
) -> schemas.PostalAddress | None:
    """The decrypted address a cart or order row keeps in ``column`` (None when none was
    given)."""
    token = row.get(column)
    if token is None:
        return None
    plain = ctx.cipher.decrypt(token, table=table, column=column, row_id=str(row["id"]))
    return schemas.PostalAddress.model_validate_json(plain)


# The buyer's personal data in an order's JSON, sealed when the JSON is kept as an idempotent
# answer.
_PERSONAL_KEYS = ("email", "shipping_address", "billing_address")


def seal_order_body(ctx: ServiceContext, body: dict[str, Any]) -> dict[str, Any]:
    """An order's JSON with its email and addresses encrypted, to be stored as an idempotent
    answer."""
    if not isinstance(body.get("id"), str):
        return body
    sealed = dict(body)
    for key in _PERSONAL_KEYS:
        value = body.get(key)
        if value is None:
            continue
        plain = value if key == "email" else json.dumps(value, separators=(",", ":"))
        sealed[key] = ctx.cipher.encrypt(
            plain, table="idempotency_keys", column="response_body", row_id=body["id"]
        )
    return sealed


def open_order_body(ctx: ServiceContext, body: dict[str, Any]) -> dict[str, Any]:
    """The order JSON ``seal_order_body`` made, with its email and addresses readable again."""
    if not isinstance(body.get("id"), str):
        return body
    opened = dict(body)
    for key in _PERSONAL_KEYS:
        value = body.get(key)
        if not isinstance(value, str):
            continue  # none given, or an address kept before addresses were sealed
        try:
            plain = ctx.cipher.decrypt(
                value, table="idempotency_keys", column="response_body", row_id=body["id"]
            )
        except DecryptionError:
            continue  # an answer stored before emails were sealed
        opened[key] = plain if key == "email" else json.loads(plain)
    return opened


def _email_of(ctx: ServiceContext, row: Mapping[Any, Any], table: str) -> str | None:
    """The decrypted email of a cart or order row."""
    token = row["email_encrypted"]
    if token is None:
        return None
    return ctx.cipher.decrypt(token, table=table, column="email_encrypted", row_id=str(row["id"]))


@dataclass(frozen=True, slots=True)
class Buyer:
    """Whom a cart or order row is for, decrypted: the email and the addresses, the billing
    address being the shipping one when the buyer gave no other."""

    email: str | None
    shipping_address: schemas.PostalAddress | None
    billing_address: schemas.PostalAddress | None


def buyer_of(
    ctx: ServiceContext, row: Mapping[Any, Any], table: Literal["carts", "orders"] = "orders"
) -> Buyer:
    """The buyer a cart or order row keeps encrypted (its ``id``, ``email_encrypted`` and
    address columns)."""
    shipping = _address_of(ctx, row, SHIPPING_ADDRESS, table)
    return Buyer(
        email=_email_of(ctx, row, table),
        shipping_address=shipping,
        billing_address=_address_of(ctx, row, BILLING_ADDRESS, table) or shipping,
    )


def hash_token(token: str) -> str:
    """Cart tokens are kept hashed: a database read does not let anyone into a cart."""
    return hashlib.sha256(token.encode()).hexdigest()


def idempotency_principal(principal: Principal | None, cart_token: str | None) -> str:
    """Whose idempotency keys a checkout shares: the customer, or the guest's cart token."""
    if principal is not None:
        return principal.subject
    return "guest:" + hash_token(cart_token or "")[:32]


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _upsert(ctx: ServiceContext) -> Any:
    return pg_insert if ctx.db.is_postgres else sqlite_insert


def _catalog(ctx: ServiceContext) -> Any:
    try:
        return ctx.client("catalog")
    except LookupError as exc:
        raise ServiceUnavailable("The catalog cannot be reached to price the cart.") from exc


# --- configuration: tax rates -------------------------------------------------------------------


def _tax_rate_view(row: RowMapping) -> schemas.TaxRate:
    return schemas.TaxRate(
        country=row["country"],
        name=row["name"],
        rate_bp=row["rate_bp"],
        updated_at=row["updated_at"],
    )


async def list_tax_rates(ctx: ServiceContext) -> list[schemas.TaxRate]:
    """Every country the shop sells to, with its tax rate."""
    async with ctx.db.read() as session:
        rows = (await session.execute(select(tax_rates).order_by(tax_rates.c.country))).mappings()
        return [_tax_rate_view(r) for r in rows]


async def set_tax_rate(
    ctx: ServiceContext, *, country: str, data: schemas.TaxRateSet
) -> schemas.TaxRate:
    """Create or change the tax rate of a country."""
    code = _country(country, "country")
    now = _now()
    values = {"country": code, "name": data.name, "rate_bp": data.rate_bp, "updated_at": now}
    statement = _upsert(ctx)(tax_rates).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[tax_rates.c.country],
        set_={"name": data.name, "rate_bp": data.rate_bp, "updated_at": now},
    )
    async with ctx.db.transaction() as session:
        await session.execute(statement)
    return schemas.TaxRate(**values)


async def delete_tax_rate(ctx: ServiceContext, *, country: str) -> None:
    """Stop selling to a country: carts shipping there then list it among their problems."""
    code = _country(country, "country")
    async with ctx.db.transaction() as session:
        result = await session.execute(tax_rates.delete().where(tax_rates.c.country == code))
        if _rowcount(result) != 1:
            raise NotFound(f"No tax rate for {code}.")


def _country(value: str, field_name: str) -> str:
    code = value.strip().upper()
    if not is_country(code):
        raise field_error(
            field_name,
            f"{value.strip()[:10]!r} is not an ISO 3166-1 alpha-2 country code",
            code="invalid_country",
        )
    return code


# The hot paths' statements are built once: building one costs more than running it on SQLite.
_TAX_RATE = select(tax_rates.c.rate_bp).where(tax_rates.c.country == bindparam("country"))
_CART = select(carts).where(carts.c.id == bindparam("cart_id"))
_CART_LOCKED = _CART.with_for_update()
_CART_LINES = (
    select(cart_lines)
    .where(cart_lines.c.cart_id == bindparam("cart_id"))
    .order_by(cart_lines.c.added_at, cart_lines.c.sku)
)
_SHIPPING_METHOD = select(shipping_methods).where(shipping_methods.c.code == bindparam("code"))
_ALL_SHIPPING_METHODS = select(shipping_methods)
_ACTIVE_CART_OF = (
    select(carts.c.id)
    .where(
        carts.c.customer_id == bindparam("customer_id"),
        carts.c.status == "active",
        carts.c.currency == bindparam("currency"),
    )
    .order_by(carts.c.updated_at.desc())
    .limit(1)
)
_VOUCHER = select(vouchers).where(vouchers.c.code == bindparam("code"))
_ORDER = select(orders).where(orders.c.id == bindparam("order_id"))
_ORDER_LOCKED = _ORDER.with_for_update()
_ORDER_LINES = (
    select(order_lines)
    .where(order_lines.c.order_id == bindparam("order_id"))
    .order_by(order_lines.c.position)
)


async def _tax_rate_bp(tx: Statements, country: str) -> int | None:
    found = await tx.row(_TAX_RATE, country=country)
    return None if found is None else int(found["rate_bp"])


# --- configuration: shipping methods ------------------------------------------------------------


def _shipping_view(row: RowMapping) -> schemas.ShippingMethod:
    return schemas.ShippingMethod(
        code=row["code"],
        name=row["name"],
        kind=row["kind"],
        rates={
            currency: [{"up_to_grams": b[0], "amount": b[1]} for b in brackets]
            for currency, brackets in row["rates"].items()
        },
        countries=list(row["countries"]),
        active=row["active"],
    )


async def list_shipping_methods(
    ctx: ServiceContext, *, principal: Principal | None = None, include_inactive: bool = False
) -> list[schemas.ShippingMethod]:
    """The shipping methods customers can choose; those who manage the shop (``orders:manage``)
    may ask for inactive ones too. Anyone else asking for them is refused (401 anonymous, 403
    else) rather than shown the active ones only."""
    if include_inactive:
        if principal is None:
            raise Unauthorized("include_inactive: inactive shipping methods are for staff.")
        if not principal.has(MANAGE):
            message = "inactive shipping methods are listed for staff only: leave it out"
            raise Forbidden(
                f"include_inactive: {message}.",
                type="inactive-shipping-methods",
                title="Inactive shipping methods",
                errors=[
                    {
                        "field": "include_inactive",
                        "in": "query",
                        "message": message,
                        "code": "staff_only",
                    }
                ],
            )
    query = select(shipping_methods).order_by(shipping_methods.c.code)
    if not include_inactive:
        query = query.where(shipping_methods.c.active.is_(True))
    async with ctx.db.read() as session:
        return [_shipping_view(r) for r in (await session.execute(query)).mappings()]


async def create_shipping_method(
    ctx: ServiceContext, data: schemas.ShippingMethodCreate
) -> schemas.ShippingMethod:
    """Add a shipping method with flat or weight-based rates per currency."""
    now = _now()
    values = {
        "code": data.code,
        "name": data.name,
        "kind": data.kind,
        "rates": _stored_rates(data.rates),
        "countries": data.countries,
        "active": data.active,
        "created_at": now,
        "updated_at": now,
    }
    async with ctx.db.transaction() as session:
        result = await session.execute(
            _upsert(ctx)(shipping_methods).values(**values).on_conflict_do_nothing()
        )
        if _rowcount(result) != 1:
            raise Conflict(
                f"A shipping method with code {data.code!r} exists.",
                type="shipping-method-exists",
                title="Shipping method exists",
                errors=[{"field": "code", "message": "code already in use", "code": "taken"}],
            )
        row = (
            (
                await session.execute(
                    select(shipping_methods).where(shipping_methods.c.code == data.code)
                )
            )
            .mappings()
            .one()
        )
    return _shipping_view(row)


async def update_shipping_method(
    ctx: ServiceContext, *, code: str, data: schemas.ShippingMethodUpdate
) -> schemas.ShippingMethod:
    """Change a shipping method's name, kind, rates, countries or whether it is offered.
    Carts are priced with the new rates; orders keep the shipping they were placed with."""
    changes: dict[str, Any] = data.model_dump(exclude_unset=True)
    if "rates" in changes:
        changes["rates"] = _stored_rates(data.rates or {})
    async with ctx.db.transaction() as session:
        row = (
            (
                await session.execute(
                    select(shipping_methods)
                    .where(shipping_methods.c.code == code)
                    .with_for_update()
                )
            )
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise NotFound("No shipping method with this code.")
        _check_shipping_change(row, changes)
        if changes:
            await session.execute(
                update(shipping_methods)
                .where(shipping_methods.c.code == code)
                .values(**changes, updated_at=_now())
            )
            row = (
                (
                    await session.execute(
                        select(shipping_methods).where(shipping_methods.c.code == code)
                    )
                )
                .mappings()
                .one()
            )
    return _shipping_view(row)


def _stored_rates(rates: Mapping[str, Sequence[schemas.Bracket]]) -> dict[str, list[list[Any]]]:
    return {
        currency: [[b.up_to_grams, b.amount] for b in brackets]
        for currency, brackets in rates.items()
    }


def _check_shipping_change(row: Mapping[Any, Any], changes: Mapping[str, Any]) -> None:
    """The method as it would be after ``changes`` keeps creation's rules. A conflict is put
    on the field the request gave: on its rates, or on its kind when the rates are stored."""
    kind = changes.get("kind", row["kind"])
    rates = changes.get("rates", row["rates"])
    limits = {currency: [b[0] for b in brackets] for currency, brackets in rates.items()}
    problems = schemas.rate_problems(kind, limits)
    if not problems:
        return
    if "rates" in changes:
        errors = [
            {"field": ".".join(str(p) for p in loc), "message": message, "code": "invalid"}
            for loc, message, _ in problems
        ]
    else:
        currencies = ", ".join(str(loc[1]) for loc, _, _ in problems)
        message = (
            f"{schemas.FLAT_RATE}, and the {currencies} rates are not: give flat rates "
            "with the kind"
        )
        errors = [{"field": "kind", "message": message, "code": "invalid"}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    raise Unprocessable(detail, errors=errors)


def _brackets(row: Mapping[Any, Any], currency: str) -> list[domain.WeightBracket] | None:
    rates = row["rates"].get(currency)
    if not rates:
        return None
    return [domain.WeightBracket(up_to_grams=b[0], amount=int(b[1])) for b in rates]


def _not_serving(code: str, row: Mapping[Any, Any] | None, country: str, currency: str) -> str:
    """Why the shipping method ``code`` (``row``, None if gone) cannot ship this cart."""
    if row is None:
        return f"There is no shipping method {code!r} any more."
    if not row["active"]:
        return f"The shipping method {code!r} is no longer offered."
    if currency not in row["rates"]:
        return f"The shipping method {code!r} has no rates in {currency}."
    return f"The shipping method {code!r} does not ship to {country}."


def _serves(row: Mapping[Any, Any], country: str, currency: str) -> bool:
    countries = row["countries"]
    return (
        bool(row["active"]) and currency in row["rates"] and (not countries or country in countries)
    )


# --- configuration: vouchers --------------------------------------------------------------------


def _voucher_view(row: Mapping[str, Any] | RowMapping) -> schemas.Voucher:
    return schemas.Voucher(
        id=row["id"],
        code=row["code"],
        kind=domain.VoucherKind(row["kind"]),
        value=row["value"],
        currency=row["currency"],
        minimum_spend=row["minimum_spend"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        usage_limit=row["usage_limit"],
        per_customer_limit=row["per_customer_limit"],
        times_used=row["times_used"],
        active=row["active"],
    )


def _voucher_rule(row: Mapping[Any, Any]) -> domain.Voucher:
    return domain.Voucher(
        code=row["code"],
        kind=domain.VoucherKind(row["kind"]),
        value=row["value"],
        currency=row["currency"],
        minimum_spend=row["minimum_spend"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        active=row["active"],
    )


async def create_voucher(ctx: ServiceContext, data: schemas.VoucherCreate) -> schemas.Voucher:
    """Create a discount code; codes are unique, case-insensitively."""
    now = _now()
    values = {
        "id": new_id(),
        "code": domain.normalise_code(data.code),
        "kind": data.kind.value,
        "value": data.value,
        "currency": data.currency,
        "minimum_spend": data.minimum_spend,
        "starts_at": data.starts_at,
        "ends_at": data.ends_at,
        "usage_limit": data.usage_limit,
        "per_customer_limit": data.per_customer_limit,
        "times_used": 0,
        "active": data.active,
        "created_at": now,
        "updated_at": now,
    }
    async with ctx.db.transaction() as session:
        result = await session.execute(
            _upsert(ctx)(vouchers).values(**values).on_conflict_do_nothing()
        )
        if _rowcount(result) != 1:
            raise Conflict(
                f"The voucher code {values['code']!r} exists.",
                type="voucher-exists",
                title="Voucher code exists",
                errors=[{"field": "code", "message": "code already in use", "code": "taken"}],
            )
    return _voucher_view(values)


async def list_vouchers(ctx: ServiceContext) -> list[schemas.Voucher]:
    """Every voucher with its usage so far."""
    async with ctx.db.read() as session:
        rows = (await session.execute(select(vouchers).order_by(vouchers.c.code))).mappings()
        return [_voucher_view(r) for r in rows]


async def get_voucher(ctx: ServiceContext, *, code: str) -> schemas.Voucher:
    """One voucher by its code."""
    async with ctx.db.read() as session:
        row = await _voucher_row(statements(session), code)
    if row is None:
        raise NotFound("No voucher with this code.")
    return _voucher_view(row)


async def update_voucher(
    ctx: ServiceContext, *, code: str, data: schemas.VoucherUpdate
) -> schemas.Voucher:
    """Switch a voucher on or off, or change its end date or usage limit."""
    changes: dict[str, Any] = data.model_dump(exclude_unset=True)
    if "active" in changes and changes["active"] is None:
        raise field_error("active", "must be true or false")
    async with ctx.db.transaction() as session:
        row = await _voucher_row(statements(session), code)
        if row is None:
            raise NotFound("No voucher with this code.")
        ends = changes.get("ends_at", row["ends_at"])
        if ends is not None and row["starts_at"] is not None and ends <= row["starts_at"]:
            raise field_error("ends_at", "must be after starts_at")
        if changes:
            await session.execute(
                update(vouchers)
                .where(vouchers.c.id == row["id"])
                .values(**changes, updated_at=_now())
            )
        fresh = await _voucher_row(statements(session), code)
    assert fresh is not None
    return _voucher_view(fresh)


async def _voucher_row(tx: Statements, code: str) -> Mapping[Any, Any] | None:
    return await tx.row(_VOUCHER, code=domain.normalise_code(code))


_BUYERS_BY_EMAIL = (
    select(orders.c.customer_id)
    .where(orders.c.email_index == bindparam("email_index"), orders.c.customer_id.is_not(None))
    .distinct()
)
_USE = select(voucher_usages.c.id).where(
    voucher_usages.c.voucher_id == bindparam("voucher_id"),
    voucher_usages.c.released_at.is_(None),
)
_USES_BY_HOLDER = _USE.where(voucher_usages.c.holder == bindparam("holder"))
_USES_BY_EMAIL = _USE.where(voucher_usages.c.email_index == bindparam("email_index"))


async def _uses_by_buyer(
    ctx: ServiceContext,
    tx: Statements,
    voucher_id: str,
    *,
    customer_id: str | None,
    email: str | None,
) -> int:
    """Uses of a voucher not given back, by this customer account or by this email address
    (trimmed, lower-cased) whoever presented it: a guest giving a customer's address counts
    against that customer's limit, and so does the customer under another address."""
    # A use is held by the customer id, or by ``email:<blind index>`` for a guest, and carries
    # its order's address (a use is counted before its order is written). Reading through the
    # (voucher_id, holder) and (voucher_id, email_index) indexes keeps this independent of how
    # often the voucher was used by others: it runs while the voucher's row is locked.
    holders: set[str] = set()
    uses: set[str] = set()
    if customer_id is not None:
        holders.add(customer_id)
    if email is not None:
        index = email_index(ctx, email)
        holders.add(f"email:{index}")
        # The customers who bought with this address hold their uses under their account.
        holders.update(
            str(row["customer_id"]) for row in await tx.rows(_BUYERS_BY_EMAIL, email_index=index)
        )
        uses.update(
            str(row["id"])
            for row in await tx.rows(_USES_BY_EMAIL, voucher_id=voucher_id, email_index=index)
        )
    # One read per holder: statements of one shape, built once.
    for holder in sorted(holders):
        found = await tx.rows(_USES_BY_HOLDER, voucher_id=voucher_id, holder=holder)
        uses.update(str(row["id"]) for row in found)
    return len(uses)


def _per_customer_message(voucher: Mapping[Any, Any]) -> str:
    limit = voucher["per_customer_limit"]
    return (
        f"The voucher {voucher['code']} can be used {limit} time(s) per customer, "
        "and this customer has used it up."
    )


async def _know_buyer(ctx: ServiceContext, state: _CartState, *, email: str | None = None) -> None:
    """Note on ``state`` who would buy the cart: the email an order would carry (``email`` given
    at checkout, else the cart's, else the signed-in customer's account's), and whether the
    voucher is used up, overall or for that buyer. Cart views and checkout both call this, so
    a cart's ``problems`` list what checkout would refuse."""
    cart = state.cart
    state.email = email or _email_of(ctx, cart, "carts")
    if state.email is None and cart["customer_id"] is not None:
        state.email = await _customer_email(ctx, cart["customer_id"])
    await _voucher_used_up(ctx, state)


async def _voucher_used_up(ctx: ServiceContext, state: _CartState) -> None:
    """Note on ``state`` whether its voucher is used up, overall or for the cart's buyer (the
    cart's customer and ``state.email``)."""
    voucher, cart = state.voucher, state.cart
    state.voucher_used_up = None
    if voucher is None:
        return
    if voucher["usage_limit"] is not None and voucher["times_used"] >= voucher["usage_limit"]:
        state.voucher_used_up = f"The voucher {voucher['code']} has been used up."
        return
    if voucher["per_customer_limit"] is None:
        return
    async with ctx.db.read() as session:
        used = await _uses_by_buyer(
            ctx,
            statements(session),
            voucher["id"],
            customer_id=cart["customer_id"],
            email=state.email,
        )
    if used >= voucher["per_customer_limit"]:
        state.voucher_used_up = _per_customer_message(voucher)


# --- carts --------------------------------------------------------------------------------------


@dataclass
class _Priced:
    """A cart priced now: its lines with their quotes, totals and what stops a checkout."""

    totals: domain.Totals
    lines: list[schemas.CartLine]
    quotes: dict[str, Quote]
    problems: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    voucher: Mapping[Any, Any] | None = None
    country: str = ""
    shipping_method: str | None = None
    # Why the voucher cannot be counted once more (used up, globally or by this buyer): a state
    # conflict, so checkout answers 409 rather than 422 for it.
    voucher_used_up: str | None = None


@dataclass
class _CartState:
    cart: Mapping[Any, Any]
    lines: list[Mapping[Any, Any]]
    tax_rate_bp: int | None
    shipping: Mapping[Any, Any] | None
    shipping_options: int
    voucher: Mapping[Any, Any] | None
    voucher_used_up: str | None = None
    # The email an order from this cart would carry, once ``_know_buyer`` has looked.
    email: str | None = None


async def _cart_row(
    tx: Statements, cart_id: str, *, lock: bool = False
) -> Mapping[Any, Any] | None:
    return await tx.row(_CART_LOCKED if lock else _CART, cart_id=cart_id)


def _check_cart_access(
    cart: Mapping[Any, Any] | None, principal: Principal | None, token: str | None
) -> Mapping[Any, Any]:
    if cart is None:
        raise NotFound(CART_NOT_FOUND)
    if cart["customer_id"] is not None:
        if principal is None or (
            principal.subject != cart["customer_id"] and not principal.has(STAFF)
        ):
            raise NotFound(CART_NOT_FOUND)
    elif token is None or not secrets.compare_digest(hash_token(token), cart["token_hash"] or ""):
        raise NotFound(CART_NOT_FOUND)
    return cart


def _ensure_active(cart: Mapping[Any, Any]) -> None:
    if cart["status"] != "active":
        raise Conflict(
            f"The cart is {cart['status']} and can no longer change.",
            type="cart-not-active",
            title="Cart no longer active",
            order_id=cart["order_id"],
            merged_into=cart["merged_into"],
        )


async def _load_cart_state(
    ctx: ServiceContext,
    tx: Statements,
    cart: Mapping[Any, Any],
    *,
    country: str | None = None,
    shipping_method: str | None = None,
) -> _CartState:
    lines = list(await tx.rows(_CART_LINES, cart_id=cart["id"]))
    where = country or cart["country"] or ctx.settings.orders_default_country
    rate = await _tax_rate_bp(tx, where)
    method_code = shipping_method or cart["shipping_method"]
    shipping = None
    if method_code:
        shipping = await tx.row(_SHIPPING_METHOD, code=method_code)
    options = 0
    if shipping is None:
        candidates = await tx.rows(_ALL_SHIPPING_METHODS)
        options = sum(1 for m in candidates if _serves(m, where, cart["currency"]))
    voucher = await _voucher_row(tx, cart["voucher_code"]) if cart["voucher_code"] else None
    return _CartState(cart, lines, rate, shipping, options, voucher)


async def _price(
    ctx: ServiceContext,
    state: _CartState,
    *,
    country: str | None = None,
    country_field: str = "country",
    shipping_method: str | None = None,
    quotes: Mapping[str, Quote] | None = None,
    has_shipping_address: bool | None = None,
) -> _Priced:
    """The cart priced, with every fault that blocks its checkout; ``country_field`` names
    where the country came from (``country``, or the shipping address's), and
    ``has_shipping_address`` whether the order would have one (the cart's when not said)."""
    cart = state.cart
    if has_shipping_address is None:
        has_shipping_address = cart.get(SHIPPING_ADDRESS) is not None
    currency = cart["currency"]
    where = country or cart["country"] or ctx.settings.orders_default_country
    skus = [line["sku"] for line in state.lines]
    if quotes is None:
        quotes = (
            await _catalog(ctx).quote(skus, currency=currency, customer_id=cart["customer_id"])
            if skus
            else {}
        )
    problems: list[str] = []
    errors: list[dict[str, Any]] = []

    priced_input: list[domain.CartLine] = []
    for index, line in enumerate(state.lines):
        sku, quantity = line["sku"], line["quantity"]
        quote = quotes.get(sku)
        if quote is None or not quote.purchasable or quote.currency != currency:
            if quote is None:
                message, code = f"{sku} is not in the catalogue.", "unknown_sku"
            elif getattr(quote, "reason", None) == "draft":
                # A cart is read by its buyer, to whom catalog does not show drafts: the line
                # is not for sale, and nothing more is said of its product.
                message, code = f"{sku} is not for sale.", "not_purchasable"
            else:
                message, code = _not_for_sale(quote, sku, currency) + ".", "not_purchasable"
            problems.append(message)
            errors.append({"field": f"lines.{index}.sku", "message": message, "code": code})
            continue
        if quote.available < quantity:
            # Catalog's reservation at checkout is the authority (a 409 with each line's
            # availability); the cart says beforehand what it would refuse.
            problems.append(f"{sku}: {quantity} wanted, {quote.available} available.")
        priced_input.append(domain.CartLine(sku, quantity, quote.unit_price, quote.weight_grams))
    include_tax = (
        next(iter(quotes.values())).tax_inclusive if quotes else ctx.settings.prices_include_tax
    )
    rate = state.tax_rate_bp
    if rate is None:
        message = f"The shop does not sell to {where}."
        problems.append(message)
        errors.append({"field": country_field, "message": message, "code": "not_served"})
        rate = 0
    brackets = None
    method = state.shipping
    requested_method = shipping_method or cart["shipping_method"]
    if requested_method and (method is None or not _serves(method, where, currency)):
        message = _not_serving(requested_method, method, where, currency)
        problems.append(message)
        errors.append({"field": "shipping_method", "message": message, "code": "not_served"})
    elif method is not None:
        brackets = _brackets(method, currency)
    elif state.shipping_options:
        message = "Choose a shipping method."
        problems.append(message)
        errors.append({"field": "shipping_method", "message": message, "code": "missing"})
    if (requested_method or state.shipping_options) and not has_shipping_address:
        # A cart that ships (a method chosen, or one needed) is a parcel, and a parcel needs
        # an address; a cart no method serves (digital goods) needs none.
        message = "A shipping address is needed: the parcel is delivered to it."
        problems.append(message)
        errors.append({"field": "shipping_address", "message": message, "code": "missing"})
    if not state.lines:
        problems.append("The cart is empty.")
        errors.append({"field": "lines", "message": "The cart is empty.", "code": "empty"})
    if state.email is None:
        message = "An email address is needed for the order."
        problems.append(message)
        errors.append({"field": "email", "message": message, "code": "missing"})

    voucher_rule = None
    if state.voucher is not None:
        voucher_rule = _voucher_rule(state.voucher)
        subtotal_now = sum(line.unit_price * line.quantity for line in priced_input)
        reason = domain.voucher_problem(
            voucher_rule, subtotal=Money(subtotal_now, currency), now=_now()
        )
        if reason is not None:
            problems.append(reason)
            errors.append({"field": "voucher_code", "message": reason, "code": "not_applicable"})
            voucher_rule = None
        elif state.voucher_used_up is not None:
            problems.append(state.voucher_used_up)
    elif cart["voucher_code"]:
        message = f"The voucher {cart['voucher_code']} no longer exists."
        problems.append(message)
        errors.append({"field": "voucher_code", "message": message, "code": "unknown"})

    try:
        totals = domain.price_order(
            priced_input,
            currency=currency,
            prices_include_tax=include_tax,
            tax_rate_bp=rate,
            shipping=brackets,
            voucher=voucher_rule,
        )
    except domain.NotShippable as exc:
        problems.append(exc.detail)
        errors.extend(exc.extra.get("errors", []))
        totals = domain.price_order(
            priced_input,
            currency=currency,
            prices_include_tax=include_tax,
            tax_rate_bp=rate,
            voucher=voucher_rule,
        )
    if max(totals.subtotal, totals.total) > schemas.MAX_AMOUNT:
        # Payments charges at most this much at once, and amounts past it lose precision in
        # the JSON most clients read: a cart above it is one order too many.
        message = (
            f"The cart comes to {max(totals.subtotal, totals.total)} minor units, more than "
            f"{schemas.MAX_AMOUNT}, the most one order can hold (shipping and tax count too): "
            "split it into several orders."
        )
        problems.append(message)
        errors.append({"field": "lines", "message": message, "code": "too_large"})
    by_sku = {line.sku: line for line in totals.lines}
    views: list[schemas.CartLine] = []
    for line in state.lines:
        quote = quotes.get(line["sku"])
        priced = by_sku.get(line["sku"])
        views.append(
            schemas.CartLine(
                sku=line["sku"],
                quantity=line["quantity"],
                product_id=quote.product_id if quote else None,
                product_name=quote.product_name if quote else None,
                variant_name=quote.variant_name if quote else None,
                unit_price=quote.unit_price if quote else None,
                available=quote.available if quote else 0,
                purchasable=priced is not None,
                subtotal=priced.subtotal if priced else 0,
                discount=priced.discount if priced else 0,
                tax=priced.tax if priced else 0,
                total=priced.total if priced else 0,
            )
        )
    return _Priced(
        totals=totals,
        lines=views,
        quotes=dict(quotes),
        problems=problems,
        errors=errors,
        voucher=state.voucher if voucher_rule is not None else None,
        country=where,
        shipping_method=method["code"] if method is not None and brackets is not None else None,
        voucher_used_up=state.voucher_used_up if voucher_rule is not None else None,
    )


def _totals_view(totals: domain.Totals) -> schemas.Totals:
    return schemas.Totals(
        currency=totals.currency,
        prices_include_tax=totals.prices_include_tax,
        tax_rate_bp=totals.tax_rate_bp,
        subtotal=totals.subtotal,
        discount_total=totals.discount_total,
        shipping_total=totals.shipping_total,
        tax_total=totals.tax_total,
        total=totals.total,
        weight_grams=totals.weight_grams,
    )


def _cart_view(
    ctx: ServiceContext, cart: Mapping[Any, Any], priced: _Priced, token: str | None = None
) -> schemas.Cart:
    buyer = buyer_of(ctx, cart, "carts")
    return schemas.Cart(
        id=cart["id"],
        token=token,
        customer_id=cart["customer_id"],
        status=cart["status"],
        currency=cart["currency"],
        country=cart["country"],
        email=buyer.email,
        shipping_address=buyer.shipping_address,
        billing_address=buyer.billing_address,
        shipping_method=cart["shipping_method"],
        voucher_code=cart["voucher_code"],
        lines=priced.lines,
        totals=_totals_view(priced.totals),
        problems=priced.problems,
        created_at=cart["created_at"],
        updated_at=cart["updated_at"],
    )


async def _view_cart(ctx: ServiceContext, cart_id: str, token: str | None = None) -> schemas.Cart:
    async with ctx.db.read() as session:
        cart = await _cart_row(statements(session), cart_id)
        assert cart is not None
        state = await _load_cart_state(ctx, statements(session), cart)
    await _know_buyer(ctx, state)
    return _cart_view(ctx, cart, await _price(ctx, state), token)


async def _served_rate(
    tx: Statements, country: str, field_name: str = "country"
) -> tuple[str, int]:
    """A country the shop sells to, and its tax rate; a 422 on ``field_name`` otherwise."""
    code = _country(country, field_name)
    rate = await _tax_rate_bp(tx, code)
    if rate is None:
        raise field_error(field_name, f"the shop does not sell to {code}", code="not_served")
    return code, rate


async def _served_country(
    session: AsyncSession, country: str | None, field_name: str = "country"
) -> str | None:
    if country is None:
        return None
    return (await _served_rate(statements(session), country, field_name))[0]


COUNTRY_OF_SHIPPING_ADDRESS = "shipping_address.country"


def _check_kept_address(cart: Mapping[Any, Any], country: str | None) -> None:
    """Refuse a ``country`` for a cart that keeps a shipping address elsewhere (a 422 on
    ``country``): while it has a shipping address, a cart's country is that address's."""
    kept = cart["country"]
    if cart.get(SHIPPING_ADDRESS) is None or (
        country is not None and country.strip().upper() == kept
    ):
        return
    reason = (
        schemas.address_conflict(kept, country.strip())
        if country is not None
        else f"the cart's country follows its shipping address, in {kept}"
    )
    raise field_error(
        "country",
        f"{reason}; give a shipping address in that country, or clear the address",
        code="address_elsewhere",
    )


async def create_cart(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    data: schemas.CartCreate,
    at: datetime | None = None,
) -> tuple[schemas.Cart, bool]:
    """A new cart: a customer's (one active per currency, returned if it exists) or an
    anonymous one, whose token is returned once. With ``items`` the cart is always new and has
    exactly those lines: a customer's active cart in that currency is replaced (it can no longer
    change nor be ordered), so a storefront that sends the basket never buys lines left over
    from before. Returns the cart and whether it is new."""
    with _recorded_at(at):
        now = _now()
        token = None if principal is not None else secrets.token_urlsafe(32)
        async with ctx.db.driver_read() as reading:
            country: str | None = None
            rate: int | None
            if data.shipping_address is not None:
                # The cart's country is its shipping address's (a different ``country`` in the
                # request was refused with the body).
                country, rate = await _served_rate(
                    reading, data.shipping_address.country, COUNTRY_OF_SHIPPING_ADDRESS
                )
                where = country
            elif data.country is not None:
                country, rate = await _served_rate(reading, data.country)
                where = country
            else:
                where = ctx.settings.orders_default_country
                rate = await _tax_rate_bp(reading, where)
            methods = await reading.rows(_ALL_SHIPPING_METHODS)
        chosen = next(
            (m for m in methods if m["code"] == data.shipping_method and m["active"]), None
        )
        if data.shipping_method is not None and chosen is None:
            raise field_error("shipping_method", "no such shipping method", code="unknown")
        items, quotes = await _checked_items(ctx, principal, data)
        # What the request sets on a customer's existing cart, as PATCH /carts/{id} would;
        # the email and addresses are sealed under that cart's id, so once the cart is found.
        given = data.model_fields_set
        set_fields: dict[str, Any] = {}
        if "country" in given or data.shipping_address is not None:
            set_fields["country"] = country
        if "email" in given:
            set_fields["email_encrypted"] = str(data.email) if data.email else None
        if "shipping_address" in given:
            set_fields[SHIPPING_ADDRESS] = data.shipping_address
        if "billing_address" in given:
            set_fields[BILLING_ADDRESS] = data.billing_address
        if "shipping_method" in given:
            set_fields["shipping_method"] = data.shipping_method
        cart_id = new_id()
        values: dict[str, Any] = {
            "id": cart_id,
            "token_hash": hash_token(token) if token else None,
            "customer_id": principal.subject if principal else None,
            "status": "active",
            "currency": data.currency,
            "country": country,
            "email_encrypted": _seal(
                ctx, str(data.email) if data.email else None, "carts", cart_id
            ),
            SHIPPING_ADDRESS: _seal_address(
                ctx, data.shipping_address, SHIPPING_ADDRESS, cart_id, "carts"
            ),
            BILLING_ADDRESS: _seal_address(
                ctx, data.billing_address, BILLING_ADDRESS, cart_id, "carts"
            ),
            "shipping_method": data.shipping_method,
            "voucher_code": None,
            "merged_into": None,
            "order_id": None,
            "created_at": now,
            "updated_at": now,
        }
        # A new cart's lines, in the order a read of the cart gives them.
        lines: list[Mapping[Any, Any]] = [
            {"cart_id": cart_id, "sku": sku, "quantity": quantity, "added_at": now}
            for sku, (quantity, _index) in sorted(items.items())
        ]
        async with ctx.db.driver_write() as tx:
            existing = None
            if principal is None:
                await tx.insert(carts, values)
            else:
                existing = await _place_customer_cart(
                    ctx,
                    tx,
                    values,
                    replacing="items" in given,
                    items=items,
                    set_fields=set_fields,
                    now=now,
                )
            if existing is None:
                await tx.insert(cart_lines, lines)
                if principal is not None:
                    # No email: the event is kept in the outbox and on the bus (personal data).
                    await ctx.outbox.add(
                        tx,
                        CART_CREATED,
                        {
                            "cart_id": cart_id,
                            "customer_id": principal.subject,
                            "created_at": now.isoformat(),
                        },
                    )
        if existing is not None:
            return await _view_cart(ctx, str(existing), token), False
        # The cart is what was just written: its view needs no second read.
        options = 0 if chosen else sum(1 for m in methods if _serves(m, where, data.currency))
        state = _CartState(values, lines, rate, chosen, options, None)
        await _know_buyer(ctx, state)
        return _cart_view(ctx, values, await _price(ctx, state, quotes=quotes), token), True


# Rounds a write of a customer's cart takes when, between its read and its insert, another
# request made the customer's active cart (PostgreSQL; SQLite writers take turns): each round
# another of the racing requests has won, so this is more than anyone's simultaneous requests.
CART_RACE_ROUNDS = 50


def _insert_customer_cart_statement(upsert: Any) -> Any:
    return (
        upsert(carts)
        .values({c: bindparam(c.name) for c in carts.c})
        .on_conflict_do_nothing(
            index_elements=[carts.c.customer_id, carts.c.currency], index_where=ACTIVE_CART
        )
        .returning(carts.c.id)
    )


# A customer's new active cart, written unless they have one in its currency already
# (``ux_carts_active_customer_currency``): its id, or None. Per dialect.
_INSERT_CUSTOMER_CART = {
    False: _insert_customer_cart_statement(sqlite_insert),
    True: _insert_customer_cart_statement(pg_insert),
}


def _cart_contended() -> Conflict:
    return Conflict(
        "The customer's cart kept changing while this request was written; try again.",
        type="cart-contended",
        title="Cart changed meanwhile",
    )


async def _place_customer_cart(
    ctx: ServiceContext,
    tx: DriverTransaction,
    values: Mapping[str, Any],
    *,
    replacing: bool,
    items: Mapping[str, tuple[int, int]],
    set_fields: Mapping[str, Any],
    now: datetime,
) -> str | None:
    """Write the signed-in customer's new cart ``values`` as their active cart in its
    currency, replacing the one before (``replacing``, a basket), or else use the active cart
    they have, setting ``set_fields`` and adding ``items`` to it; the id of the cart used
    instead, None when ``values`` was written. The one-active-cart index decides a race: the
    insert that loses writes nothing, and this looks again at the cart that won."""
    customer = {"customer_id": values["customer_id"], "currency": values["currency"]}
    insert_cart = _INSERT_CUSTOMER_CART[ctx.db.is_postgres]
    for _ in range(CART_RACE_ROUNDS):
        if replacing:
            await tx.execute(_REPLACE_ACTIVE_CARTS, **customer, at=now)
        else:
            found = await tx.scalar(_ACTIVE_CART_OF, **customer)
            if found is not None:
                found = str(found)
                if not (items or set_fields):
                    return found
                if "country" in set_fields and SHIPPING_ADDRESS not in set_fields:
                    kept = await _cart_row(tx, found)
                    if kept is not None:
                        # raising rolls the write back
                        _check_kept_address(kept, set_fields["country"])
                changes = {
                    name: _sealed_cart_field(ctx, name, value, found)
                    for name, value in set_fields.items()
                }
                if await _fill_existing(ctx, tx, found, items, changes, now) is not None:
                    return found
                continue  # it has just stopped being active: look again
        if await tx.scalar(insert_cart, **values) is not None:
            return None
    raise _cart_contended()


# A customer's basket sent whole (``POST /carts`` with ``items``) replaces their active cart.
_REPLACE_ACTIVE_CARTS = (
    update(carts)
    .where(
        carts.c.customer_id == bindparam("customer_id"),
        carts.c.currency == bindparam("currency"),
        carts.c.status == "active",
    )
    .values(status="replaced", updated_at=bindparam("at"))
)


def _sealed_cart_field(ctx: ServiceContext, name: str, value: Any, cart_id: str) -> Any:
    """A cart column's value as stored: the email and the addresses encrypted for the row."""
    if name == "email_encrypted":
        return _seal(ctx, value, "carts", cart_id)
    if name in (SHIPPING_ADDRESS, BILLING_ADDRESS):
        return _seal_address(ctx, value, name, cart_id, "carts")
    return value


_FILL_CART: dict[tuple[str, ...], Any] = {}


def _fill_cart(names: tuple[str, ...]) -> Any:
    """The guarded UPDATE that sets the cart columns ``names`` (``new_<name>``) on an active
    cart, built once per set of names."""
    found = _FILL_CART.get(names)
    if found is None:
        found = _FILL_CART[names] = (
            update(carts)
            .where(carts.c.id == bindparam("cart_id"), carts.c.status == "active")
            .values(
                {
                    **{carts.c[name]: bindparam(f"new_{name}") for name in names},
                    carts.c.updated_at: bindparam("at"),
                }
            )
        )
    return found


def _add_units_statement(upsert: Any) -> Any:
    statement = upsert(cart_lines).values(
        cart_id=bindparam("cart_id"),
        sku=bindparam("sku"),
        quantity=bindparam("quantity"),
        added_at=bindparam("added_at"),
    )
    return statement.on_conflict_do_update(
        index_elements=[cart_lines.c.cart_id, cart_lines.c.sku],
        set_={"quantity": cart_lines.c.quantity + statement.excluded.quantity},
    ).returning(cart_lines.c.quantity)


# Units added to a cart's line (the line is made if missing), per dialect: the line's quantity.
_ADD_UNITS = {False: _add_units_statement(sqlite_insert), True: _add_units_statement(pg_insert)}


async def _fill_existing(
    ctx: ServiceContext,
    tx: DriverTransaction,
    cart_id: str,
    items: Mapping[str, tuple[int, int]],
    changes: Mapping[str, Any],
    now: datetime,
) -> str | None:
    """Set a new cart's fields (``changes``, cart columns) and add its ``items`` to the
    customer's active cart found instead; ``None`` when that cart has just stopped being
    active (a new one is created)."""
    # The guarded UPDATE takes the cart's row lock, as adding an item does.
    names = tuple(sorted(changes))
    values = {f"new_{name}": changes[name] for name in names}
    if await tx.execute(_fill_cart(names), cart_id=cart_id, at=now, **values) != 1:
        return None
    add_units = _ADD_UNITS[ctx.db.is_postgres]
    for sku, (quantity, index) in items.items():
        total = await tx.scalar(
            add_units, cart_id=cart_id, sku=sku, quantity=quantity, added_at=now
        )
        if int(total) > MAX_LINE_QUANTITY:
            raise _line_too_big(f"items.{index}.quantity")  # raising rolls the write back
    return cart_id


async def get_cart(
    ctx: ServiceContext, *, cart_id: str, principal: Principal | None, token: str | None
) -> schemas.Cart:
    """A cart with its lines priced now from catalog's quotes."""
    async with ctx.db.read() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        state = await _load_cart_state(ctx, statements(session), cart)
    await _know_buyer(ctx, state)
    return _cart_view(ctx, cart, await _price(ctx, state))


async def update_cart(
    ctx: ServiceContext,
    *,
    cart_id: str,
    principal: Principal | None,
    token: str | None,
    data: schemas.CartUpdate,
) -> schemas.Cart:
    """Set where the cart ships (its country, or its shipping address, whose country it then
    takes), the shipping method, the contact email, or the billing address."""
    changes = data.model_dump(exclude_unset=True)
    async with ctx.db.transaction() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        values: dict[str, Any] = {}
        shipping = data.shipping_address
        if shipping is not None:
            # A different ``country`` in the same request was refused with the body.
            values["country"] = await _served_country(
                session, shipping.country, COUNTRY_OF_SHIPPING_ADDRESS
            )
        elif "country" in changes:
            if "shipping_address" not in changes:
                _check_kept_address(cart, changes["country"])
            values["country"] = await _served_country(session, changes["country"])
        for name, column in (
            ("shipping_address", SHIPPING_ADDRESS),
            ("billing_address", BILLING_ADDRESS),
        ):
            if name in changes:
                values[column] = _sealed_cart_field(ctx, column, getattr(data, name), cart_id)
        if "shipping_method" in changes:
            code = changes["shipping_method"]
            if code is not None:
                found = await session.scalar(
                    select(shipping_methods.c.code).where(
                        shipping_methods.c.code == code, shipping_methods.c.active.is_(True)
                    )
                )
                if found is None:
                    raise field_error("shipping_method", "no such shipping method", code="unknown")
            values["shipping_method"] = code
        if "email" in changes:
            address = str(changes["email"]) if changes["email"] else None
            values["email_encrypted"] = _seal(ctx, address, "carts", cart_id)
        if values:
            await session.execute(
                update(carts).where(carts.c.id == cart_id).values(**values, updated_at=_now())
            )
    return await _view_cart(ctx, cart_id)


def _not_for_sale(quote: Quote, sku: str, currency: str) -> str:
    """Why a known SKU cannot be bought, in catalog's words when its quote says."""
    if quote.purchasable and quote.currency != currency:
        return f"{sku} is not sold in {currency}"
    message = getattr(quote, "reason_message", None)
    if message:
        return str(message)
    reason = getattr(quote, "reason", None)
    if reason == "archived":
        return f"{sku} is archived: it is no longer sold"
    if reason == "draft":
        return f"{sku} is not on sale yet"
    if reason == "not_priced":
        return f"{sku} has no price in {currency}"
    return f"{sku} is not for sale"


def _sees_drafts(principal: Principal | None) -> bool:
    """Whether catalog would show ``principal`` a draft product."""
    return principal is not None and principal.has(CATALOG_STAFF)


def _check_quote(
    quote: Quote | None,
    cart: Mapping[Any, Any],
    sku: str,
    field: str = "sku",
    *,
    principal: Principal | None,
) -> Quote:
    draft = quote is not None and getattr(quote, "reason", None) == "draft"
    if quote is None or (draft and not _sees_drafts(principal)):
        # Catalog hides drafts from all but its staff: a draft's SKU is answered as an unknown
        # one, so adding it to a cart reveals nothing of it.
        raise field_error(field, f"no product variant has the SKU {sku!r}", code="unknown_sku")
    if not quote.purchasable:
        raise field_error(
            field, _not_for_sale(quote, sku, cart["currency"]), code="not_purchasable"
        )
    return quote


def _line_too_big(field_name: str) -> Unprocessable:
    return field_error(field_name, f"a line holds at most {MAX_LINE_QUANTITY} units")


def _merged_items(items: Sequence[schemas.CartItemAdd]) -> dict[str, tuple[int, int]]:
    """A new cart's ``items`` by SKU (a repeated SKU adds up, as adding it twice would):
    quantity, and the index of the item the line's field errors point at."""
    merged: dict[str, tuple[int, int]] = {}
    for index, item in enumerate(items):
        quantity = merged.get(item.sku, (0, index))[0] + item.quantity
        merged[item.sku] = (quantity, index)
        if quantity > MAX_LINE_QUANTITY:
            raise _line_too_big(f"items.{index}.quantity")
    return merged


async def _checked_items(
    ctx: ServiceContext, principal: Principal | None, data: schemas.CartCreate
) -> tuple[dict[str, tuple[int, int]], dict[str, Quote]]:
    """The items of a cart being created, each checked as adding it to a cart checks it; and
    catalog's quotes for them (one call), which also price the new cart."""
    merged = _merged_items(data.items)
    if not merged:
        return merged, {}
    quotes = await _catalog(ctx).quote(
        list(merged),
        currency=data.currency,
        customer_id=principal.subject if principal is not None else None,
    )
    first: dict[str, int] = {}
    for index, item in enumerate(data.items):
        first.setdefault(item.sku, index)
    for sku in merged:
        _check_quote(
            quotes.get(sku),
            {"currency": data.currency},
            sku,
            f"items.{first[sku]}.sku",
            principal=principal,
        )
    return merged, dict(quotes)


async def add_cart_item(
    ctx: ServiceContext,
    *,
    cart_id: str,
    principal: Principal | None,
    token: str | None,
    data: schemas.CartItemAdd,
    at: datetime | None = None,
) -> schemas.Cart:
    """Add units of a SKU to the cart (a line for the SKU grows)."""
    with _recorded_at(at):
        async with ctx.db.read() as session:
            cart = _check_cart_access(
                await _cart_row(statements(session), cart_id), principal, token
            )
            _ensure_active(cart)
            state = await _load_cart_state(ctx, statements(session), cart)
        # One quote for the new SKU and the lines already there: it checks the SKU and prices
        # the cart the answer shows.
        skus = [line["sku"] for line in state.lines]
        if data.sku not in skus:
            skus.append(data.sku)
        quotes = await _catalog(ctx).quote(
            skus, currency=cart["currency"], customer_id=cart["customer_id"]
        )
        _check_quote(quotes.get(data.sku), cart, data.sku, principal=principal)
        now = _now()
        async with ctx.db.transaction() as session:
            quantity = await _grow_line(ctx, session, cart, data.sku, data.quantity, now)
        lines: list[Mapping[Any, Any]] = [line for line in state.lines if line["sku"] != data.sku]
        before = next((line for line in state.lines if line["sku"] == data.sku), None)
        grown = {"cart_id": cart_id, "sku": data.sku, "quantity": quantity, "added_at": now}
        if before is not None:
            grown["added_at"] = before["added_at"]
            lines.insert(state.lines.index(before), grown)
        else:
            lines.append(grown)
        state.lines = lines
        updated = {**cart, "updated_at": now}
        state.cart = updated
        await _know_buyer(ctx, state)
        return _cart_view(ctx, updated, await _price(ctx, state, quotes=quotes))


async def _grow_line(
    ctx: ServiceContext,
    session: AsyncSession,
    cart: Mapping[Any, Any],
    sku: str,
    quantity: int,
    now: datetime,
) -> int:
    """Add units to a line of a cart read before, in one guarded write; the line's quantity."""
    # The cart must still be the one read: active, with the same owner. The UPDATE also takes
    # the cart's row lock, so two adds to one cart queue here.
    taken = await session.execute(
        update(carts)
        .where(
            carts.c.id == cart["id"],
            carts.c.status == "active",
            carts.c.customer_id.is_(None)
            if cart["customer_id"] is None
            else carts.c.customer_id == cart["customer_id"],
            carts.c.token_hash.is_(None)
            if cart["token_hash"] is None
            else carts.c.token_hash == cart["token_hash"],
        )
        .values(updated_at=now)
    )
    if _rowcount(taken) != 1:
        current = await _cart_row(statements(session), cart["id"])
        if current is not None:
            _ensure_active(current)
        raise NotFound(CART_NOT_FOUND)
    statement = _ADD_UNITS[ctx.db.is_postgres]
    params = {"cart_id": cart["id"], "sku": sku, "quantity": quantity, "added_at": now}
    total = int((await session.execute(statement, params)).scalar_one())
    if total > MAX_LINE_QUANTITY:  # raising rolls the write back
        raise _line_too_big("quantity")
    return total


async def _add_quantity(
    ctx: ServiceContext, session: AsyncSession, cart_id: str, sku: str, quantity: int, current: int
) -> None:
    if current + quantity > MAX_LINE_QUANTITY:
        raise field_error("quantity", f"a line holds at most {MAX_LINE_QUANTITY} units")
    statement = _upsert(ctx)(cart_lines).values(
        cart_id=cart_id, sku=sku, quantity=quantity, added_at=_now()
    )
    statement = statement.on_conflict_do_update(
        index_elements=[cart_lines.c.cart_id, cart_lines.c.sku],
        set_={"quantity": cart_lines.c.quantity + quantity},
    )
    await session.execute(statement)
    await session.execute(update(carts).where(carts.c.id == cart_id).values(updated_at=_now()))


async def discard_cart(ctx: ServiceContext, *, cart_id: str) -> None:
    """Delete an active cart and its lines (a checkout that will not be retried)."""
    async with ctx.db.transaction() as session:
        active = and_(carts.c.id == cart_id, carts.c.status == "active")
        if await session.scalar(select(carts.c.id).where(active)) is None:
            return
        await session.execute(cart_lines.delete().where(cart_lines.c.cart_id == cart_id))
        await session.execute(carts.delete().where(active))


async def set_cart_item(
    ctx: ServiceContext,
    *,
    cart_id: str,
    sku: str,
    principal: Principal | None,
    token: str | None,
    quantity: int,
) -> schemas.Cart:
    """Set a line's quantity; 0 removes the line. Raising it is checked as adding units is:
    the SKU must still be for sale in the cart's currency. Lowering or removing a line is
    always allowed, so a line that can no longer be bought can still be cleaned up."""
    if quantity > 0:
        cart, current = await _cart_and_line(ctx, cart_id, sku, principal, token)
        if current is not None and quantity > current:
            quotes = await _catalog(ctx).quote(
                [sku], currency=cart["currency"], customer_id=cart["customer_id"]
            )
            _check_quote(quotes.get(sku), cart, sku, principal=principal)
    async with ctx.db.transaction() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        where = and_(cart_lines.c.cart_id == cart_id, cart_lines.c.sku == sku)
        if quantity == 0:
            result = await session.execute(cart_lines.delete().where(where))
        else:
            result = await session.execute(
                update(cart_lines).where(where).values(quantity=quantity)
            )
        if _rowcount(result) == 0:
            raise NotFound(f"The cart has no line for {sku}.")
        await session.execute(update(carts).where(carts.c.id == cart_id).values(updated_at=_now()))
    return await _view_cart(ctx, cart_id)


async def _cart_and_line(
    ctx: ServiceContext, cart_id: str, sku: str, principal: Principal | None, token: str | None
) -> tuple[Mapping[Any, Any], int | None]:
    """A cart the caller may change, and the quantity of its line for ``sku`` (None: none)."""
    async with ctx.db.read() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        current = await session.scalar(
            select(cart_lines.c.quantity).where(
                cart_lines.c.cart_id == cart_id, cart_lines.c.sku == sku
            )
        )
    return cart, None if current is None else int(current)


async def apply_voucher(
    ctx: ServiceContext,
    *,
    cart_id: str,
    principal: Principal | None,
    token: str | None,
    code: str,
) -> schemas.Cart:
    """Put a voucher on the cart (one at a time); it must apply to the cart as it is now."""
    async with ctx.db.read() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        voucher = await _voucher_row(statements(session), code)
        if voucher is None:
            raise field_error("code", "no voucher has this code", code="unknown_voucher")
        state = await _load_cart_state(ctx, statements(session), cart)
    state.voucher = None
    priced = await _price(ctx, state)
    domain.check_voucher(
        _voucher_rule(voucher),
        subtotal=Money(priced.totals.subtotal, cart["currency"]),
        now=_now(),
    )
    if voucher["usage_limit"] is not None and voucher["times_used"] >= voucher["usage_limit"]:
        raise field_error("code", "the voucher has been used up", code="used_up")
    async with ctx.db.transaction() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        await session.execute(
            update(carts)
            .where(carts.c.id == cart_id)
            .values(voucher_code=voucher["code"], updated_at=_now())
        )
    return await _view_cart(ctx, cart_id)


async def remove_voucher(
    ctx: ServiceContext,
    *,
    cart_id: str,
    principal: Principal | None,
    token: str | None,
    code: str,
) -> schemas.Cart:
    """Take the voucher off the cart."""
    async with ctx.db.transaction() as session:
        cart = _check_cart_access(await _cart_row(statements(session), cart_id), principal, token)
        _ensure_active(cart)
        if cart["voucher_code"] != domain.normalise_code(code):
            raise NotFound("The cart does not carry this voucher.")
        await session.execute(
            update(carts).where(carts.c.id == cart_id).values(voucher_code=None, updated_at=_now())
        )
    return await _view_cart(ctx, cart_id)


async def merge_cart(
    ctx: ServiceContext, *, cart_id: str, principal: Principal, token: str | None
) -> schemas.Cart:
    """At login: fold the anonymous cart (its id and token) into the customer's active cart in
    the same currency, summing quantities; with no such cart, the customer adopts it. The
    anonymous cart's email is not carried over: a signed-in customer's order goes to their
    account's email unless they give one on their own cart or at checkout (on a shared device
    the guest's address may be someone else's)."""
    if principal.kind != "user" or principal.has(STAFF):
        # Merging is the customer's own sign-in step: staff or a machine client holding a
        # cart's token would otherwise take a guest's cart.
        raise Forbidden(
            "Only the signed-in customer can merge an anonymous cart into their own; staff and "
            "API keys cannot.",
            type="cart-merge-forbidden",
            title="Cart merge forbidden",
        )
    async with ctx.db.transaction() as session:
        # Locked first: two sign-ins merging one guest cart take turns, and the second finds it
        # merged or adopted.
        anonymous = await _cart_row(statements(session), cart_id, lock=True)
        if anonymous is None or anonymous["customer_id"] is not None:
            raise NotFound(CART_NOT_FOUND)
        _check_cart_access(anonymous, None, token)
        _ensure_active(anonymous)
        now = _now()
        for _ in range(CART_RACE_ROUNDS):
            # Locked too: a basket replacing this cart meanwhile waits for the merge, or the
            # merge finds no cart and looks again.
            target = await statements(session).row(
                _ACTIVE_CART_ROW_OF, customer_id=principal.subject, currency=anonymous["currency"]
            )
            if target is not None or await _adopt(session, cart_id, principal.subject, now):
                break
        else:
            raise _cart_contended()
        if target is None:
            result_id = cart_id
        else:
            result_id = target["id"]
            moving = (
                await session.execute(select(cart_lines).where(cart_lines.c.cart_id == cart_id))
            ).mappings()
            for line in list(moving):
                current = await session.scalar(
                    select(cart_lines.c.quantity).where(
                        cart_lines.c.cart_id == result_id, cart_lines.c.sku == line["sku"]
                    )
                )
                room = MAX_LINE_QUANTITY - int(current or 0)
                if room > 0:
                    await _add_quantity(
                        ctx,
                        session,
                        result_id,
                        line["sku"],
                        min(room, line["quantity"]),
                        int(current or 0),
                    )
            fill: dict[str, Any] = {
                name: anonymous[name]
                for name in ("voucher_code", "country", "shipping_method")
                if target[name] is None and anonymous[name] is not None
            }
            fill.update(_merged_addresses(ctx, target, anonymous))
            await session.execute(
                update(carts).where(carts.c.id == result_id).values(**fill, updated_at=now)
            )
            await session.execute(
                update(carts)
                .where(carts.c.id == cart_id)
                .values(status="merged", merged_into=result_id, token_hash=None, updated_at=now)
            )
    return await _view_cart(ctx, result_id)


_ACTIVE_CART_ROW_OF = (
    select(carts)
    .where(
        carts.c.customer_id == bindparam("customer_id"),
        carts.c.status == "active",
        carts.c.currency == bindparam("currency"),
    )
    .with_for_update()
)


async def _adopt(session: AsyncSession, cart_id: str, customer_id: str, now: datetime) -> bool:
    """Make the anonymous cart ``cart_id`` the customer's, but for its email; False when a cart
    of theirs in its currency has just become active (their one active cart): nothing changes."""
    try:
        async with session.begin_nested():
            await session.execute(
                update(carts)
                .where(carts.c.id == cart_id)
                .values(
                    customer_id=customer_id, token_hash=None, email_encrypted=None, updated_at=now
                )
            )
    except IntegrityError as exc:
        if not _active_cart_taken(exc):
            raise
        return False
    return True


def _active_cart_taken(exc: IntegrityError) -> bool:
    """Whether a write broke the one-active-cart index (PostgreSQL names the index, SQLite its
    columns)."""
    message = str(exc.orig)
    return "ux_carts_active_customer_currency" in message or "carts.customer_id" in message


def _merged_addresses(
    ctx: ServiceContext, target: Mapping[Any, Any], anonymous: Mapping[Any, Any]
) -> dict[str, Any]:
    """The address columns a merge sets on the customer's cart: the addresses go as a pair,
    so a cart with either keeps its own, and one with none takes the anonymous cart's, with
    its country (a cart's country follows its shipping address)."""
    columns = (SHIPPING_ADDRESS, BILLING_ADDRESS)
    if any(target[c] is not None for c in columns) or all(anonymous[c] is None for c in columns):
        return {}
    fill: dict[str, Any] = {}
    for column in columns:
        # Each ciphertext is bound to its row: sealed anew for the target.
        address = _address_of(ctx, anonymous, column, "carts")
        fill[column] = _seal_address(ctx, address, column, target["id"], "carts")
    if anonymous[SHIPPING_ADDRESS] is not None:
        fill["country"] = anonymous["country"]
    return fill


# --- checkout -----------------------------------------------------------------------------------


async def _customer_email(ctx: ServiceContext, customer_id: str) -> str | None:
    try:
        identity = ctx.client("identity")
    except LookupError:
        return None
    email: str | None = await identity.get_user_email(customer_id)
    return email


async def place_order(
    ctx: ServiceContext,
    *,
    principal: Principal | None,
    token: str | None,
    data: schemas.CheckoutRequest,
    at: datetime | None = None,
    notify_buyer: bool = True,
) -> schemas.Order:
    """Turn a cart into an order awaiting payment: prices from catalog's quotes, stock reserved
    through catalog, a voucher use counted under its limits, and OrderPlaced in the outbox.
    Without ``notify_buyer`` (orders recorded after the fact, such as the demo's past ones) the
    buyer is never mailed about the order."""
    with _recorded_at(at):
        async with ctx.db.driver_read() as reading:
            cart = _check_cart_access(await _cart_row(reading, data.cart_id), principal, token)
            if cart["status"] == "ordered":
                raise domain.CartAlreadyOrdered(
                    "This cart has already been checked out.", order_id=cart["order_id"]
                )
            _ensure_active(cart)
            # Each address the request gives replaces the cart's.
            shipping = data.shipping_address or _address_of(ctx, cart, SHIPPING_ADDRESS, "carts")
            billing = data.billing_address or _address_of(ctx, cart, BILLING_ADDRESS, "carts")
            # A country the shop does not sell to is among the faults the pricing lists.
            country: str | None = None
            country_field = "country"
            if data.country is not None:
                country = _country(data.country, country_field)
                if data.shipping_address is None and shipping is not None:
                    # The request's own address was checked with the body; the cart's is here.
                    _check_kept_address(cart, country)
            elif shipping is not None:
                country_field = COUNTRY_OF_SHIPPING_ADDRESS
                country = _country(shipping.country, country_field)
            state = await _load_cart_state(
                ctx, reading, cart, country=country, shipping_method=data.shipping_method
            )
        await _know_buyer(ctx, state, email=str(data.email) if data.email else None)
        priced = await _price(
            ctx,
            state,
            country=country,
            country_field=country_field,
            shipping_method=data.shipping_method,
            has_shipping_address=shipping is not None,
        )
        if priced.errors:
            # Every field at fault at once, as the cart's ``problems`` list them.
            raise Unprocessable(
                "The cart cannot be checked out: " + " ".join(priced.problems), errors=priced.errors
            )
        email = state.email
        assert email is not None  # a missing email is among ``priced.errors``
        if priced.voucher_used_up is not None:
            raise domain.VoucherUsedUp(
                priced.voucher_used_up,
                voucher_code=priced.voucher["code"] if priced.voucher is not None else None,
            )

        order_id = new_id()
        now = _now()
        expires_at = now + timedelta(seconds=ctx.settings.orders_reservation_ttl_seconds)
        wanted = [(line.sku, line.quantity) for line in priced.totals.lines]
        claimed = priced.voucher is not None
        if priced.voucher is not None:
            # The voucher's use is counted before any stock is held: a checkout that loses the
            # voucher's race hears so at once, and never holds units another buyer is refused.
            async with ctx.db.driver_write() as tx:
                await _use_voucher(
                    ctx,
                    tx,
                    priced.voucher,
                    order_id=order_id,
                    customer_id=cart["customer_id"],
                    email=email,
                    now=now,
                )
        reserved = False
        try:
            try:
                await _catalog(ctx).reserve(
                    order_id,
                    wanted,
                    ctx.settings.orders_reservation_ttl_seconds + CATALOG_RESERVATION_GRACE_SECONDS,
                    actor=principal.actor if principal is not None else f"guest:{cart['id']}",
                )
            except ProblemError as refused:
                if refused.status >= 500:
                    reserved = True  # catalog could not be reached: it may have reserved
                raise  # else catalog refused (short stock, unknown SKU): it holds nothing
            except BaseException:
                reserved = True  # the call broke off: catalog may have reserved all the same
                raise
            reserved = True
            async with ctx.db.driver_write() as tx:
                written, line_rows = await _write_order(
                    ctx,
                    tx,
                    order_id=order_id,
                    cart=cart,
                    priced=priced,
                    email=email,
                    principal=principal,
                    now=now,
                    expires_at=expires_at,
                    addresses=(shipping, billing),
                    notify_buyer=notify_buyer,
                )
                if int(written["total"]) == 0:
                    written = await _paid_as_placed(ctx, tx, written, line_rows)
        except BaseException:
            await _abandon_checkout(ctx, order_id, reserved=reserved, claimed=claimed)
            raise
        # The answer is built from what was written: nothing else can have changed it yet.
        return _order_from(ctx, written, line_rows, [], staff=_is_staff(principal))


async def _paid_as_placed(
    ctx: ServiceContext,
    tx: Statements,
    order: Mapping[str, Any],
    line_rows: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """An order with nothing to pay (a voucher took it all, shipping free) is paid as it is
    placed, in the same transaction: no payment, no card, and OrderPaid commits its stock."""
    await _mark_paid(
        ctx,
        tx,
        order,
        line_rows,
        actor=SYSTEM,
        payment_id=None,
        amount_paid=0,
        reason="Nothing to pay.",
    )
    return {
        **order,
        "status": OrderStatus.PAID.value,
        "payment_status": domain.PaymentStatus.PAID.value,
        "reservation_expires_at": None,
    }


async def _mark_paid(
    ctx: ServiceContext,
    tx: Statements,
    order: Mapping[str, Any],
    line_rows: Sequence[Mapping[str, Any]],
    *,
    actor: Actor,
    payment_id: str | None,
    amount_paid: int,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Move a pending order to paid (it holds no reservation any more), recording what was
    captured (``partially_paid`` when less than the total), and publish OrderPaid, whose lines
    catalog commits the stock of."""
    await _transition(
        tx,
        order,
        OrderAction.PAY,
        actor=actor,
        reason=reason,
        details=details,
        extra_values={"reservation_expires_at": None, "amount_paid": amount_paid},
        paid_short=amount_paid < int(order["total"]),
    )
    payload = _event_base(order)
    payload["lines"] = _event_lines(line_rows)
    payload["payment_id"] = payment_id
    await ctx.outbox.add(tx, ORDER_PAID, payload)


async def _abandon_checkout(
    ctx: ServiceContext, order_id: str, *, reserved: bool, claimed: bool
) -> None:
    """Give back what a checkout that placed no order took: its stock reservation and its
    voucher use. What cannot be given back now expires (the reservation) or is swept (the use,
    see :func:`release_unplaced_voucher_uses`)."""
    if reserved:
        try:
            await _catalog(ctx).release_reservation(order_id, "checkout_failed")
        except Exception as exc:
            log.warning("reservation_release_failed", order_id=order_id, error=repr(exc))
    if claimed:
        try:
            async with ctx.db.driver_write() as tx:
                await _give_back_use(tx, _RELEASE_UNPLACED_USE, for_order=order_id, at=_now())
        except Exception as exc:
            log.warning("voucher_use_release_failed", order_id=order_id, error=repr(exc))


_TAKE_CART = (
    update(carts)
    .where(carts.c.id == bindparam("cart_id"), carts.c.status == "active")
    .values(status="ordered", order_id=bindparam("order_id"), updated_at=bindparam("at"))
)


_AnyAddress = schemas.Address | schemas.PostalAddress


async def _refuse_taken_cart(tx: Statements, cart_id: str) -> None:
    """Raise why the cart could not be taken for an order at the last write: another checkout
    ordered it meanwhile (a 409 carrying that order's id), or it was merged or deleted."""
    current = await _cart_row(tx, cart_id)
    if current is None:
        raise NotFound(CART_NOT_FOUND)
    if current["status"] != "ordered":
        _ensure_active(current)
    # The winner's write has committed (SQLite writes one at a time; PostgreSQL's guarded
    # UPDATE waited for it), so this read sees the order it placed.
    raise domain.CartAlreadyOrdered(
        "This cart has already been checked out.", order_id=current["order_id"]
    )


async def _write_order(
    ctx: ServiceContext,
    tx: DriverTransaction,
    *,
    order_id: str,
    cart: Mapping[Any, Any],
    priced: _Priced,
    email: str,
    principal: Principal | None,
    now: datetime,
    expires_at: datetime,
    addresses: tuple[_AnyAddress | None, _AnyAddress | None] = (None, None),
    notify_buyer: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if await tx.execute(_TAKE_CART, cart_id=cart["id"], order_id=order_id, at=now) != 1:
        await _refuse_taken_cart(tx, cart["id"])
    totals = priced.totals
    number = await _next_order_number(ctx, tx)
    order_row: dict[str, Any] = {
        "id": order_id,
        "number": number,
        "cart_id": cart["id"],
        "cart_token_hash": cart["token_hash"],
        "customer_id": cart["customer_id"],
        "email_encrypted": _seal(ctx, email, "orders", order_id),
        "email_index": email_index(ctx, email),
        SHIPPING_ADDRESS: _seal_address(ctx, addresses[0], SHIPPING_ADDRESS, order_id),
        BILLING_ADDRESS: _seal_address(ctx, addresses[1], BILLING_ADDRESS, order_id),
        "status": OrderStatus.PENDING_PAYMENT.value,
        "fulfillment_status": domain.FulfillmentStatus.UNFULFILLED.value,
        "payment_status": domain.PaymentStatus.PENDING.value,
        "amount_paid": 0,
        "currency": totals.currency,
        "country": priced.country,
        "shipping_method": priced.shipping_method,
        "voucher_code": priced.voucher["code"] if priced.voucher is not None else None,
        "prices_include_tax": totals.prices_include_tax,
        "tax_rate_bp": totals.tax_rate_bp,
        "subtotal": totals.subtotal,
        "discount_total": totals.discount_total,
        "shipping_total": totals.shipping_total,
        "shipping_tax": totals.shipping_tax,
        "tax_total": totals.tax_total,
        "total": totals.total,
        "refunded_total": 0,
        "weight_grams": totals.weight_grams,
        "reservation_expires_at": expires_at,
        "notify_buyer": notify_buyer,
        "created_at": now,
        "updated_at": now,
    }
    await tx.insert(orders, order_row)
    line_rows = []
    for position, line in enumerate(totals.lines):
        quote = priced.quotes[line.sku]
        name = quote.product_name
        if quote.variant_name:
            name = f"{name} — {quote.variant_name}"
        line_rows.append(
            {
                "id": new_id(),
                "order_id": order_id,
                "position": position,
                "sku": line.sku,
                "product_id": quote.product_id,
                "name": name[:400],
                "quantity": line.quantity,
                "unit_price": line.unit_price,
                "subtotal": line.subtotal,
                "discount": line.discount,
                "tax": line.tax,
                "total": line.total,
                "weight_grams": quote.weight_grams,
                "fulfilled_quantity": 0,
                "returned_quantity": 0,
                "refunded_quantity": 0,
            }
        )
    await tx.insert(order_lines, line_rows)
    await _record(
        tx,
        order_id,
        kind="transition",
        actor=Actor.of(principal),
        action="place",
        to_status=OrderStatus.PENDING_PAYMENT.value,
        details={"number": number, "total": totals.total, "currency": totals.currency},
        now=now,
    )
    payload = _event_base(
        {
            "id": order_id,
            "number": number,
            "customer_id": cart["customer_id"],
            "currency": totals.currency,
            "total": totals.total,
        }
    )
    payload["lines"] = _event_lines(line_rows)
    payload["reservation_expires_at"] = expires_at.isoformat()
    await ctx.outbox.add(tx, ORDER_PLACED, payload)
    return order_row, line_rows


_COUNT_VOUCHER_USE = (
    update(vouchers)
    .where(
        vouchers.c.id == bindparam("voucher_id"),
        vouchers.c.active.is_(True),
        or_(vouchers.c.usage_limit.is_(None), vouchers.c.times_used < vouchers.c.usage_limit),
    )
    .values(times_used=vouchers.c.times_used + 1)
)


async def _use_voucher(
    ctx: ServiceContext,
    tx: DriverTransaction,
    voucher: Mapping[Any, Any],
    *,
    order_id: str,
    customer_id: str | None,
    email: str,
    now: datetime,
) -> None:
    # The guarded increment takes the voucher's row lock until commit, so concurrent checkouts
    # with the same voucher queue here; the per-customer count below then sees every use that
    # committed before it, its order written or not.
    if await tx.execute(_COUNT_VOUCHER_USE, voucher_id=voucher["id"]) != 1:
        raise domain.VoucherUsedUp(
            f"The voucher {voucher['code']} has been used up.", voucher_code=voucher["code"]
        )
    limit = voucher["per_customer_limit"]
    if limit is not None:
        used = await _uses_by_buyer(ctx, tx, voucher["id"], customer_id=customer_id, email=email)
        if used >= limit:
            raise domain.VoucherUsedUp(_per_customer_message(voucher), voucher_code=voucher["code"])
    index = email_index(ctx, email)
    await tx.insert(
        voucher_usages,
        {
            "id": new_id(),
            "voucher_id": voucher["id"],
            "order_id": order_id,
            "holder": customer_id or f"email:{index}",
            "email_index": index,
            "created_at": now,
        },
    )


_RELEASE_USE = (
    update(voucher_usages)
    .where(
        voucher_usages.c.order_id == bindparam("for_order"), voucher_usages.c.released_at.is_(None)
    )
    .values(released_at=bindparam("at"))
    .returning(voucher_usages.c.voucher_id)
)
# The use counted for a checkout whose order was never written; one whose order did commit keeps
# its use, however its request ended.
_RELEASE_UNPLACED_USE = _RELEASE_USE.where(
    ~select(orders.c.id).where(orders.c.id == bindparam("for_order")).exists()
)
_UNCOUNT_VOUCHER_USE = (
    update(vouchers)
    .where(vouchers.c.id == bindparam("voucher_id"), vouchers.c.times_used > 0)
    .values(times_used=vouchers.c.times_used - 1)
)


async def _give_back_use(tx: Statements, release: Any, **params: Any) -> None:
    """Release an order's voucher use with ``release`` (one of the statements above), and
    count it off its voucher."""
    voucher_id = await tx.scalar(release, **params)
    if voucher_id is not None:
        await tx.execute(_UNCOUNT_VOUCHER_USE, voucher_id=voucher_id)


_NEXT_ORDER_NUMBER = (
    update(order_numbers)
    .where(order_numbers.c.id == 1)
    .values(last_number=order_numbers.c.last_number + 1)
    .returning(order_numbers.c.last_number)
)


# The counter's first row, should the migration's be missing; a concurrent first insert wins
# and this one then counts on from it.
_FIRST_ORDER_NUMBER = {
    postgres: upsert(order_numbers).values(id=1, last_number=100_001).on_conflict_do_nothing()
    for postgres, upsert in ((False, sqlite_insert), (True, pg_insert))
}


async def _next_order_number(ctx: ServiceContext, tx: DriverTransaction) -> str:
    number = await tx.scalar(_NEXT_ORDER_NUMBER)
    if number is None:
        if await tx.execute(_FIRST_ORDER_NUMBER[ctx.db.is_postgres]) != 1:
            return await _next_order_number(ctx, tx)
        number = 100_001
    return f"{ctx.settings.orders_number_prefix}{number}"


def _event_base(order: Mapping[str, Any] | RowMapping) -> dict[str, Any]:
    # Events carry no email: they are kept in the outbox and on the bus, and consumers that need
    # to reach the buyer ask orders for the order.
    return {
        "order_id": order["id"],
        "number": order["number"],
        "customer_id": order["customer_id"],
        "currency": order["currency"],
        "total": order["total"],
    }


def _event_lines(lines: Sequence[Mapping[str, Any] | RowMapping]) -> list[dict[str, Any]]:
    return [
        {
            "line_id": line["id"],
            "sku": line["sku"],
            "quantity": line["quantity"],
            "unit_price": line["unit_price"],
            "total": line["total"],
        }
        for line in lines
    ]


# --- orders: reads ------------------------------------------------------------------------------


async def _order_row(
    tx: Statements, order_id: str, *, lock: bool = False
) -> Mapping[Any, Any] | None:
    return await tx.row(_ORDER_LOCKED if lock else _ORDER, order_id=order_id)


async def _line_rows(tx: Statements, order_id: str) -> list[Mapping[Any, Any]]:
    return list(await tx.rows(_ORDER_LINES, order_id=order_id))


def _line_view(row: Mapping[Any, Any]) -> schemas.OrderLine:
    return schemas.OrderLine(
        line_id=row["id"],
        sku=row["sku"],
        product_id=row["product_id"],
        name=row["name"],
        quantity=row["quantity"],
        unit_price=row["unit_price"],
        subtotal=row["subtotal"],
        discount=row["discount"],
        tax=row["tax"],
        total=row["total"],
        fulfilled_quantity=row["fulfilled_quantity"],
        returned_quantity=row["returned_quantity"],
        refunded_quantity=row["refunded_quantity"],
    )


def _summary_fields(
    ctx: ServiceContext, row: Mapping[Any, Any], lines: Sequence[Mapping[Any, Any]]
) -> dict[str, Any]:
    buyer = buyer_of(ctx, row)
    return {
        "id": row["id"],
        "number": row["number"],
        "customer_id": row["customer_id"],
        "email": buyer.email,
        "status": OrderStatus(row["status"]),
        "fulfillment_status": domain.FulfillmentStatus(row["fulfillment_status"]),
        "payment_status": domain.PaymentStatus(row["payment_status"]),
        "amount_paid": row["amount_paid"],
        "currency": row["currency"],
        "subtotal": row["subtotal"],
        "discount_total": row["discount_total"],
        "tax_total": row["tax_total"],
        "shipping_total": row["shipping_total"],
        "total": row["total"],
        "prices_include_tax": bool(row["prices_include_tax"]),
        "tax_rate_bp": row["tax_rate_bp"],
        "shipping_tax": row["shipping_tax"],
        "shipping_address": buyer.shipping_address,
        "billing_address": buyer.billing_address,
        "lines": [_line_view(line) for line in lines],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "reservation_expires_at": row["reservation_expires_at"],
    }


async def _order_view(
    ctx: ServiceContext, session: AsyncSession, row: Mapping[Any, Any], *, staff: bool
) -> schemas.Order:
    lines = await _line_rows(statements(session), row["id"])
    shipped = (
        await session.execute(
            select(fulfillments)
            .where(fulfillments.c.order_id == row["id"])
            .order_by(fulfillments.c.created_at, fulfillments.c.id)
        )
    ).mappings()
    return _order_from(ctx, row, lines, list(shipped), staff=staff)


def _order_from(
    ctx: ServiceContext,
    row: Mapping[Any, Any],
    lines: Sequence[Mapping[Any, Any]],
    shipped: Sequence[Mapping[Any, Any]],
    *,
    staff: bool,
) -> schemas.Order:
    """The order as its reader sees it: ``allowed_actions`` are staff's, or the buyer's."""
    return schemas.Order(
        **_summary_fields(ctx, row, lines),
        country=row["country"],
        shipping_method=row["shipping_method"],
        voucher_code=row["voucher_code"],
        refunded_total=row["refunded_total"],
        allowed_actions=domain.allowed_actions(_state_of(row), _progress(lines), staff=staff),
        fulfillments=[
            schemas.Fulfillment(
                id=f["id"],
                tracking_number=f["tracking_number"],
                carrier=f["carrier"],
                lines=list(f["lines"]),
                created_at=f["created_at"],
            )
            for f in shipped
        ],
    )


def _is_staff(principal: Principal | None) -> bool:
    """Whether the caller runs orders (fulfils, refunds) rather than buys them."""
    return principal is not None and principal.has(STAFF)


def _state_of(order: Mapping[Any, Any]) -> domain.OrderState:
    return domain.OrderState(
        OrderStatus(order["status"]),
        domain.FulfillmentStatus(order["fulfillment_status"]),
        domain.PaymentStatus(order["payment_status"]),
    )


def _ensure_reach(
    row: Mapping[Any, Any] | None, principal: Principal | None, token: str | None, *, bypass: str
) -> Mapping[Any, Any]:
    if row is None:
        raise NotFound(ORDER_NOT_FOUND)
    if principal is not None and (principal.has(bypass) or row["customer_id"] is not None):
        ensure_owner(principal, row["customer_id"], bypass=bypass, detail=ORDER_NOT_FOUND)
        return row
    # A guest reaches the order placed from their cart with that cart's token.
    stored = row["cart_token_hash"]
    if (
        row["customer_id"] is None
        and token
        and stored
        and secrets.compare_digest(hash_token(token), stored)
    ):
        return row
    raise NotFound(ORDER_NOT_FOUND)


async def get_order(
    ctx: ServiceContext,
    *,
    order_id: str,
    principal: Principal | None = None,
    token: str | None = None,
    check_access: bool = False,
) -> schemas.Order:
    """One order with its lines and fulfilments; others' orders answer like missing ones."""
    async with ctx.db.read() as session:
        row = await _order_row(statements(session), order_id)
        if check_access:
            row = _ensure_reach(row, principal, token, bypass=READ_ALL)
        elif row is None:
            raise NotFound(ORDER_NOT_FOUND)
        # Without a caller (another use case of orders) the view is staff's.
        staff = _is_staff(principal) or (principal is None and token is None)
        return await _order_view(ctx, session, row, staff=staff)


_SUMMARY_ORDER = (
    *("id", "number", "customer_id", "email_encrypted", "status", "currency", "subtotal"),
    *("discount_total", "tax_total", "shipping_total", "total", "created_at", "updated_at"),
    *("reservation_expires_at", "prices_include_tax", "tax_rate_bp", "shipping_tax"),
    *("shipping_address_encrypted", "billing_address_encrypted"),
    *("fulfillment_status", "payment_status", "amount_paid"),
)
_SUMMARY_LINE = (
    *("id", "sku", "product_id", "name", "quantity", "unit_price", "subtotal", "discount"),
    *("tax", "total", "fulfilled_quantity", "returned_quantity", "refunded_quantity"),
)


class OrderRead:
    """Some columns of an order and of its lines (in position order), read in one statement
    (one snapshot) on the driver: for the readers that need less than the order's page (no
    fulfilments, no allowed actions). The order's columns include ``id``, the lines' ``id``."""

    __slots__ = ("line_columns", "order_columns", "statement")

    def __init__(self, order_columns: Sequence[str], line_columns: Sequence[str]) -> None:
        self.order_columns = tuple(order_columns)
        self.line_columns = tuple(line_columns)
        self.statement = (
            select(
                *(orders.c[name] for name in self.order_columns),
                *(order_lines.c[name].label(f"line_{name}") for name in self.line_columns),
            )
            .select_from(orders.outerjoin(order_lines, order_lines.c.order_id == orders.c.id))
            .where(orders.c.id == bindparam("order_id"))
            .order_by(order_lines.c.position)
        )

    async def fetch(
        self, ctx: ServiceContext, order_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The order's row and its lines' rows, by column name (NotFound without the order)."""
        found = await ctx.db.fetch(ctx.db.compile_read(self.statement), order_id=order_id)
        if not found:
            raise NotFound(ORDER_NOT_FOUND)
        width = len(self.order_columns)
        row = dict(zip(self.order_columns, found[0][:width], strict=True))
        lines = [
            dict(zip(self.line_columns, line[width:], strict=True))
            for line in found
            if line[width] is not None
        ]
        return row, lines


# Other services ask for it several times per checkout.
_ORDER_SUMMARY = OrderRead(_SUMMARY_ORDER, _SUMMARY_LINE)


async def get_order_summary(ctx: ServiceContext, *, order_id: str) -> schemas.OrderSummary:
    """What payments needs to charge an order (amount, currency, buyer, lines)."""
    row, lines = await _ORDER_SUMMARY.fetch(ctx, order_id)
    for name in ("created_at", "reservation_expires_at"):
        row[name] = as_utc_datetime(row[name])
    return schemas.OrderSummary(**_summary_fields(ctx, row, lines))


# The first value of a ``sort=updated_at`` cursor: a cursor of the default order is refused there.
_BY_CHANGE = "updated_at"


async def list_orders(
    ctx: ServiceContext,
    *,
    principal: Principal,
    status: OrderStatus | None = None,
    fulfillment_status: domain.FulfillmentStatus | None = None,
    payment_status: domain.PaymentStatus | None = None,
    customer_id: str | None = None,
    email: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    updated_since: datetime | None = None,
    sort: schemas.OrderSort = "-created_at",
    cursor: str | None = None,
    limit: int = 50,
) -> schemas.OrderPage:
    """Orders newest first, or (``sort="updated_at"``) least recently changed first for an
    incremental sync: a customer's own, or (staff) everyone's, filtered (by customer id, by the
    buyer's exact email through its blind index, by when they were placed or last changed). A
    customer asking for another customer's orders is refused rather than shown their own under
    that filter."""
    query = select(orders)
    owner = owner_filter(principal, bypass=READ_ALL)
    if owner is not None:
        if customer_id is not None and customer_id != owner:
            message = "a customer lists only their own orders: leave it out or give your own id"
            raise Forbidden(
                f"customer_id: {message}.",
                type="orders-of-another-customer",
                title="Another customer's orders",
                errors=[
                    {"field": "customer_id", "in": "query", "message": message, "code": "not_own"}
                ],
            )
        query = query.where(orders.c.customer_id == owner)
    elif customer_id is not None:
        query = query.where(orders.c.customer_id == customer_id)
    if email is not None:
        query = query.where(orders.c.email_index == email_index(ctx, email))
    if status is not None:
        query = query.where(orders.c.status == status.value)
    if fulfillment_status is not None:
        query = query.where(orders.c.fulfillment_status == fulfillment_status.value)
    if payment_status is not None:
        query = query.where(orders.c.payment_status == payment_status.value)
    refuse_inverted_range("created_from", created_from, "created_to", created_to)
    if created_from is not None:
        query = query.where(orders.c.created_at >= created_from)
    if created_to is not None:
        query = query.where(orders.c.created_at < created_to)
    if updated_since is not None:
        query = query.where(orders.c.updated_at >= updated_since)
    by_change = sort == "updated_at"
    if cursor:
        if by_change:
            # The sort is in the cursor, so a cursor of one order is never read as the other's.
            kind, moment, last_id = decode_cursor(cursor, str, datetime, str)
            if kind != _BY_CHANGE:
                raise InvalidCursor()
            query = query.where(
                or_(
                    orders.c.updated_at > moment,
                    and_(orders.c.updated_at == moment, orders.c.id > last_id),
                )
            )
        else:
            moment, last_id = decode_cursor(cursor, datetime, str)
            query = query.where(
                or_(
                    orders.c.created_at < moment,
                    and_(orders.c.created_at == moment, orders.c.id < last_id),
                )
            )
    limit = max(1, min(limit, PAGE_LIMIT))
    if by_change:
        query = query.order_by(orders.c.updated_at, orders.c.id)
    else:
        query = query.order_by(orders.c.created_at.desc(), orders.c.id.desc())
    query = query.limit(limit + 1)
    async with ctx.db.read() as session:
        rows = list((await session.execute(query)).mappings())
        page = rows[:limit]
        ids = [row["id"] for row in page]
        lines_by_order: dict[str, list[RowMapping]] = {i: [] for i in ids}
        if ids:
            found = await session.execute(
                select(order_lines)
                .where(order_lines.c.order_id.in_(ids))
                .order_by(order_lines.c.position)
            )
            for line in found.mappings():
                lines_by_order[line["order_id"]].append(line)
    items = [schemas.OrderSummary(**_summary_fields(ctx, r, lines_by_order[r["id"]])) for r in page]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = (
            encode_cursor(_BY_CHANGE, last["updated_at"], last["id"])
            if by_change
            else encode_cursor(last["created_at"], last["id"])
        )
    return schemas.OrderPage(items=items, next_cursor=next_cursor)


async def order_history_of(
    ctx: ServiceContext, *, order_id: str, principal: Principal | None, token: str | None = None
) -> list[schemas.HistoryEntry]:
    """Every transition, note and payment event of an order, oldest first. Staff notes are
    internal: the customer's view leaves them out."""
    query = select(order_history).where(order_history.c.order_id == order_id)
    if principal is None or not principal.has(READ_ALL):
        query = query.where(order_history.c.kind != "note")
    async with ctx.db.read() as session:
        _ensure_reach(
            await _order_row(statements(session), order_id), principal, token, bypass=READ_ALL
        )
        rows = (await session.execute(query.order_by(order_history.c.position))).mappings()
        return [
            schemas.HistoryEntry(
                id=r["id"],
                occurred_at=r["occurred_at"],
                kind=r["kind"],
                action=r["action"],
                from_status=r["from_status"],
                to_status=r["to_status"],
                actor_kind=r["actor_kind"],
                actor_id=r["actor_id"],
                reason=r["reason"],
                details=dict(r["details"]),
            )
            for r in rows
        ]


# --- orders: the life cycle ---------------------------------------------------------------------


_HISTORY_COLUMNS = (
    *("id", "order_id", "occurred_at", "kind", "action", "from_status", "to_status"),
    *("actor_kind", "actor_id", "reason", "details"),
)
_RECORD = insert(order_history).values(
    {order_history.c[name]: bindparam(name) for name in _HISTORY_COLUMNS}
)

_TOUCH_ORDER = (
    update(orders).where(orders.c.id == bindparam("order_id")).values(updated_at=bindparam("at"))
)


async def _record(
    tx: Statements,
    order_id: str,
    *,
    kind: str,
    actor: Actor,
    action: str | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    occurred_at = now or _now()
    if kind != "transition":
        # A transition moves ``updated_at`` with the status; a note or an event must too, so an
        # incremental sync (``updated_since``) sees every change of the order.
        await tx.execute(_TOUCH_ORDER, order_id=order_id, at=occurred_at)
    await tx.execute(
        _RECORD,
        id=new_id(),
        order_id=order_id,
        occurred_at=occurred_at,
        kind=kind,
        action=action,
        from_status=from_status,
        to_status=to_status,
        actor_kind=actor.kind,
        actor_id=actor.id,
        reason=reason,
        details=dict(details or {}),
    )


_MOVES: dict[tuple[str, ...], Any] = {}


def _move(names: tuple[str, ...]) -> Any:
    """The UPDATE that moves an order from ``from_status`` to ``to_status`` (guarded: it must
    still be in ``from_status``), also setting the columns ``names`` (``new_<name>``); built
    once per set of names."""
    found = _MOVES.get(names)
    if found is None:
        found = _MOVES[names] = (
            update(orders)
            .where(
                orders.c.id == bindparam("order_id"), orders.c.status == bindparam("from_status")
            )
            .values(
                {
                    orders.c.status: bindparam("to_status"),
                    orders.c.updated_at: bindparam("at"),
                    **{orders.c[name]: bindparam(f"new_{name}") for name in names},
                }
            )
        )
    return found


async def _transition(
    tx: Statements,
    order: Mapping[Any, Any],
    action: OrderAction,
    *,
    actor: Actor,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    extra_values: Mapping[str, Any] | None = None,
    paid_short: bool = False,
    lines: Sequence[domain.LineProgress] | None = None,
) -> OrderStatus:
    """Move an order along the transitions table, guarded against a concurrent change; its
    fulfilment and payment statuses follow (``extra_values`` may set them otherwise). With
    the order's ``lines``, a refused fulfilment action says how many units are fulfilled."""
    current = OrderStatus(order["status"])
    state = domain.advance(_state_of(order), action, paid_short=paid_short, lines=lines)
    target = state.status
    now = _now()
    extra = {
        "fulfillment_status": state.fulfillment.value,
        "payment_status": state.payment.value,
        **(extra_values or {}),
    }
    names = tuple(sorted(extra))
    changed = await tx.execute(
        _move(names),
        order_id=order["id"],
        from_status=current.value,
        to_status=target.value,
        at=now,
        **{f"new_{name}": extra[name] for name in names},
    )
    if changed != 1:
        raise domain.IllegalTransition("The order changed meanwhile; reload it and try again.")
    await _record(
        tx,
        order["id"],
        kind="transition",
        actor=actor,
        action=action.value,
        from_status=current.value,
        to_status=target.value,
        reason=reason,
        details=details,
        now=now,
    )
    return target


async def _final_view(
    ctx: ServiceContext, session: AsyncSession, order_id: str, *, staff: bool = True
) -> schemas.Order:
    """The order as the caller's transaction leaves it (read before it commits)."""
    row = await _order_row(statements(session), order_id)
    if row is None:
        raise NotFound(ORDER_NOT_FOUND)
    return await _order_view(ctx, session, row, staff=staff)


async def _locked_order(session: AsyncSession, order_id: str) -> Mapping[Any, Any]:
    row = await _order_row(statements(session), order_id, lock=True)
    if row is None:
        raise NotFound(ORDER_NOT_FOUND)
    return row


async def cancel_order(
    ctx: ServiceContext,
    *,
    order_id: str,
    principal: Principal | None,
    reason: str | None,
    token: str | None = None,
    at: datetime | None = None,
) -> schemas.Order:
    """Cancel an unpaid order (its customer, its guest with the cart's token, or staff); the
    stock and voucher use are released."""
    if principal is not None:
        ensure(principal, WRITE_OWN)
    with _recorded_at(at):
        async with ctx.db.transaction() as session:
            order = _ensure_reach(
                await _order_row(statements(session), order_id, lock=True),
                principal,
                token,
                bypass=STAFF,
            )
            await _cancel(
                ctx, session, order, OrderAction.CANCEL, actor=Actor.of(principal), reason=reason
            )
            return await _final_view(ctx, session, order_id, staff=_is_staff(principal))


async def _cancel(
    ctx: ServiceContext,
    session: AsyncSession,
    order: Mapping[Any, Any],
    action: OrderAction,
    *,
    actor: Actor,
    reason: str | None,
) -> None:
    # No stock is held for a cancelled order any more, as for a paid one.
    await _transition(
        statements(session),
        order,
        action,
        actor=actor,
        reason=reason,
        extra_values={"reservation_expires_at": None},
    )
    await _give_back_use(statements(session), _RELEASE_USE, for_order=order["id"], at=_now())
    payload = _event_base(order)
    payload["reason"] = reason or action.value
    await ctx.outbox.add(session, ORDER_CANCELLED, payload)


async def cancel_expired_orders(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = 100
) -> int:
    """The sweeper: cancel orders still unpaid after their stock reservation expired."""
    moment = now or _now()
    async with ctx.db.read() as session:
        due = list(
            (
                await session.execute(
                    select(orders.c.id)
                    .where(
                        orders.c.status == OrderStatus.PENDING_PAYMENT.value,
                        orders.c.reservation_expires_at <= moment,
                    )
                    .order_by(orders.c.reservation_expires_at)
                    .limit(limit)
                )
            ).scalars()
        )
    cancelled = 0
    for order_id in due:
        try:
            async with ctx.db.transaction() as session:
                order = await _locked_order(session, order_id)
                expires = order["reservation_expires_at"]
                if (
                    order["status"] != OrderStatus.PENDING_PAYMENT.value
                    or expires is None
                    or expires > moment
                ):
                    continue
                await _cancel(
                    ctx,
                    session,
                    order,
                    OrderAction.EXPIRE,
                    actor=SYSTEM,
                    reason="reservation_expired",
                )
                cancelled += 1
        except ProblemError as exc:  # paid meanwhile: nothing to sweep
            log.info("sweep_skipped", order_id=order_id, error=exc.detail)
    return cancelled


_UNPLACED_USES = (
    select(voucher_usages.c.order_id)
    .where(
        voucher_usages.c.released_at.is_(None),
        voucher_usages.c.created_at <= bindparam("before"),
        ~select(orders.c.id).where(orders.c.id == voucher_usages.c.order_id).exists(),
    )
    .order_by(voucher_usages.c.created_at)
    .limit(100)
)


async def release_unplaced_voucher_uses(ctx: ServiceContext, *, now: datetime | None = None) -> int:
    """Give back voucher uses counted for checkouts that never wrote their order (the process
    stopped between the two), once older than a stock reservation lasts; returns how many."""
    before = (now or _now()) - timedelta(seconds=ctx.settings.orders_reservation_ttl_seconds)
    async with ctx.db.driver_read() as reading:
        found = [row["order_id"] for row in await reading.rows(_UNPLACED_USES, before=before)]
    for order_id in found:
        async with ctx.db.driver_write() as tx:
            await _give_back_use(tx, _RELEASE_UNPLACED_USE, for_order=order_id, at=_now())
    return len(found)


async def sweep_expired_orders(ctx: ServiceContext) -> None:
    """The periodic job's entry point."""
    while await cancel_expired_orders(ctx) == 100:
        pass
    while await release_unplaced_voucher_uses(ctx) == 100:
        pass


async def add_note(
    ctx: ServiceContext, *, order_id: str, principal: Principal, text: str
) -> schemas.HistoryEntry:
    """Staff add a note to an order's history."""
    async with ctx.db.transaction() as session:
        order = await _locked_order(session, order_id)
        await _record(
            statements(session), order["id"], kind="note", actor=Actor.of(principal), reason=text
        )
    history = await order_history_of(ctx, order_id=order_id, principal=principal)
    return history[-1]


def _progress(lines: Sequence[Mapping[Any, Any]]) -> list[domain.LineProgress]:
    return [
        domain.LineProgress(
            line_id=line["id"],
            quantity=line["quantity"],
            fulfilled=line["fulfilled_quantity"],
            returned=line["returned_quantity"],
            refunded=line["refunded_quantity"],
        )
        for line in lines
    ]


async def fulfil_lines(
    ctx: ServiceContext,
    *,
    order_id: str,
    principal: Principal,
    data: schemas.FulfillmentCreate,
    at: datetime | None = None,
) -> schemas.Order:
    """Staff ship some or all remaining units with a tracking number."""
    with _recorded_at(at):
        shipping = {line.line_id: line.quantity for line in data.lines}
        async with ctx.db.transaction() as session:
            order = await _locked_order(session, order_id)
            lines = await _line_rows(statements(session), order_id)
            domain.advance(_state_of(order), OrderAction.FULFIL_PARTIALLY, lines=_progress(lines))
            action = domain.fulfilment_action(_progress(lines), shipping)
            fulfillment_id = new_id()
            by_id = {line["id"]: line for line in lines}
            shipped = [
                {"line_id": line_id, "sku": by_id[line_id]["sku"], "quantity": quantity}
                for line_id, quantity in shipping.items()
            ]
            await _transition(
                statements(session),
                order,
                action,
                actor=Actor.of(principal),
                details={
                    "fulfillment_id": fulfillment_id,
                    "tracking_number": data.tracking_number,
                    "lines": shipped,
                },
            )
            for line_id, quantity in shipping.items():
                await session.execute(
                    update(order_lines)
                    .where(order_lines.c.id == line_id)
                    .values(fulfilled_quantity=order_lines.c.fulfilled_quantity + quantity)
                )
            await session.execute(
                insert(fulfillments).values(
                    id=fulfillment_id,
                    order_id=order_id,
                    tracking_number=data.tracking_number,
                    carrier=data.carrier,
                    lines=shipped,
                    created_by=principal.subject,
                    created_at=_now(),
                )
            )
            parcel = _event_base(order)
            parcel.update(
                fulfillment_id=fulfillment_id,
                tracking_number=data.tracking_number,
                carrier=data.carrier,
                lines=shipped,
            )
            await ctx.outbox.add(session, ORDER_FULFILLMENT_CREATED, parcel)
            if action is OrderAction.FULFIL:
                payload = _event_base(order)
                payload.update(fulfillment_id=fulfillment_id, tracking_number=data.tracking_number)
                await ctx.outbox.add(session, ORDER_FULFILLED, payload)
            return await _final_view(ctx, session, order_id)


async def change_status(
    ctx: ServiceContext,
    *,
    order_id: str,
    principal: Principal,
    action: Literal[OrderAction.SHIP, OrderAction.DELIVER],
    reason: str | None,
    at: datetime | None = None,
) -> schemas.Order:
    """Staff mark an order shipped or delivered."""
    with _recorded_at(at):
        async with ctx.db.transaction() as session:
            order = await _locked_order(session, order_id)
            progress = _progress(await _line_rows(statements(session), order_id))
            await _transition(
                statements(session),
                order,
                action,
                actor=Actor.of(principal),
                reason=reason,
                lines=progress,
            )
            return await _final_view(ctx, session, order_id)


async def return_lines(
    ctx: ServiceContext, *, order_id: str, principal: Principal, data: schemas.ReturnCreate
) -> schemas.Order:
    """Staff record units coming back from the customer (the refund is a payment's matter)."""
    returning = {line.line_id: line.quantity for line in data.lines}
    async with ctx.db.transaction() as session:
        order = await _locked_order(session, order_id)
        domain.advance(_state_of(order), OrderAction.RETURN_LINES)
        lines = await _line_rows(statements(session), order_id)
        domain.check_return(_progress(lines), returning)
        for line_id, quantity in returning.items():
            await session.execute(
                update(order_lines)
                .where(order_lines.c.id == line_id)
                .values(returned_quantity=order_lines.c.returned_quantity + quantity)
            )
        await _transition(
            statements(session),
            order,
            OrderAction.RETURN_LINES,
            actor=Actor.of(principal),
            reason=data.reason,
            details={"lines": [{"line_id": k, "quantity": v} for k, v in returning.items()]},
        )
    return await get_order(ctx, order_id=order_id)


# --- payments' events ---------------------------------------------------------------------------


async def record_payment_succeeded(
    ctx: ServiceContext, tx: Statements, payload: Mapping[str, Any]
) -> None:
    """A payment captured or authorised: a pending order becomes paid and OrderPaid goes out."""
    order = await _order_row(tx, str(payload.get("order_id")), lock=True)
    if order is None:
        log.warning("payment_for_unknown_order", order_id=payload.get("order_id"))
        return
    details = {
        k: payload.get(k)
        for k in ("payment_id", "amount", "captured_amount", "currency")
        if k in payload
    }
    if order["status"] != OrderStatus.PENDING_PAYMENT.value:
        if await _paid_by(tx, order["id"]) == payload.get("payment_id"):
            return  # the payment that paid the order, told again
        # Cancelled (by its buyer, staff or the reservation's expiry) before the money came, or
        # paid by another payment: the order refuses this one, and payments refunds it in full.
        await _record(
            tx,
            order["id"],
            kind="event",
            actor=PAYMENTS,
            action="payment_refused",
            reason=f"Payment received while the order is {order['status']}: refunded in full.",
            details=details,
        )
        await ctx.outbox.add(
            tx,
            ORDER_PAYMENT_REFUSED,
            {
                "order_id": order["id"],
                "number": order["number"],
                "payment_id": payload.get("payment_id"),
                "status": order["status"],
            },
        )
        return
    await _mark_paid(
        ctx,
        tx,
        order,
        await _line_rows(tx, order["id"]),
        actor=PAYMENTS,
        payment_id=payload.get("payment_id"),
        amount_paid=_captured(payload),
        details=details,
    )


def _captured(payload: Mapping[str, Any]) -> int:
    """What a PaymentSucceeded says was captured: less than the amount after a partial manual
    capture (the rest released)."""
    captured = payload.get("captured_amount")
    if captured is None:
        captured = payload.get("amount")
    return int(captured or 0)


_PAYING = select(order_history.c.details).where(
    order_history.c.order_id == bindparam("order_id"),
    order_history.c.action == OrderAction.PAY.value,
)


async def _paid_by(tx: Statements, order_id: str) -> str | None:
    """The payment that paid the order, as its history recorded it (None if none did)."""
    for row in await tx.rows(_PAYING, order_id=order_id):
        details = row["details"] or {}
        if details.get("payment_id"):
            return str(details["payment_id"])
    return None


async def record_payment_failed(
    ctx: ServiceContext, tx: Statements, payload: Mapping[str, Any]
) -> None:
    """A failed payment is noted; the order stays awaiting payment so the customer can retry."""
    order = await _order_row(tx, str(payload.get("order_id")))
    if order is None:
        log.warning("payment_for_unknown_order", order_id=payload.get("order_id"))
        return
    await _record(
        tx,
        order["id"],
        kind="event",
        actor=PAYMENTS,
        action="payment_failed",
        reason=str(payload.get("reason") or "payment failed"),
        details={k: payload.get(k) for k in ("payment_id", "decline_code") if k in payload},
    )


_REFUND_UNITS = (
    update(order_lines)
    .where(order_lines.c.id == bindparam("line_id"))
    .values(refunded_quantity=order_lines.c.refunded_quantity + bindparam("units"))
)


async def record_payment_refunded(
    ctx: ServiceContext, tx: Statements, payload: Mapping[str, Any]
) -> None:
    """A refund: the order becomes partially or fully refunded and OrderRefunded goes out with
    the lines to restock."""
    order = await _order_row(tx, str(payload.get("order_id")), lock=True)
    if order is None:
        log.warning("refund_for_unknown_order", order_id=payload.get("order_id"))
        return
    amount = int(payload.get("amount") or 0)
    refunded_total = order["refunded_total"] + amount
    fully = bool(payload.get("fully_refunded")) or refunded_total >= order["total"]
    action = OrderAction.REFUND if fully else OrderAction.REFUND_PARTIALLY
    details = {
        k: payload.get(k) for k in ("payment_id", "refund_id", "amount", "restock") if k in payload
    }
    if payload.get("order_refund") is False:
        # Money the order refused (a payment after its cancellation) going back: the order's
        # own totals and lines are not what was refunded.
        await _record(
            tx,
            order["id"],
            kind="event",
            actor=PAYMENTS,
            action="refused_payment_refunded",
            reason=payload.get("reason"),
            details=details,
        )
        return
    try:
        domain.next_status(order["status"], action)
    except domain.IllegalTransition as exc:
        await _record(
            tx,
            order["id"],
            kind="event",
            actor=PAYMENTS,
            action="refund_ignored",
            reason=exc.detail,
            details=details,
        )
        return
    named: dict[str, int] = {}
    for item in payload.get("lines") or []:
        line_id = str(item.get("line_id"))
        named[line_id] = named.get(line_id, 0) + int(item.get("quantity") or 0)
    line_rows = await _line_rows(tx, order["id"])
    gained = domain.refunded_units(_progress(line_rows), named, settles_the_order=fully)
    for line_id, quantity in gained.items():
        await tx.execute(_REFUND_UNITS, line_id=line_id, units=quantity)
    # Refunding the units left to fulfil may complete a partial fulfilment.
    fulfillment = domain.FulfillmentStatus(order["fulfillment_status"])
    if gained:
        fulfillment = domain.fulfillment_after_refund(
            fulfillment, _progress(await _line_rows(tx, order["id"]))
        )
    await _transition(
        tx,
        order,
        action,
        actor=PAYMENTS,
        reason=payload.get("reason"),
        details=details,
        extra_values={"refunded_total": refunded_total, "fulfillment_status": fulfillment.value},
    )
    restock = [
        {"sku": str(item["sku"]), "quantity": int(item["quantity"])}
        for item in payload.get("restock_lines") or []
        if item.get("sku") and int(item.get("quantity") or 0) > 0
    ]
    payload_out = _event_base(order)
    skus = {line["id"]: line["sku"] for line in line_rows}
    payload_out.update(
        amount=amount,
        refund_id=payload.get("refund_id"),
        restock_lines=restock,
        fully_refunded=fully,
        refunded_total=refunded_total,
        lines=[
            {"line_id": line_id, "sku": skus.get(line_id), "quantity": quantity}
            for line_id, quantity in gained.items()
            if quantity > 0
        ],
    )
    await ctx.outbox.add(tx, ORDER_REFUNDED, payload_out)


# --- demo data ----------------------------------------------------------------------------------

DEMO_TAX_RATES: tuple[tuple[str, str, int], ...] = (
    ("ES", "IVA", 2100),
    ("DE", "MwSt", 1900),
    ("FR", "TVA", 2000),
    ("IT", "IVA", 2200),
    ("PT", "IVA", 2300),
    ("NL", "BTW", 2100),
    ("GB", "VAT", 2000),
    ("US", "Sales tax (collected at state level)", 0),
)

DEMO_SHIPPING: tuple[dict[str, Any], ...] = (
    {
        "code": "standard",
        "name": "Standard (3-5 days)",
        "kind": "flat",
        "rates": {"EUR": [[None, 495]], "USD": [[None, 595]]},
        "countries": [],
    },
    {
        "code": "express",
        "name": "Express by weight (1-2 days)",
        "kind": "weight",
        "rates": {
            "EUR": [[1000, 995], [5000, 1495], [None, 2495]],
            "USD": [[1000, 1195], [5000, 1795], [None, 2995]],
        },
        "countries": ["ES", "DE", "FR", "IT", "PT", "NL", "US"],
    },
)

DEMO_VOUCHERS: tuple[dict[str, Any], ...] = (
    {"code": "WELCOME10", "kind": "percentage", "value": 1000, "per_customer_limit": 1},
    {"code": "SPRING5", "kind": "fixed", "value": 500, "currency": "EUR", "minimum_spend": 3000},
    {
        "code": "VIP20",
        "kind": "percentage",
        "value": 2000,
        "currency": "EUR",
        "minimum_spend": 10000,
        "usage_limit": 100,
    },
)


async def seed_demo(ctx: ServiceContext) -> dict[str, Any]:
    """Tax rates, shipping methods and vouchers a demo shop needs; running it again adds nothing."""
    now = _now()
    upsert = _upsert(ctx)
    async with ctx.db.transaction() as session:
        for country, name, rate in DEMO_TAX_RATES:
            await session.execute(
                upsert(tax_rates)
                .values(country=country, name=name, rate_bp=rate, updated_at=now)
                .on_conflict_do_nothing()
            )
        for method in DEMO_SHIPPING:
            await session.execute(
                upsert(shipping_methods)
                .values(**method, active=True, created_at=now, updated_at=now)
                .on_conflict_do_nothing()
            )
        for voucher in DEMO_VOUCHERS:
            values = {
                "currency": None,
                "minimum_spend": 0,
                "usage_limit": None,
                "per_customer_limit": None,
                **voucher,
            }
            await session.execute(
                upsert(vouchers)
                .values(
                    id=new_id(),
                    times_used=0,
                    active=True,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
                .on_conflict_do_nothing(index_elements=[vouchers.c.code])
            )
    return {
        "tax_rates": [c for c, _, _ in DEMO_TAX_RATES],
        "shipping_methods": [m["code"] for m in DEMO_SHIPPING],
        "vouchers": [v["code"] for v in DEMO_VOUCHERS],
    }
