"""Checkout on both shapes: server-side amounts, stock reserved through catalog, idempotency
keys, insufficient stock, and voucher limits enforced under concurrent checkouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from ecosistema.orders.schemas import VoucherCreate
from ecosistema.orders.service import (
    _use_voucher,
    _voucher_row,
    create_voucher,
    get_voucher,
    release_unplaced_voucher_uses,
)
from ecosistema.platform.db import new_id, statements, utcnow
from ecosistema.platform.service import ServiceContext
from tests.integration.test_identity_support import API, bearer, register, signed_in
from tests.integration.test_orders_support import (
    DELIVERY,
    add_product,
    app,
    available,
    checkout,
    customer,
    eventually,
    guest_cart,
    orders_ctx,
    outbox_payloads,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_checkout_reserves_stock_and_places_an_order_awaiting_payment(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-10": 5})
    cart_id, token = await guest_cart(client, {"TEE-10": 2}, country="ES")
    cart = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()

    placed = await checkout(client, cart_id, token, email="guest@example.com")
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["status"] == "pending_payment"
    assert order["number"].startswith("ORD-1")
    assert order["email"] == "guest@example.com" and order["customer_id"] is None
    assert order["total"] == 4000 + 495 and order["reservation_expires_at"] is not None
    assert order["subtotal"] == cart["totals"]["subtotal"]
    assert [(x["sku"], x["quantity"], x["unit_price"]) for x in order["lines"]] == [
        ("TEE-10", 2, 2000)
    ]
    assert await available(client, admin, "TEE-10") == 3

    # The guest reaches the order with the cart's token; nobody else does.
    assert (await client.get(f"{API}/orders/{order['id']}", headers=token)).status_code == 200
    assert (await client.get(f"{API}/orders/{order['id']}")).status_code == 404
    again = await checkout(client, cart_id, token, email="guest@example.com")
    assert again.status_code == 409 and again.json()["type"].endswith("/cart-already-ordered")
    assert again.json()["title"] == "Cart already ordered"

    [event] = await outbox_payloads(app, "OrderPlaced")
    assert event["order_id"] == order["id"] and event["total"] == order["total"]
    assert event["lines"][0]["sku"] == "TEE-10" and event["lines"][0]["quantity"] == 2


async def test_amounts_sent_by_the_client_are_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-11": 5})
    cart_id, token = await guest_cart(client, {"TEE-11": 1})
    forged = await checkout(client, cart_id, token, email="g@example.com", total=1)
    assert forged.status_code == 422
    assert await available(client, admin, "TEE-11") == 5


async def test_same_idempotency_key_replays_and_a_different_body_is_rejected(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-12": 5})
    dana = await customer(client, "dana")
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(dana))
    cart_id = cart.json()["id"]
    await client.post(
        f"{API}/carts/{cart_id}/items", json={"sku": "TEE-12", "quantity": 1}, headers=bearer(dana)
    )
    key = uuid.uuid4().hex

    first = await checkout(client, cart_id, bearer(dana), key=key)
    assert first.status_code == 201, first.text
    assert first.json()["email"] == dana["email"]
    replay = await checkout(client, cart_id, bearer(dana), key=key)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()

    reused = await checkout(client, cart_id, bearer(dana), key=key, country="DE")
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("idempotency-key-reuse")
    assert await available(client, admin, "TEE-12") == 4
    assert len(await outbox_payloads(app, "OrderPlaced")) == 1


async def test_insufficient_stock_is_a_409_with_each_lines_availability(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-13": 5, "MUG-13": 1})
    cart_id, token = await guest_cart(client, {"TEE-13": 2, "MUG-13": 3})

    short = await checkout(client, cart_id, token, email="g@example.com")
    assert short.status_code == 409, short.text
    body = short.json()
    assert body["type"].endswith("insufficient-stock")
    lines = {line["sku"]: (line["requested"], line["available"]) for line in body["lines"]}
    assert lines == {"TEE-13": (2, 5), "MUG-13": (3, 1)}
    assert await available(client, admin, "TEE-13") == 5

    # The cart is still the customer's to fix and check out.
    await client.patch(f"{API}/carts/{cart_id}/items/MUG-13", json={"quantity": 1}, headers=token)
    fixed = await checkout(client, cart_id, token, email="g@example.com")
    assert fixed.status_code == 201, fixed.text


async def test_checkout_names_what_blocks_a_cart(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-14": 5})
    empty_id, empty_token = await guest_cart(client, {})
    empty = await checkout(client, empty_id, empty_token, email="g@example.com")
    assert empty.status_code == 422
    assert "lines" in {e["field"] for e in empty.json()["errors"]}

    cart_id, token = await guest_cart(client, {"TEE-14": 1})
    no_email = await checkout(client, cart_id, token)
    assert no_email.status_code == 422 and no_email.json()["errors"][0]["field"] == "email"
    no_method = await client.post(
        f"{API}/orders", json={"cart_id": cart_id, "email": "g@example.com"}, headers=token
    )
    assert no_method.status_code == 422
    assert no_method.json()["errors"][0]["field"] == "shipping_method"


async def test_a_voucher_limited_to_five_uses_gives_exactly_five_of_twenty_concurrent_checkouts(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-15": 40})
    ctx = orders_ctx(app)
    await create_voucher(
        ctx, VoucherCreate(code="FIVE", kind="percentage", value=1500, usage_limit=5)
    )
    carts = [await voucher_cart(client, "TEE-15", "FIVE") for _ in range(20)]

    results = await asyncio.gather(
        *(
            checkout(client, cart_id, token, email=f"g{i}@example.com")
            for i, (cart_id, token) in enumerate(carts)
        )
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] * 5 + [409] * 15, [r.text for r in results if r.status_code >= 500]
    assert all(r.json()["discount_total"] == 300 for r in results if r.status_code == 201)
    assert all(
        r.json()["type"].endswith("voucher-used-up") for r in results if r.status_code == 409
    )
    assert (await get_voucher(ctx, code="five")).times_used == 5
    # Checkouts that lost the race released the stock they had reserved.
    assert await available(client, admin, "TEE-15") == 35


async def test_voucher_race_losers_hear_voucher_used_up_and_hold_no_stock_others_need(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Ten buyers race for a voucher's last three uses while three others buy without it, for
    six units: the voucher's use is counted before stock is held, so the losers hear
    voucher-used-up and every unit goes to a buyer who can pay for it."""
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-21": 6})
    ctx = orders_ctx(app)
    await create_voucher(
        ctx, VoucherCreate(code="LAST3", kind="percentage", value=1500, usage_limit=3)
    )
    with_voucher = [await voucher_cart(client, "TEE-21", "LAST3") for _ in range(10)]
    without = [await guest_cart(client, {"TEE-21": 1}) for _ in range(3)]

    results = await asyncio.gather(
        *(
            checkout(client, cart_id, token, email=f"race{i}@example.com")
            for i, (cart_id, token) in enumerate(with_voucher + without)
        )
    )

    refused = [r.json() for r in results if r.status_code == 409]
    assert [r["type"].rsplit("/", 1)[-1] for r in refused] == ["voucher-used-up"] * 7, refused
    assert {r["title"] for r in refused} == {"Voucher used up"}
    assert all(r.status_code in (201, 409) for r in results), [r.text for r in results]
    placed = [r.json() for r in results if r.status_code == 201]
    assert sorted(order["discount_total"] for order in placed) == [0, 0, 0, 300, 300, 300]
    assert all(r.status_code == 201 for r in results[10:])
    assert (await get_voucher(ctx, code="LAST3")).times_used == 3
    assert await available(client, admin, "TEE-21") == 0


async def test_a_voucher_use_is_given_back_when_the_stock_cannot_be_reserved(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-22": 1})
    ctx = orders_ctx(app)
    await create_voucher(
        ctx, VoucherCreate(code="ONCE", kind="percentage", value=1000, usage_limit=1)
    )
    cart_id, token = await voucher_cart(client, "TEE-22", "ONCE")
    # Someone else buys the only unit first.
    other_id, other_token = await guest_cart(client, {"TEE-22": 1})
    assert (await checkout(client, other_id, other_token, email="o@example.com")).status_code == 201

    short = await checkout(client, cart_id, token, email="v@example.com")
    assert short.status_code == 409 and short.json()["type"].endswith("insufficient-stock")
    assert (await get_voucher(ctx, code="ONCE")).times_used == 0

    await add_stock(client, admin, "TEE-22", 1)
    placed = await checkout(client, cart_id, token, email="v@example.com")
    assert placed.status_code == 201, placed.text
    assert placed.json()["discount_total"] == 200
    assert (await get_voucher(ctx, code="ONCE")).times_used == 1


async def test_a_voucher_use_whose_order_was_never_written_is_swept_after_a_reservation_ttl(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A process stopping between counting the use and writing the order leaves a use with no
    order: the sweeper gives it back once no checkout can still be writing that order."""
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-23": 5})
    ctx = orders_ctx(app)
    await create_voucher(
        ctx, VoucherCreate(code="TWICE", kind="percentage", value=1000, usage_limit=2)
    )
    cart_id, token = await voucher_cart(client, "TEE-23", "TWICE")
    assert (await checkout(client, cart_id, token, email="p@example.com")).status_code == 201
    voucher = await voucher_row(ctx, "TWICE")
    started = utcnow()
    async with ctx.db.driver_write() as tx:
        await _use_voucher(
            ctx,
            tx,
            voucher,
            order_id=new_id(),
            customer_id=None,
            email="s@example.com",
            now=started,
        )
    assert (await get_voucher(ctx, code="TWICE")).times_used == 2

    ttl = timedelta(seconds=ctx.settings.orders_reservation_ttl_seconds)
    assert await release_unplaced_voucher_uses(ctx, now=started + ttl / 2) == 0
    assert await release_unplaced_voucher_uses(ctx, now=started + ttl) == 1
    # The placed order keeps its use; nothing is given back twice.
    assert (await get_voucher(ctx, code="TWICE")).times_used == 1
    assert await release_unplaced_voucher_uses(ctx, now=started + 2 * ttl) == 0
    assert (await get_voucher(ctx, code="TWICE")).times_used == 1


async def test_a_per_customer_limit_counts_uses_and_a_cancellation_gives_it_back(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-16": 10})
    eva = await customer(client, "eva")

    async def cart_with_welcome() -> str:
        cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(eva))
        cart_id: str = cart.json()["id"]
        await client.post(
            f"{API}/carts/{cart_id}/items",
            json={"sku": "TEE-16", "quantity": 1},
            headers=bearer(eva),
        )
        applied = await client.post(
            f"{API}/carts/{cart_id}/vouchers", json={"code": "WELCOME10"}, headers=bearer(eva)
        )
        assert applied.status_code == 200, applied.text
        return cart_id

    first = await checkout(client, await cart_with_welcome(), bearer(eva))
    assert first.status_code == 201 and first.json()["discount_total"] == 200
    second_cart = await cart_with_welcome()
    refused = await checkout(client, second_cart, bearer(eva))
    assert refused.status_code == 409 and refused.json()["type"].endswith("voucher-used-up")

    cancelled = await client.post(
        f"{API}/orders/{first.json()['id']}/cancel",
        json={"reason": "changed my mind"},
        headers=bearer(eva),
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    retried = await checkout(client, second_cart, bearer(eva))
    assert retried.status_code == 201, retried.text


async def test_two_hundred_simultaneous_checkouts_of_fifty_units_place_exactly_fifty_orders(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-50": 50})
    carts = [await guest_cart(client, {"TEE-50": 1}) for _ in range(200)]

    results = await asyncio.gather(
        *(
            checkout(client, cart_id, token, email=f"rush{i}@example.com")
            for i, (cart_id, token) in enumerate(carts)
        )
    )

    statuses = [r.status_code for r in results]
    assert statuses.count(201) == 50, sorted(set(statuses))
    assert statuses.count(409) == 150, [r.text for r in results if r.status_code not in (201, 409)]
    assert all(
        r.json()["type"].endswith("insufficient-stock") for r in results if r.status_code == 409
    )
    assert await available(client, admin, "TEE-50") == 0
    stock = (await client.get(f"{API}/inventory/TEE-50", headers=bearer(admin))).json()
    assert stock["reserved"] == 50 and stock["on_hand"] == 50, stock
    assert len(await outbox_payloads(app, "OrderPlaced")) == 50


async def test_checkout_without_an_idempotency_key_is_accepted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-17": 5})
    cart_id, token = await guest_cart(client, {"TEE-17": 1})
    body = {
        "cart_id": cart_id,
        "email": "g@example.com",
        "shipping_method": "standard",
        "shipping_address": {**DELIVERY, "country": "ES"},
    }
    placed = await client.post(f"{API}/orders", json=body, headers=token)
    assert placed.status_code == 201, placed.text
    assert "Idempotent-Replayed" not in placed.headers
    # A retry without a key cannot replay: it learns which order the cart became.
    retried = await client.post(f"{API}/orders", json=body, headers=token)
    assert retried.status_code == 409 and retried.json()["type"].endswith("cart-already-ordered")
    assert retried.json()["order_id"] == placed.json()["id"]


async def welcome_cart(
    client: httpx.AsyncClient, sku: str, headers: dict[str, str] | None = None, **cart: object
) -> tuple[str, dict[str, str]]:
    """A cart (the customer's with ``headers``, else a guest's) holding ``sku`` and WELCOME10."""
    if headers is None:
        cart_id, headers = await guest_cart(client, {sku: 1}, **cart)
    else:
        created = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=headers)
        cart_id = created.json()["id"]
        added = await client.post(
            f"{API}/carts/{cart_id}/items", json={"sku": sku, "quantity": 1}, headers=headers
        )
        assert added.status_code == 200, added.text
    applied = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": "WELCOME10"}, headers=headers
    )
    assert applied.status_code == 200, applied.text
    return cart_id, headers


async def test_a_guest_giving_a_customers_email_counts_against_that_customers_voucher_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-18": 10})
    fay = await customer(client, "fay")
    first = await checkout(client, *(await welcome_cart(client, "TEE-18", bearer(fay))))
    assert first.status_code == 201 and first.json()["discount_total"] == 200

    # The same address, as a guest, in other case and with spaces around it.
    guest_id, token = await welcome_cart(client, "TEE-18", email=fay["email"].upper())
    cart = (await client.get(f"{API}/carts/{guest_id}", headers=token)).json()
    assert any("per customer" in problem for problem in cart["problems"]), cart["problems"]
    refused = await checkout(client, guest_id, token, email=f"  {fay['email'].upper()} ")
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("voucher-used-up")
    assert refused.json()["voucher_code"] == "WELCOME10"

    # And the other way round: a guest's use counts when the address signs up as a customer.
    guest_id, token = await welcome_cart(client, "TEE-18", email="gil@example.com")
    assert (await checkout(client, guest_id, token)).status_code == 201
    await register(client, "gil@example.com")
    gil = await signed_in(client, "gil@example.com")
    own_id, headers = await welcome_cart(client, "TEE-18", bearer(gil))
    used = await checkout(client, own_id, headers)
    assert used.status_code == 409 and used.json()["type"].endswith("voucher-used-up")


async def test_a_customer_and_guests_with_its_email_at_once_get_one_per_customer_use(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-19": 20})
    hal = await customer(client, "hal")
    carts = [await welcome_cart(client, "TEE-19", bearer(hal))]
    for email in (hal["email"], hal["email"].upper(), f" {hal['email']} ", hal["email"]):
        carts.append(await welcome_cart(client, "TEE-19", email=email))

    results = await asyncio.gather(*(checkout(client, cart_id, h) for cart_id, h in carts))

    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 4, [r.text for r in results]
    assert all(
        r.json()["type"].endswith("voucher-used-up") for r in results if r.status_code == 409
    )
    assert (await get_voucher(orders_ctx(app), code="WELCOME10")).times_used == 1
    assert await available(client, admin, "TEE-19") == 19


async def voucher_row(ctx: ServiceContext, code: str) -> Mapping[Any, Any]:
    async with ctx.db.read() as session:
        row = await _voucher_row(statements(session), code)
    assert row is not None
    return row


async def add_stock(
    client: httpx.AsyncClient, admin: dict[str, Any], sku: str, quantity: int
) -> None:
    moved = await client.post(
        f"{API}/inventory/{sku}/adjustments",
        json={"warehouse": "main", "delta": quantity, "reason": "restock"},
        headers=bearer(admin),
    )
    assert moved.status_code in (200, 201), moved.text


async def voucher_cart(
    client: httpx.AsyncClient, sku: str, code: str
) -> tuple[str, dict[str, str]]:
    """A guest's cart holding one ``sku`` with the voucher ``code`` on it."""
    cart_id, token = await guest_cart(client, {sku: 1})
    applied = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": code}, headers=token
    )
    assert applied.status_code == 200, applied.text
    return cart_id, token


class _BreaksAfterReserving:
    """Catalog's client whose reservation call is lost on the way back, after catalog
    reserved (a timeout, a dropped connection)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def reserve(self, order_id: str, lines: Any, ttl_seconds: int, **kw: Any) -> None:
        await self._inner.reserve(order_id, lines, ttl_seconds, **kw)
        raise ConnectionResetError("the answer was lost")


async def test_a_reservation_whose_answer_was_lost_is_released(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-LOST": 2})
    runtime = app.state.runtime
    catalog = runtime.client("catalog")
    cart_id, token = await guest_cart(client, {"TEE-LOST": 2})
    runtime.use_client("catalog", _BreaksAfterReserving(catalog))
    try:
        lost = await checkout(client, cart_id, token, email="lost@example.com")
    finally:
        runtime.use_client("catalog", catalog)
    assert lost.status_code == 500, lost.text  # a fault inside, not in the request
    # The units it took are free again at once, not only when the reservation expires.
    assert await available(client, admin, "TEE-LOST") == 2
    placed = await checkout(client, cart_id, token, email="lost@example.com")
    assert placed.status_code == 201, placed.text


async def test_a_cart_above_the_most_one_order_holds_is_refused_not_an_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    await add_product(client, admin, "GOLD-1", 3, price=10**12)
    cart_id, token = await guest_cart(client, {"GOLD-1": 1}, email="big@example.com")
    fits = (await client.get(f"{API}/carts/{cart_id}", headers=token)).json()
    assert not [p for p in fits["problems"] if "most one order" in p]

    grown = await client.patch(
        f"{API}/carts/{cart_id}/items/GOLD-1", json={"quantity": 3}, headers=token
    )
    assert grown.status_code == 200, grown.text
    assert [p for p in grown.json()["problems"] if "the most one order can hold" in p]
    refused = await checkout(client, cart_id, token, email="big@example.com")
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert {(e["field"], e["code"]) for e in refused.json()["errors"]} >= {("lines", "too_large")}
    assert await available(client, admin, "GOLD-1") == 3


async def test_an_order_with_nothing_to_pay_is_paid_as_it_is_placed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"FREE-1": 5})
    free_shipping = {
        "code": "pickup",
        "name": "Pickup",
        "kind": "flat",
        "rates": {"EUR": [{"amount": 0}]},
        "countries": ["ES"],
    }
    assert (
        await client.post(f"{API}/shipping-methods", json=free_shipping, headers=bearer(admin))
    ).status_code == 201
    voucher = {"code": "ALLFREE", "kind": "percentage", "value": 10_000}
    assert (
        await client.post(f"{API}/vouchers", json=voucher, headers=bearer(admin))
    ).status_code == 201
    cart_id, token = await guest_cart(client, {"FREE-1": 2}, email="free@example.com")
    applied = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": "ALLFREE"}, headers=token
    )
    assert applied.status_code == 200, applied.text

    placed = await checkout(client, cart_id, token, shipping_method="pickup")
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert (order["total"], order["status"], order["reservation_expires_at"]) == (0, "paid", None)
    [paid] = await outbox_payloads(app, "OrderPaid")
    assert (paid["order_id"], paid["payment_id"]) == (order["id"], None)
    history = await client.get(f"{API}/orders/{order['id']}/history", headers=bearer(admin))
    # The last step of the order (the mail job may have added its confirmation since).
    steps = [e["action"] for e in history.json() if e["action"] != "email_sent"]
    assert steps[-1] == "pay"

    async def committed() -> bool:
        await app.state.runtime.drain_outboxes()
        stock = await client.get(f"{API}/inventory/FREE-1", headers=bearer(admin))
        return bool(stock.json()["on_hand"] == 3 and stock.json()["reserved"] == 0)

    await eventually(committed, what="the free order's stock to leave")
