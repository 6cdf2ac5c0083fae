"""The buyer's personal data is encrypted at rest in orders and payments: nothing a database
dump shows reveals an email, the API still answers with it, staff find orders by exact email
through the blind index, the migration encrypts rows written before, and key rotation
re-encrypts the declared columns."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import JSON, column, insert, table, text

from ecosistema.orders import descriptor as orders_descriptor
from ecosistema.payments import descriptor as payments_descriptor
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import load_cipher, reencrypt_columns, rotate_master_key
from ecosistema.platform.db import Database
from ecosistema.platform.service import ServiceContext
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    checkout,
    customer,
    eventually,
    guest_cart,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["settings"]

OLD = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CARD = {"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    names = ("identity", "catalog", "orders", "payments")
    application = create_app(load_services(names), settings)
    async with application.router.lifespan_context(application):
        yield application
    await drop_test_schemas(settings)


def ctx_of(app: FastAPI, name: str) -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts[name]
    return ctx


async def dump(ctx: ServiceContext) -> str:
    """Every row of every table of a service, read with raw SQL."""
    out = []
    async with ctx.db.read() as session:
        for table in ctx.service.metadata.sorted_tables:
            rows = (await session.execute(text(f'SELECT * FROM "{table.name}"'))).all()
            out.append(f"{table.name}: {rows!r}")
    return "\n".join(out).lower()


async def paid_and_refunded_order(
    app: FastAPI, client: httpx.AsyncClient, admin: dict[str, Any], shopper: dict[str, Any]
) -> dict[str, Any]:
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    cart_id = cart.json()["id"]
    added = await client.post(
        f"{API}/carts/{cart_id}/items",
        json={"sku": "PII-TEE", "quantity": 2},
        headers=bearer(shopper),
    )
    assert added.status_code == 200, added.text
    placed = await checkout(client, cart_id, bearer(shopper))
    assert placed.status_code == 201, placed.text
    order: dict[str, Any] = placed.json()
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201 and paid.json()["status"] == "succeeded", paid.text
    refund = await client.post(
        f"{API}/payments/{paid.json()['id']}/refunds",
        json={"amount": 100, "reason": "late"},
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert refund.status_code == 201, refund.text
    return order


async def test_no_buyer_email_is_stored_in_clear_in_orders_or_payments(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PII-TEE": 20})
    shopper = await customer(client, "hiddenbuyer")
    order = await paid_and_refunded_order(app, client, admin, shopper)
    guest_email = "Secret.Guest@Private-Mail.example"
    cart_id, headers = await guest_cart(client, {"PII-TEE": 1}, email=guest_email)
    replayed_key = uuid.uuid4().hex
    guest = await checkout(client, cart_id, headers, key=replayed_key)
    assert guest.status_code == 201, guest.text
    assert guest.json()["email"] == "Secret.Guest@private-mail.example"  # domain normalised
    again = await checkout(client, cart_id, headers, key=replayed_key)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == guest.json()

    async def invoices_issued() -> bool:
        listed = await client.get(f"{API}/invoices", headers=bearer(admin))
        return len(listed.json()["items"]) == 2

    await eventually(invoices_issued, what="the invoice and the credit note")
    listed = (await client.get(f"{API}/invoices", headers=bearer(admin))).json()["items"]
    assert {i["buyer"]["email"] for i in listed} == {shopper["email"]}
    seen = await client.get(f"{API}/orders/{order['id']}", headers=bearer(shopper))
    assert seen.json()["email"] == shopper["email"]

    orders_dump = await dump(ctx_of(app, "orders"))
    payments_dump = await dump(ctx_of(app, "payments"))
    for secret in ("hiddenbuyer", "secret.guest", "private-mail"):
        assert secret not in orders_dump, secret
        assert secret not in payments_dump, secret
    # The dumps did read the rows: the order number is in both.
    assert order["number"].lower() in orders_dump and order["number"].lower() in payments_dump


async def test_staff_find_orders_by_exact_email_through_the_blind_index(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PII-MUG": 20})
    for email in ("Finder@Example.com", "other@example.com"):
        cart_id, headers = await guest_cart(client, {"PII-MUG": 1})
        assert (await checkout(client, cart_id, headers, email=email)).status_code == 201

    found = await client.get(
        f"{API}/orders", params={"email": "  finder@example.COM "}, headers=bearer(admin)
    )
    assert found.status_code == 200, found.text
    assert [o["email"] for o in found.json()["items"]] == ["Finder@example.com"]
    none = await client.get(f"{API}/orders", params={"email": "nobody@x.y"}, headers=bearer(admin))
    assert none.json()["items"] == []


async def test_key_rotation_reencrypts_orders_and_payments_columns(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PII-CAP": 20})
    shopper = await customer(client, "rotated")
    order = await paid_and_refunded_order_with(app, client, admin, shopper, "PII-CAP")
    new_kid = rotate_master_key(settings)
    runtime = app.state.runtime
    rewritten = 0
    for name in ("orders", "payments"):
        ctx = ctx_of(app, name)
        rewritten += await reencrypt_columns(ctx.db, runtime.cipher, ctx.service.encrypted_columns)
    # the order's email and shipping address; the payment, its invoice and its credit note (the
    # cart had no email or address of its own)
    assert rewritten == 5
    for name, where in (("orders", "orders"), ("payments", "payments"), ("payments", "invoices")):
        async with ctx_of(app, name).db.read() as session:
            sealed = "email_encrypted" if where == "orders" else "buyer_encrypted"
            tokens = (await session.execute(text(f"SELECT {sealed} FROM {where}"))).scalars()
            assert all(t.startswith(f"v1.{new_kid}.") for t in tokens)
    seen = await client.get(f"{API}/orders/{order['id']}", headers=bearer(shopper))
    assert seen.json()["email"] == shopper["email"]
    invoices = (await client.get(f"{API}/invoices", headers=bearer(shopper))).json()["items"]
    assert invoices and all(i["buyer"]["email"] == shopper["email"] for i in invoices)


async def paid_and_refunded_order_with(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    shopper: dict[str, Any],
    sku: str,
) -> dict[str, Any]:
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    cart_id = cart.json()["id"]
    await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": sku, "quantity": 1}, headers=bearer(shopper)
    )
    order: dict[str, Any] = (await checkout(client, cart_id, bearer(shopper))).json()
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
    )
    refund = await client.post(
        f"{API}/payments/{paid.json()['id']}/refunds",
        json={"amount": 100, "reason": "late"},
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert refund.status_code == 201, refund.text
    return order


# --- the migration ------------------------------------------------------------------------------


async def _migrated_database(settings: Settings, name: str) -> Database:
    return Database(
        name, settings.database_url_for(name), schema_prefix=settings.database_schema_prefix
    )


async def test_migration_encrypts_the_emails_of_existing_orders_and_carts(
    settings: Settings,
) -> None:
    cipher = load_cipher(settings)
    db = await _migrated_database(settings, "orders")
    try:
        await db.migrate(orders_descriptor.migrations, "0001_orders")
        now = OLD
        async with db.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO carts (id, status, currency, email, created_at, updated_at) "
                    "VALUES ('c1', 'ordered', 'EUR', 'Old.Buyer@Legacy.example', :t, :t)"
                ),
                {"t": now},
            )
            await session.execute(
                text(
                    "INSERT INTO orders (id, number, cart_id, email, status, currency, country, "
                    "prices_include_tax, tax_rate_bp, subtotal, discount_total, shipping_total, "
                    "shipping_tax, tax_total, total, refunded_total, weight_grams, created_at, "
                    "updated_at) VALUES ('o1', 'SO-1', 'c1', 'Old.Buyer@Legacy.example', "
                    "'paid', 'EUR', 'ES', true, 2100, 100, 0, 0, 0, 17, 100, 0, 0, :t, :t)"
                ),
                {"t": now},
            )
            await session.execute(
                text(
                    "INSERT INTO vouchers (id, code, kind, value, minimum_spend, times_used, "
                    "active, created_at, updated_at) VALUES ('v1', 'V1', 'fixed', 1, 0, 1, true, "
                    ":t, :t)"
                ),
                {"t": now},
            )
            await session.execute(
                text(
                    "INSERT INTO voucher_usages (id, voucher_id, order_id, holder, created_at) "
                    "VALUES ('u1', 'v1', 'o1', 'email:old.buyer@legacy.example', :t)"
                ),
                {"t": now},
            )
            outbox = table(
                "outbox",
                *(column(c) for c in ("event_id", "type", "version", "source", "occurred_at")),
                column("attempts"),
                column("payload", JSON),
            )
            await session.execute(
                insert(outbox).values(
                    event_id="e1",
                    type="OrderPlaced",
                    version=1,
                    source="orders",
                    occurred_at=now,
                    attempts=0,
                    payload={"order_id": "o1", "email": "old.buyer@legacy.example"},
                )
            )

        await db.migrate(orders_descriptor.migrations, attributes={"cipher": cipher})

        async with db.read() as session:
            order = (await session.execute(text("SELECT * FROM orders"))).mappings().one()
            cart = (await session.execute(text("SELECT * FROM carts"))).mappings().one()
            holder = await session.scalar(text("SELECT holder FROM voucher_usages"))
            payload = await session.scalar(text("SELECT payload FROM outbox"))
        place = {"column": "email_encrypted"}
        assert cipher.decrypt(order["email_encrypted"], table="orders", row_id="o1", **place) == (
            "Old.Buyer@Legacy.example"
        )
        assert cipher.decrypt(cart["email_encrypted"], table="carts", row_id="c1", **place) == (
            "Old.Buyer@Legacy.example"
        )
        index = cipher.blind_index("old.buyer@legacy.example", purpose="order.email")
        assert order["email_index"] == index and holder == f"email:{index}"
        assert "legacy" not in json.dumps(payload) and "o1" in json.dumps(payload)
        assert "email" not in order and "email" not in cart
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_migration_encrypts_the_buyer_of_existing_payments_and_invoices(
    settings: Settings,
) -> None:
    cipher = load_cipher(settings)
    db = await _migrated_database(settings, "payments")
    try:
        await db.migrate(payments_descriptor.migrations, "0001_payments")
        snapshot = {"id": "o1", "number": "SO-1", "email": "old.payer@legacy.example", "total": 1}
        buyer = {"name": None, "address": None, "email": "old.payer@legacy.example"}
        async with db.transaction() as session:
            payment_row = {
                "id": "p1",
                "order_id": "o1",
                "created_by": "u",
                "status": "succeeded",
                "capture_method": "automatic",
                "amount": 1,
                "currency": "EUR",
                "amount_capturable": 0,
                "captured_amount": 1,
                "refunded_amount": 0,
                "fee": 0,
                "provider": "sandbox",
                "attempt": 1,
                "created_at": OLD,
                "updated_at": OLD,
            }
            legacy_payments = table(
                "payments", *(column(c) for c in payment_row), column("order_snapshot", JSON)
            )
            await session.execute(
                insert(legacy_payments).values(**payment_row, order_snapshot=snapshot)
            )
            invoice_row = {
                "id": "i1",
                "kind": "invoice",
                "number": "INV-2026-000001",
                "series": "INV",
                "year": 2026,
                "sequence": 1,
                "payment_id": "p1",
                "order_id": "o1",
                "currency": "EUR",
                "subtotal": 1,
                "tax_total": 0,
                "total": 1,
                "issued_at": OLD,
            }
            documents = ("seller", "buyer", "lines", "tax_breakdown")
            legacy_invoices = table(
                "invoices",
                *(column(c) for c in invoice_row),
                *(column(c, JSON) for c in documents),
            )
            await session.execute(
                insert(legacy_invoices).values(
                    **invoice_row, seller={}, buyer=buyer, lines=[], tax_breakdown=[]
                )
            )

        await db.migrate(payments_descriptor.migrations, attributes={"cipher": cipher})

        async with db.read() as session:
            payment = (await session.execute(text("SELECT * FROM payments"))).mappings().one()
            invoice = (await session.execute(text("SELECT * FROM invoices"))).mappings().one()
        place = {"column": "buyer_encrypted"}
        opened = cipher.decrypt(payment["buyer_encrypted"], table="payments", row_id="p1", **place)
        assert json.loads(opened) == {"email": "old.payer@legacy.example"}
        on_invoice = cipher.decrypt(
            invoice["buyer_encrypted"], table="invoices", row_id="i1", **place
        )
        assert json.loads(on_invoice) == buyer
        assert "legacy" not in json.dumps(dict(payment), default=str)
        assert "buyer" not in invoice
    finally:
        await db.drop_schema()
        await db.dispose()
