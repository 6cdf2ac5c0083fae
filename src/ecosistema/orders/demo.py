"""Demo order history: a few weeks of past orders so order lists and sales reports have something
to show on a fresh ``ecosistema up --demo``.

Most orders are guest checkouts; a handful (``CUSTOMER_ORDERS``) belong to the demo customer
account, customer@demo.ecosistema.dev, so that it has an order history of its own when it signs
in. Every order goes the way a real one goes, through the same use cases: a cart filled from
the demo catalogue, checkout (prices from catalog's quotes, stock reserved through catalog), a
card payment in the sandbox (capture, journal, invoice), the events that mark the order paid and
commit the stock, then fulfilment, shipping and delivery by staff, and for some a refund with
its credit note or a cancellation. Each step is recorded at a moment in the past (``at=``).

This is a scenario across services, run by the demo seeding, where orders, payments and catalog
are hosted in one process; each step runs in its own service's context and use case.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import func, select

from ecosistema.orders import schemas, service
from ecosistema.orders.domain import OrderAction, OrderStatus
from ecosistema.orders.models import orders
from ecosistema.platform.auth import Principal
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import ProblemError
from ecosistema.platform.policy import permissions_for
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

SEED = 2026_11
# Orders seeded side by side: the database's waits overlap, so the history seeds in seconds.
GROUP = 8
T = TypeVar("T")
R = TypeVar("R")
ORDER_COUNT = 125
HISTORY_DAYS = 35
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
BUYERS = (
    "lucia.garcia", "mateo.fernandez", "sofia.martinez", "hugo.lopez", "martina.sanchez",
    "leo.perez", "emma.schmidt", "noah.muller", "mia.weber", "paul.fischer", "lea.dubois",
    "lucas.moreau", "chloe.laurent", "giulia.rossi", "marco.bianchi", "sara.ricci",
    "joao.silva", "ines.santos", "daan.devries", "sanne.jansen", "olivia.smith",
    "liam.johnson", "ava.williams", "ethan.brown", "harper.jones", "mason.miller",
    "ella.davis", "logan.wilson", "grace.moore", "jack.taylor",
)  # fmt: skip
EUR_COUNTRIES = ("ES", "ES", "DE", "FR", "IT", "PT", "NL")
REFUNDED = (OrderStatus.REFUNDED, OrderStatus.PARTIALLY_REFUNDED)
STAFF = Principal.for_api_key("demo-staff", "staff", permissions_for("staff"), "demo")
# The demo customer account (seeded by identity) and how many of the orders are its own.
CUSTOMER = "customer"
CUSTOMER_ORDERS = 5


# Where demo parcels go: a street, a postal code and a city per country.
DEMO_STREETS = {
    "ES": ("Calle de Alcalá", "28014", "Madrid"),
    "DE": ("Friedrichstraße", "10117", "Berlin"),
    "FR": ("Rue de Rivoli", "75001", "Paris"),
    "IT": ("Via del Corso", "00186", "Roma"),
    "PT": ("Rua Augusta", "1100-048", "Lisboa"),
    "NL": ("Damrak", "1012 LG", "Amsterdam"),
    "US": ("Market Street", "94103", "San Francisco"),
}


def demo_email(name: str) -> str:
    return f"{name}@demo.ecosistema.dev"


def demo_address(name: str, country: str) -> schemas.Address:
    """A demo buyer's shipping address in ``country``: a parcel needs one."""
    street, postal_code, city = DEMO_STREETS[country]
    return schemas.Address(
        name=name.replace(".", " ").title(),
        line1=f"{street} {len(name) * 3 + 1}",
        city=city,
        postal_code=postal_code,
        country=country,
    )


@dataclass
class _Plan:
    at: datetime
    buyer: str
    currency: str
    country: str
    shipping: str
    lines: list[tuple[str, int]]
    fate: str  # cancelled | unpaid | paid | fulfilled | shipped | delivered | refunded | partial
    customer: Principal | None = None  # the signed-in buyer; None for a guest checkout


def _plans(rng: random.Random, skus: list[str], now: datetime) -> list[_Plan]:
    plans = []
    for _ in range(ORDER_COUNT):
        age = timedelta(days=rng.uniform(0.05, HISTORY_DAYS))
        at = (now - age).replace(microsecond=0)
        currency = "USD" if rng.random() < 0.25 else "EUR"
        country = "US" if currency == "USD" else rng.choice(EUR_COUNTRIES)
        picked = rng.sample(skus, k=rng.choice((1, 1, 2, 2, 3)))
        roll = rng.random()
        days = age.days
        if roll < 0.07:
            fate = "cancelled"
        elif roll < 0.15:
            fate = "refunded" if roll < 0.11 else "partial"
        elif days >= 6:
            fate = "delivered"
        elif days >= 3:
            fate = "shipped"
        elif days >= 1:
            fate = "fulfilled"
        else:
            fate = "paid"
        plans.append(
            _Plan(
                at=at,
                buyer=rng.choice(BUYERS),
                currency=currency,
                country=country,
                shipping="express" if rng.random() < 0.2 else "standard",
                lines=[(sku, rng.choice((1, 1, 1, 2))) for sku in picked],
                fate=fate,
            )
        )
    plans.sort(key=lambda p: p.at)
    return plans


async def seed_order_history(ctx: ServiceContext, *, skus: list[str]) -> dict[str, Any]:
    """Place (once) the demo order history; returns how many orders it holds per status."""
    runtime = ctx.runtime
    if "payments" not in runtime.contexts or "catalog" not in runtime.contexts or not skus:
        return {"skipped": "orders, payments and catalog must be hosted together"}
    indexes = [service.email_index(ctx, demo_email(b)) for b in (*BUYERS, CUSTOMER)]
    async with ctx.db.read() as session:
        present = await session.scalar(
            select(func.count()).select_from(orders).where(orders.c.email_index.in_(indexes))
        )
    if present:
        return await _summary(ctx, indexes)
    # The demo scenario spans services: payments' use cases run in payments' own context.
    from ecosistema.payments import service as payments
    from ecosistema.payments.schemas import PaymentCreate

    pay_ctx = runtime.contexts["payments"]
    now = utcnow()
    plans = _plans(random.Random(SEED), skus, now)  # noqa: S311 - demo data
    customer = await _demo_customer(ctx)
    if customer is not None:
        # Spread over the history, and never two in one group: a customer has one active cart
        # per currency, so the customer's checkouts must not run side by side.
        step = max(GROUP, len(plans) // CUSTOMER_ORDERS)
        for plan in plans[step // 2 :: step][:CUSTOMER_ORDERS]:
            plan.buyer, plan.customer = CUSTOMER, customer

    async def _placed(plan: _Plan) -> tuple[_Plan, schemas.Order] | None:
        if plan.customer is not None:
            plan.lines = await _lines_in_stock(ctx, plan, skus)
        order = await _place(ctx, plan)
        return None if order is None else (plan, order)

    placed = [p for p in await _in_groups(plans, _placed) if p is not None]
    own = sum(1 for plan, _ in placed if plan.customer is not None)
    if customer is not None and own != CUSTOMER_ORDERS:
        log.warning("demo_customer_orders_short", placed=own, planned=CUSTOMER_ORDERS)

    async def _paid(item: tuple[_Plan, schemas.Order]) -> tuple[_Plan, schemas.Order, Any] | None:
        plan, order = item
        if plan.fate == "cancelled":
            await service.cancel_order(
                ctx,
                order_id=order.id,
                principal=STAFF,
                reason="customer changed their mind",
                at=plan.at + timedelta(minutes=20),
            )
            return None
        payment = await payments.create_payment(
            pay_ctx,
            principal=STAFF,
            data=PaymentCreate.model_validate(
                {"order_id": order.id, "payment_method": {"card": CARD}}
            ),
            at=plan.at + timedelta(minutes=2),
        )
        return plan, order, payment

    paid = [p for p in await _in_groups(placed, _paid) if p is not None]
    await _settle_events(ctx, [order.id for _, order, _ in paid], (OrderStatus.PENDING_PAYMENT,))

    async def _afterwards(item: tuple[_Plan, schemas.Order, Any]) -> None:
        plan, order, payment = item
        await _progress(ctx, plan, order, now)
        if plan.fate in ("refunded", "partial"):
            await _refund(pay_ctx, payments, plan, order, payment, now)

    await _in_groups(paid, _afterwards)
    refunded = [order.id for plan, order, _ in paid if plan.fate in ("refunded", "partial")]
    await _settle_events(ctx, refunded, tuple(s for s in OrderStatus if s not in REFUNDED))
    return await _summary(ctx, indexes)


async def _in_groups(
    items: Sequence[T], work: Callable[[T], Awaitable[R]], size: int = GROUP
) -> list[R]:
    """Run ``work`` over ``items`` a few at a time, in order: neighbours in time run together,
    so order and invoice numbers still follow the dates closely."""
    out: list[R] = []
    for start in range(0, len(items), size):
        out.extend(await asyncio.gather(*(work(item) for item in items[start : start + size])))
    return out


async def _demo_customer(ctx: ServiceContext) -> Principal | None:
    """The demo customer account, signed in, when identity is hosted here and has seeded it."""
    identity_ctx = ctx.runtime.contexts.get("identity")
    if identity_ctx is None:
        return None
    # A scenario across services, like payments' steps: identity's use case in its own context.
    from ecosistema.identity import service as identity

    user = await identity.find_user_by_email(identity_ctx, email=demo_email(CUSTOMER))
    if user is None:
        return None
    return Principal.for_user(user.id, str(user.role))


async def _lines_in_stock(
    ctx: ServiceContext, plan: _Plan, skus: list[str]
) -> list[tuple[str, int]]:
    """The demo customer's lines, each swapped for the next demo SKU when it could run short:
    its orders must all be placed (the docs promise how many), whatever the guests in the same
    group buy meanwhile."""
    # What the other orders of a group can take of one SKU: two units each.
    margin = 2 * GROUP
    customer_id = plan.customer.subject if plan.customer is not None else None
    quotes = await ctx.client("catalog").quote(
        skus, currency=plan.currency, customer_id=customer_id
    )

    def sellable(sku: str, quantity: int) -> bool:
        quote = quotes.get(sku)
        return quote is not None and quote.purchasable and quote.available >= quantity + margin

    lines: list[tuple[str, int]] = []
    for sku, quantity in plan.lines:
        start = skus.index(sku) if sku in skus else 0
        for candidate in (*skus[start:], *skus[:start]):
            if sellable(candidate, quantity) and candidate not in (s for s, _ in lines):
                lines.append((candidate, quantity))
                break
    return lines or plan.lines


async def _place(ctx: ServiceContext, plan: _Plan) -> schemas.Order | None:
    # A guest gives the email with the cart; a signed-in customer's comes from their account.
    email = None if plan.customer is not None else demo_email(plan.buyer)
    cart: schemas.Cart | None = None
    try:
        cart, _ = await service.create_cart(
            ctx,
            principal=plan.customer,
            data=schemas.CartCreate(
                currency=plan.currency,
                email=email,
                shipping_address=demo_address(plan.buyer, plan.country),
            ),
            at=plan.at - timedelta(minutes=6),
        )
        for sku, quantity in plan.lines:
            await service.add_cart_item(
                ctx,
                cart_id=cart.id,
                principal=plan.customer,
                token=cart.token,
                data=schemas.CartItemAdd(sku=sku, quantity=quantity),
                at=plan.at - timedelta(minutes=3),
            )
        return await service.place_order(
            ctx,
            principal=plan.customer,
            token=cart.token,
            data=schemas.CheckoutRequest(cart_id=cart.id, shipping_method=plan.shipping),
            at=plan.at,
            # Past orders recorded for the demo: their buyers are not mailed, so seeding sends
            # no confirmations, parcels or refunds.
            notify_buyer=False,
        )
    except ProblemError as problem:  # out of stock, not sold in that currency: skip the order
        log.debug("demo_order_skipped", reason=problem.detail)
        if cart is not None:
            # Left active, the cart would be the one the customer's next order (and the demo
            # customer signing in) gets back, lines and all.
            await service.discard_cart(ctx, cart_id=cart.id)
        return None


async def _progress(ctx: ServiceContext, plan: _Plan, order: schemas.Order, now: datetime) -> None:
    steps = {"fulfilled": 1, "shipped": 2, "delivered": 3, "refunded": 3, "partial": 3}
    reached = steps.get(plan.fate, 0)
    fulfil_at = plan.at + timedelta(hours=20)
    if reached >= 1 and fulfil_at < now:
        await service.fulfil_lines(
            ctx,
            order_id=order.id,
            principal=STAFF,
            data=schemas.FulfillmentCreate.model_validate(
                {
                    "lines": [
                        {"line_id": ln.line_id, "quantity": ln.quantity} for ln in order.lines
                    ],
                    "tracking_number": f"1Z{order.number.replace('-', '')}",
                    "carrier": "DHL" if order.currency == "EUR" else "UPS",
                }
            ),
            at=fulfil_at,
        )
    ship_at, deliver_at = plan.at + timedelta(hours=26), plan.at + timedelta(hours=90)
    if reached >= 2 and ship_at < now:
        await service.change_status(
            ctx,
            order_id=order.id,
            principal=STAFF,
            action=OrderAction.SHIP,
            reason=None,
            at=ship_at,
        )
    if reached >= 3 and deliver_at < now:
        await service.change_status(
            ctx,
            order_id=order.id,
            principal=STAFF,
            action=OrderAction.DELIVER,
            reason=None,
            at=deliver_at,
        )


async def _refund(
    pay_ctx: ServiceContext,
    payments: Any,
    plan: _Plan,
    order: schemas.Order,
    payment: Any,
    now: datetime,
) -> None:
    when = min(plan.at + timedelta(days=4), now - timedelta(minutes=5))
    if plan.fate == "refunded":
        data = {"reason": "returned within 14 days", "restock": True}
    else:
        line = order.lines[0]
        data = {
            "lines": [{"line_id": line.line_id, "quantity": 1}],
            "reason": "arrived damaged",
            "restock": False,
        }
    from ecosistema.payments.schemas import RefundCreate

    await payments.create_refund(
        pay_ctx,
        principal=STAFF,
        payment_id=payment.id,
        data=RefundCreate.model_validate(data),
        at=when,
    )


async def _settle_events(
    ctx: ServiceContext, order_ids: list[str], waiting_in: tuple[OrderStatus, ...]
) -> None:
    """Relay the payments' events and wait until orders has applied them (a bus may deliver
    asynchronously): until none of the orders is still in one of ``waiting_in``."""
    await ctx.runtime.drain_outboxes()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while order_ids:
        async with ctx.db.read() as session:
            waiting = await session.scalar(
                select(func.count())
                .select_from(orders)
                .where(orders.c.id.in_(order_ids))
                .where(orders.c.status.in_([s.value for s in waiting_in]))
            )
        if not waiting or loop.time() > deadline:
            if waiting:
                log.warning("demo_events_not_applied", waiting=waiting)
            return
        await asyncio.sleep(0.05)
        await ctx.runtime.drain_outboxes()


async def _summary(ctx: ServiceContext, indexes: list[str]) -> dict[str, Any]:
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(orders.c.status, orders.c.currency, func.count())
                .where(orders.c.email_index.in_(indexes))
                .group_by(orders.c.status, orders.c.currency)
            )
        ).all()
    by_status: dict[str, int] = {}
    by_currency: dict[str, int] = {}
    for status, currency, count in rows:
        by_status[status] = by_status.get(status, 0) + int(count)
        by_currency[currency] = by_currency.get(currency, 0) + int(count)
    return {"orders": sum(by_status.values()), "by_status": by_status, "by_currency": by_currency}
