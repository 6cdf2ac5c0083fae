"""Shared set-up for payments integration tests: the payments service in a real runtime (SQLite
or PostgreSQL, memory bus or NATS), callers authenticated by API keys, and an orders stand-in
that answers ``get_order`` with orders the test places."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.payments.models import payments as payments_table
from ecosistema.payments.models import sandbox_ledger
from ecosistema.platform.app import create_app
from ecosistema.platform.auth import Principal
from ecosistema.platform.config import Settings
from ecosistema.platform.db import new_id
from ecosistema.platform.errors import NotFound
from ecosistema.platform.policy import permissions_for
from ecosistema.platform.service import ServiceContext
from ecosistema.services import load_service
from tests.conftest import drop_test_schemas

CUSTOMER = "cust0000000000000000000000000001"
OTHER_CUSTOMER = "cust0000000000000000000000000002"
STAFF = "staff000000000000000000000000001"

KEYS = {
    "eco_customer_secret": Principal.for_api_key(
        CUSTOMER,
        "customer",
        ["payments:read_own", "payments:write_own", "invoices:read_own"],
        "customer",
    ),
    "eco_other_secret": Principal.for_api_key(
        OTHER_CUSTOMER,
        "customer",
        ["payments:read_own", "payments:write_own", "invoices:read_own"],
        "other",
    ),
    "eco_staff_secret": Principal.for_api_key(STAFF, "staff", permissions_for("staff"), "staff"),
}

VISA = "4242424242424242"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"
THREE_DS = "4000002500003155"


def card(number: str = VISA) -> dict[str, Any]:
    return {"card": {"number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


@dataclass
class OrdersStandIn:
    """Answers ``get_order`` like the orders service's client does."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Guest orders' cart tokens, by order id: with a token, only its own guest order is found.
    cart_tokens: dict[str, str] = field(default_factory=dict)

    async def get_order(self, order_id: str, *, cart_token: str | None = None) -> dict[str, Any]:
        if order_id not in self.orders or (
            cart_token is not None and self.cart_tokens.get(order_id) != cart_token
        ):
            raise NotFound("No order with this id.")
        return self.orders[order_id]

    def place(
        self,
        *,
        customer_id: str = CUSTOMER,
        currency: str = "EUR",
        lines: list[Any] | None = None,
        tax_rate_bp: int | None = None,
        shipping: tuple[int, int] = (0, 0),
        prices_include_tax: bool = True,
    ) -> dict[str, Any]:
        """A pending order: two shirts at 10.00 (tax 1.74 each incl.) and a mug at 15.00.

        ``tax_rate_bp`` is the rate the order reports (orders' summary carries it); without it
        the order looks like one from before it did. ``shipping`` is (price, tax)."""
        lines = lines or [
            {
                "line_id": "l1",
                "sku": "SHIRT-M",
                "name": "Shirt M",
                "quantity": 2,
                "unit_price": 1000,
                "tax": 347,
                "total": 2000,
            },
            {
                "line_id": "l2",
                "sku": "MUG",
                "name": "Mug",
                "quantity": 1,
                "unit_price": 1500,
                "tax": 260,
                "total": 1500,
            },
        ]
        shipping_total, shipping_tax = shipping
        lines_total = sum(int(line["total"]) for line in lines)
        total = lines_total + shipping_total + (0 if prices_include_tax else shipping_tax)
        order_id = new_id()
        order = {
            "id": order_id,
            "number": f"ORD-{len(self.orders) + 1:06d}",
            "customer_id": customer_id,
            "email": "buyer@example.com",
            "status": "pending_payment",
            "currency": currency,
            "subtotal": lines_total,
            "discount_total": 0,
            "tax_total": sum(int(line["tax"]) for line in lines) + shipping_tax,
            "shipping_total": shipping_total,
            "total": total,
            "lines": lines,
        }
        if tax_rate_bp is not None:
            order.update(
                tax_rate_bp=tax_rate_bp,
                shipping_tax=shipping_tax,
                prices_include_tax=prices_include_tax,
            )
        self.orders[order_id] = order
        return order


@dataclass
class Shop:
    app: FastAPI
    ctx: ServiceContext
    orders: OrdersStandIn
    http: httpx.AsyncClient

    def as_(self, who: str) -> dict[str, str]:
        return {"X-API-Key": f"eco_{who}_secret"}

    async def pay(
        self,
        order_id: str,
        number: str = VISA,
        *,
        who: str = "customer",
        key: str | None = None,
        capture_method: str = "automatic",
    ) -> httpx.Response:
        return await self.http.post(
            "/api/v1/payments",
            json={
                "order_id": order_id,
                "payment_method": card(number),
                "capture_method": capture_method,
            },
            headers={**self.as_(who), "Idempotency-Key": key or new_id()},
        )

    async def sandbox_charges(self) -> list[dict[str, Any]]:
        async with self.ctx.db.read() as session:
            rows = await session.execute(select(sandbox_ledger).order_by(sandbox_ledger.c.id))
            return [dict(r) for r in rows.mappings()]

    async def payment_rows(self) -> list[dict[str, Any]]:
        async with self.ctx.db.read() as session:
            rows = await session.execute(select(payments_table))
            return [dict(r) for r in rows.mappings()]

    async def events(self, type_: str) -> list[dict[str, Any]]:
        outbox = self.ctx.outbox.table
        async with self.ctx.db.read() as session:
            rows = await session.execute(
                select(outbox.c.payload).where(outbox.c.type == type_).order_by(outbox.c.position)
            )
            return [dict(r) for r in rows.scalars()]


@asynccontextmanager
async def open_shop(settings: Settings) -> AsyncIterator[Shop]:
    """The payments service running on the test's shape, with an orders stand-in."""
    application = create_app([load_service("payments")], settings)
    runtime = application.state.runtime
    stand_in = OrdersStandIn()
    runtime.use_client("orders", stand_in)

    async def resolve(raw: str) -> Principal | None:
        return KEYS.get(raw)

    runtime.verifier.set_api_key_resolver(resolve)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application, client=("203.0.113.9", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
                yield Shop(application, runtime.contexts["payments"], stand_in, http)
    finally:
        await drop_test_schemas(settings)


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.01)
