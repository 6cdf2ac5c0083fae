"""The order life cycle on both shapes: payment events drive the status, staff fulfil, ship and
deliver, illegal transitions answer 409, history records every step, customers only ever see
their own orders, and the sweeper cancels orders whose reservation expired."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.orders import cancel_expired_orders
from ecosistema.platform.db import utcnow
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    available,
    checkout,
    customer,
    eventually,
    orders_ctx,
    outbox_payloads,
    place_guest_order,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _status(client: httpx.AsyncClient, admin: dict[str, Any], order_id: str) -> str:
    response = await client.get(f"{API}/orders/{order_id}", headers=bearer(admin))
    status: str = response.json()["status"]
    return status


async def _history(client: httpx.AsyncClient, admin: dict[str, Any], order_id: str) -> list[Any]:
    """The order's history but for its mail entries, which the mail job adds when it runs."""
    response = await client.get(f"{API}/orders/{order_id}/history", headers=bearer(admin))
    assert response.status_code == 200, response.text
    return [e for e in response.json() if not (e["action"] or "").startswith("email_")]


async def test_payment_events_drive_the_order_to_paid_once_and_refunds_follow(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-20": 5})
    order = await place_guest_order(client, {"TEE-20": 2})
    oid = order["id"]

    await publish(
        app,
        "PaymentFailed",
        {
            "payment_id": "p0",
            "order_id": oid,
            "reason": "declined",
            "decline_code": "card_declined",
        },
    )
    await eventually(
        lambda: _has_history(client, admin, oid, "payment_failed"), what="failure noted"
    )
    assert await _status(client, admin, oid) == "pending_payment"

    succeeded = {
        "payment_id": "p1",
        "order_id": oid,
        "amount": order["total"],
        "currency": "EUR",
        "captured_amount": order["total"],
    }
    envelope = await publish(app, "PaymentSucceeded", succeeded)
    await eventually(lambda: _is(client, admin, oid, "paid"), what="order paid")
    await app.state.runtime.bus.publish(envelope)  # delivered twice: applied once
    await publish(app, "PaymentSucceeded", {**succeeded, "payment_id": "p2"})
    await eventually(
        lambda: _has_history(client, admin, oid, "payment_refused"), what="second payment refused"
    )
    # The order keeps the payment that paid it and refuses the other: payments refunds it.
    [refused] = await outbox_payloads(app, "OrderPaymentRefused")
    assert (refused["order_id"], refused["payment_id"], refused["status"]) == (oid, "p2", "paid")
    paid = await outbox_payloads(app, "OrderPaid")
    assert [p["order_id"] for p in paid] == [oid]
    assert paid[0]["lines"][0]["sku"] == "TEE-20" and paid[0]["total"] == order["total"]
    pays = [e for e in await _history(client, admin, oid) if e["action"] == "pay"]
    assert len(pays) == 1 and pays[0]["actor_kind"] == "payments"

    line_id = order["lines"][0]["line_id"]
    await publish(
        app,
        "PaymentRefunded",
        {
            "payment_id": "p1",
            "order_id": oid,
            "refund_id": "r1",
            "amount": 2000,
            "currency": "EUR",
            "lines": [{"line_id": line_id, "sku": "TEE-20", "quantity": 1, "amount": 2000}],
            "restock": True,
            "restock_lines": [{"sku": "TEE-20", "quantity": 1}],
            "reason": "damaged",
            "fully_refunded": False,
        },
    )
    await eventually(lambda: _is(client, admin, oid, "partially_refunded"), what="partial refund")
    [refund] = await outbox_payloads(app, "OrderRefunded")
    assert refund["amount"] == 2000 and refund["fully_refunded"] is False
    assert refund["restock_lines"] == [{"sku": "TEE-20", "quantity": 1}]
    detail = (await client.get(f"{API}/orders/{oid}", headers=bearer(admin))).json()
    assert detail["refunded_total"] == 2000 and detail["lines"][0]["refunded_quantity"] == 1
    # One of the two units is left to fulfil; none was fulfilled, so none can be returned.
    assert "fulfil" in detail["allowed_actions"]
    assert "return_lines" not in detail["allowed_actions"]

    await publish(
        app,
        "PaymentRefunded",
        {
            "payment_id": "p1",
            "order_id": oid,
            "refund_id": "r2",
            "amount": order["total"] - 2000,
            "currency": "EUR",
            "lines": [],
            "restock": False,
            "restock_lines": [],
            "fully_refunded": True,
        },
    )
    await eventually(lambda: _is(client, admin, oid, "refunded"), what="full refund")


async def _is(client: httpx.AsyncClient, admin: dict[str, Any], order_id: str, status: str) -> bool:
    return await _status(client, admin, order_id) == status


async def _has_history(
    client: httpx.AsyncClient, admin: dict[str, Any], order_id: str, action: str
) -> bool:
    return any(e["action"] == action for e in await _history(client, admin, order_id))


async def test_staff_fulfil_ship_and_deliver_and_history_records_every_step(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-21": 5, "MUG-21": 5})
    order = await place_guest_order(client, {"TEE-21": 2, "MUG-21": 1})
    oid = order["id"]
    tee, mug = (line["line_id"] for line in order["lines"])
    url = f"{API}/orders/{oid}"

    early = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": tee, "quantity": 1}], "tracking_number": "TRK1"},
        headers=bearer(admin),
    )
    assert early.status_code == 409 and early.json()["type"].endswith("illegal-order-transition")

    await publish(
        app,
        "PaymentSucceeded",
        {"payment_id": "p", "order_id": oid, "amount": order["total"], "currency": "EUR"},
    )
    await eventually(lambda: _is(client, admin, oid, "paid"), what="order paid")

    part = await client.post(
        f"{url}/fulfillments",
        json={
            "lines": [{"line_id": tee, "quantity": 1}],
            "tracking_number": "TRK1",
            "carrier": "Correos",
        },
        headers=bearer(admin),
    )
    assert part.status_code == 201, part.text
    assert part.json()["status"] == "partially_fulfilled"
    too_many = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": tee, "quantity": 2}], "tracking_number": "TRK2"},
        headers=bearer(admin),
    )
    assert too_many.status_code == 422
    for field, text in (
        ("tracking_number", "  "),
        ("tracking_number", "T\u202e1"),
        ("tracking_number", "T1\nT2"),
        ("carrier", "a\u0000b"),
        ("carrier", ""),
    ):
        unreadable = await client.post(
            f"{url}/fulfillments",
            json={
                "lines": [{"line_id": mug, "quantity": 1}],
                "tracking_number": "TRK9",
                field: text,
            },
            headers=bearer(admin),
        )
        assert unreadable.status_code == 422, (field, text, unreadable.text)
        assert [e["field"] for e in unreadable.json()["errors"]] == [field]
    rest = await client.post(
        f"{url}/fulfillments",
        json={
            "lines": [{"line_id": tee, "quantity": 1}, {"line_id": mug, "quantity": 1}],
            "tracking_number": "  TRK2 ",
        },
        headers=bearer(admin),
    )
    assert rest.status_code == 201 and rest.json()["status"] == "fulfilled"
    assert [f["tracking_number"] for f in rest.json()["fulfillments"]] == ["TRK1", "TRK2"]
    [fulfilled] = await outbox_payloads(app, "OrderFulfilled")
    assert fulfilled["order_id"] == oid and fulfilled["tracking_number"] == "TRK2"

    note = await client.post(f"{url}/notes", json={"text": "gift wrap"}, headers=bearer(admin))
    assert note.status_code == 201 and note.json()["kind"] == "note"
    assert (await client.post(f"{url}/deliver", headers=bearer(admin))).status_code == 409
    shipped = await client.post(
        f"{url}/ship", json={"reason": "left the warehouse"}, headers=bearer(admin)
    )
    assert shipped.json()["status"] == "shipped"
    delivered = await client.post(f"{url}/deliver", headers=bearer(admin))
    assert delivered.json()["status"] == "delivered"
    returned = await client.post(
        f"{url}/returns",
        json={"lines": [{"line_id": mug, "quantity": 1}], "reason": "wrong colour"},
        headers=bearer(admin),
    )
    assert returned.status_code == 201 and returned.json()["lines"][1]["returned_quantity"] == 1
    cancel = await client.post(f"{url}/cancel", headers=bearer(admin))
    assert cancel.status_code == 409

    history = await _history(client, admin, oid)
    steps = [(e["kind"], e["action"], e["to_status"]) for e in history]
    assert steps == [
        ("transition", "place", "pending_payment"),
        ("transition", "pay", "paid"),
        ("transition", "fulfil_partially", "partially_fulfilled"),
        ("transition", "fulfil", "fulfilled"),
        ("note", None, None),
        ("transition", "ship", "shipped"),
        ("transition", "deliver", "delivered"),
        ("transition", "return_lines", "delivered"),
    ]
    assert history[0]["actor_kind"] == "guest" and history[2]["actor_kind"] == "staff"
    assert history[4]["reason"] == "gift wrap" and history[5]["reason"] == "left the warehouse"


async def test_customers_see_only_their_own_orders_and_staff_filter_all(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-22": 10})
    ana, bob = await customer(client, "ana"), await customer(client, "bob")
    placed = {}
    for who in (ana, bob):
        cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(who))
        cart_id = cart.json()["id"]
        await client.post(
            f"{API}/carts/{cart_id}/items",
            json={"sku": "TEE-22", "quantity": 1},
            headers=bearer(who),
        )
        response = await checkout(client, cart_id, bearer(who))
        assert response.status_code == 201, response.text
        placed[who["id"]] = response.json()
    ana_order = placed[ana["id"]]
    url = f"{API}/orders/{ana_order['id']}"

    missing = await client.get(f"{API}/orders/{'0' * 32}", headers=bearer(bob))
    for response in (
        await client.get(url, headers=bearer(bob)),
        await client.get(f"{url}/history", headers=bearer(bob)),
        await client.post(f"{url}/cancel", headers=bearer(bob)),
    ):
        assert response.status_code == 404
        assert response.json()["detail"] == missing.json()["detail"]
    assert (await client.get(url, headers=bearer(ana))).status_code == 200
    assert (
        await client.post(f"{url}/notes", json={"text": "hi"}, headers=bearer(ana))
    ).status_code == 403

    mine = (await client.get(f"{API}/orders", headers=bearer(bob))).json()["items"]
    assert [o["id"] for o in mine] == [placed[bob["id"]]["id"]]
    # Another customer's id is refused, naming the parameter; one's own id is a filter.
    spoof = await client.get(
        f"{API}/orders", params={"customer_id": ana["id"]}, headers=bearer(bob)
    )
    assert spoof.status_code == 403, spoof.text
    assert spoof.headers["content-type"].startswith("application/problem+json")
    problem = spoof.json()
    assert problem["type"].endswith("/orders-of-another-customer")
    assert problem["title"] == "Another customer's orders"
    assert [(e["field"], e["in"]) for e in problem["errors"]] == [("customer_id", "query")]
    own = await client.get(f"{API}/orders", params={"customer_id": bob["id"]}, headers=bearer(bob))
    assert [o["id"] for o in own.json()["items"]] == [placed[bob["id"]]["id"]]

    everyone = (await client.get(f"{API}/orders", headers=bearer(admin))).json()["items"]
    assert len(everyone) == 2
    by_customer = await client.get(
        f"{API}/orders", params={"customer_id": ana["id"]}, headers=bearer(admin)
    )
    assert [o["id"] for o in by_customer.json()["items"]] == [ana_order["id"]]
    await client.post(f"{url}/cancel", headers=bearer(ana))
    cancelled = await client.get(
        f"{API}/orders", params={"status": "cancelled"}, headers=bearer(admin)
    )
    assert [o["id"] for o in cancelled.json()["items"]] == [ana_order["id"]]
    future = (utcnow() + timedelta(days=1)).isoformat()
    later = await client.get(
        f"{API}/orders", params={"created_from": future}, headers=bearer(admin)
    )
    assert later.json()["items"] == []
    # Dates and instants without an offset are read as UTC, not refused with a 500.
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    naive = await client.get(
        f"{API}/orders",
        params={"created_from": "2000-01-01", "created_to": tomorrow},
        headers=bearer(admin),
    )
    assert naive.status_code == 200 and len(naive.json()["items"]) == 2
    naive_instant = await client.get(
        f"{API}/orders", params={"created_to": "2000-01-01T10:00:00"}, headers=bearer(admin)
    )
    assert naive_instant.status_code == 200 and naive_instant.json()["items"] == []
    paged = await client.get(f"{API}/orders", params={"limit": 1}, headers=bearer(admin))
    second = await client.get(
        f"{API}/orders",
        params={"limit": 1, "cursor": paged.json()["next_cursor"]},
        headers=bearer(admin),
    )
    assert {paged.json()["items"][0]["id"], second.json()["items"][0]["id"]} == {
        o["id"] for o in placed.values()
    }
    assert second.json()["next_cursor"] is None
    junk = await client.get(f"{API}/orders", params={"cursor": "junk"}, headers=bearer(admin))
    assert junk.status_code == 422
    assert junk.json()["type"].endswith("invalid-cursor")
    assert junk.json()["errors"][0]["field"] == "cursor"


async def test_sweeper_cancels_orders_whose_reservation_expired(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-23": 3})
    order = await place_guest_order(client, {"TEE-23": 3})
    assert await available(client, admin, "TEE-23") == 0
    ctx = orders_ctx(app)

    assert await cancel_expired_orders(ctx) == 0
    assert await cancel_expired_orders(ctx, now=utcnow() + timedelta(hours=1)) == 1
    assert await _status(client, admin, order["id"]) == "cancelled"
    cancelled = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
    assert cancelled.json()["reservation_expires_at"] is None  # nothing is held any more
    [event] = await outbox_payloads(app, "OrderCancelled")
    assert event["order_id"] == order["id"] and event["reason"] == "reservation_expired"
    history = await _history(client, admin, order["id"])
    assert (history[-1]["action"], history[-1]["actor_kind"]) == ("expire", "system")

    async def released() -> bool:
        await app.state.runtime.drain_outboxes()
        return await available(client, admin, "TEE-23") == 3

    await eventually(released, what="catalog to release the reservation")
    assert await cancel_expired_orders(ctx, now=utcnow() + timedelta(hours=2)) == 0


async def test_catalog_holds_the_stock_past_the_orders_deadline_so_orders_expires_it_first(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    from ecosistema.catalog.models import reservations
    from ecosistema.orders.service import CATALOG_RESERVATION_GRACE_SECONDS

    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-25": 3})
    order = await place_guest_order(client, {"TEE-25": 1})
    deadline = datetime.fromisoformat(order["reservation_expires_at"])
    catalog = app.state.runtime.contexts["catalog"]
    async with catalog.db.read() as session:
        held_until = await session.scalar(
            select(reservations.c.expires_at).where(reservations.c.order_id == order["id"])
        )
    # A payment landing after the order's deadline but before orders' sweeper cancels the
    # order still finds its stock reserved: catalog's own expiry comes only later.
    assert held_until is not None
    assert abs((held_until - deadline).total_seconds() - CATALOG_RESERVATION_GRACE_SECONDS) < 1


async def test_a_guest_cancels_their_own_pending_order_with_the_carts_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-24": 5})
    order = await place_guest_order(client, {"TEE-24": 2})
    other = await place_guest_order(client, {"TEE-24": 1})
    url = f"{API}/orders/{order['id']}/cancel"

    # No token, a wrong one, or another guest's: the answer a missing order gets.
    missing = await client.post(f"{API}/orders/{'0' * 32}/cancel", headers=order["_headers"])
    assert missing.status_code == 404, missing.text
    for headers in ({}, {"X-Cart-Token": "not-the-token"}, other["_headers"]):
        refused = await client.post(url, headers=headers)
        assert refused.status_code == 404, refused.text
        assert refused.json()["detail"] == missing.json()["detail"]
    assert await _status(client, admin, order["id"]) == "pending_payment"

    cancelled = await client.post(
        url, json={"reason": "changed my mind"}, headers=order["_headers"]
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    history = await _history(client, admin, order["id"])
    assert (history[-1]["action"], history[-1]["actor_kind"], history[-1]["reason"]) == (
        "cancel",
        "guest",
        "changed my mind",
    )
    [event] = await outbox_payloads(app, "OrderCancelled")
    assert event["order_id"] == order["id"]
    # The same rules as a customer's cancel: a cancelled order cannot be cancelled again.
    again = await client.post(url, headers=order["_headers"])
    assert again.status_code == 409, again.text

    async def released() -> bool:
        await app.state.runtime.drain_outboxes()
        return await available(client, admin, "TEE-24") == 4

    await eventually(released, what="catalog to release the reservation")


async def test_a_status_change_body_may_be_left_out_but_is_not_null(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-NULL": 5})
    order = await place_guest_order(client, {"TEE-NULL": 1})
    url = f"{API}/orders/{order['id']}"
    json_null = {"Content-Type": "application/json", **bearer(admin)}
    for action in ("cancel", "ship", "deliver"):
        refused = await client.post(f"{url}/{action}", content=b"null", headers=json_null)
        assert refused.status_code == 422, (action, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == ["body"]
    assert await _status(client, admin, order["id"]) == "pending_payment"
    cancelled = await client.post(f"{url}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


async def test_a_refused_fulfilment_step_says_what_the_goods_lack_whatever_the_status(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-22": 5})
    order = await place_guest_order(client, {"TEE-22": 2})
    oid, url = order["id"], f"{API}/orders/{order['id']}"
    tee = order["lines"][0]["line_id"]

    async def refused(step: str) -> dict[str, Any]:
        answer = await client.post(f"{url}/{step}", headers=bearer(admin))
        assert answer.status_code == 409, answer.text
        problem: dict[str, Any] = answer.json()
        assert problem["type"].endswith("illegal-order-transition")
        return problem

    unpaid = await refused("ship")
    assert unpaid["fulfillment_status"] == "unfulfilled"
    assert unpaid["detail"] == "An order in status 'pending_payment' cannot ship."

    await publish(
        app,
        "PaymentSucceeded",
        {"payment_id": "p", "order_id": oid, "amount": order["total"], "currency": "EUR"},
    )
    await eventually(lambda: _is(client, admin, oid, "paid"), what="order paid")
    nothing = await refused("ship")
    assert (nothing["status_now"], nothing["fulfillment_status"]) == ("paid", "unfulfilled")
    assert nothing["detail"] == (
        "Every unit not refunded must be fulfilled before the order ships; 0 of 2 are."
    )
    assert (await refused("deliver"))["detail"] == (
        "The order must be shipped before it is delivered; its fulfilment is 'unfulfilled'."
    )
    part = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": tee, "quantity": 1}], "tracking_number": "TRK1"},
        headers=bearer(admin),
    )
    assert part.status_code == 201, part.text
    half = await refused("ship")
    assert (half["status_now"], half["fulfillment_status"]) == (
        "partially_fulfilled",
        "partially_fulfilled",
    )
    assert half["detail"].endswith("before the order ships; 1 of 2 is.")
