"""An order's fulfilment and payment statuses, on both shapes: a refund never lets goods ship
that were not fulfilled nor hides how far they went, a short capture shows as
``partially_paid`` with ``amount_paid``, each caller is offered only the actions it may take,
and the order list filters by the new statuses and refuses an inverted date range."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    checkout,
    customer,
    eventually,
    guest_cart,
    place_guest_order,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _order(client: httpx.AsyncClient, who: dict[str, Any], order_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/orders/{order_id}", headers=bearer(who))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _paid(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    order: dict[str, Any],
    captured: int | None = None,
) -> None:
    payload = {"payment_id": "p1", "order_id": order["id"], "amount": order["total"]}
    payload |= {
        "currency": "EUR",
        "captured_amount": captured if captured is not None else order["total"],
    }
    await publish(app, "PaymentSucceeded", payload)

    async def paid() -> bool:
        return (await _order(client, admin, order["id"]))["status"] == "paid"

    await eventually(paid, what="order paid")


async def _refund(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    order: dict[str, Any],
    amount: int,
    lines: list[dict[str, Any]] | None = None,
) -> None:
    before = (await _order(client, admin, order["id"]))["refunded_total"]
    await publish(
        app,
        "PaymentRefunded",
        {
            "payment_id": "p1",
            "order_id": order["id"],
            "refund_id": f"r{before}",
            "amount": amount,
            "currency": "EUR",
            "lines": lines or [],
            "restock": False,
            "restock_lines": [],
            "fully_refunded": False,
        },
    )

    async def refunded() -> bool:
        return (await _order(client, admin, order["id"]))["refunded_total"] == before + amount

    await eventually(refunded, what="the refund recorded")


async def test_after_a_partial_refund_shipping_still_needs_every_unit_fulfilled(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-70": 5})
    order = await place_guest_order(client, {"TEE-70": 2})
    url = f"{API}/orders/{order['id']}"
    [line] = order["lines"]
    await _paid(app, client, admin, order)
    await _refund(app, client, admin, order, 100)

    seen = await _order(client, admin, order["id"])
    assert (seen["status"], seen["fulfillment_status"], seen["payment_status"]) == (
        "partially_refunded",
        "unfulfilled",
        "partially_refunded",
    )
    assert "ship" not in seen["allowed_actions"] and "deliver" not in seen["allowed_actions"]
    for action in ("ship", "deliver"):
        refused = await client.post(f"{url}/{action}", headers=bearer(admin))
        assert refused.status_code == 409, (action, refused.text)
        assert refused.json()["fulfillment_status"] == "unfulfilled"

    part = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": line["line_id"], "quantity": 1}], "tracking_number": "T1"},
        headers=bearer(admin),
    )
    assert part.status_code == 201, part.text
    assert part.json()["fulfillment_status"] == "partially_fulfilled"
    assert (await client.post(f"{url}/ship", headers=bearer(admin))).status_code == 409
    rest = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": line["line_id"], "quantity": 1}], "tracking_number": "T2"},
        headers=bearer(admin),
    )
    assert rest.json()["fulfillment_status"] == "fulfilled"
    assert (await client.post(f"{url}/deliver", headers=bearer(admin))).status_code == 409
    shipped = await client.post(f"{url}/ship", headers=bearer(admin))
    assert shipped.status_code == 200, shipped.text
    # The money keeps the status the state machine gives it; the goods show how far they went.
    assert (shipped.json()["status"], shipped.json()["fulfillment_status"]) == (
        "partially_refunded",
        "shipped",
    )
    delivered = await client.post(f"{url}/deliver", headers=bearer(admin))
    assert delivered.json()["fulfillment_status"] == "delivered"
    listed = await client.get(
        f"{API}/orders",
        params={"fulfillment_status": "delivered", "payment_status": "partially_refunded"},
        headers=bearer(admin),
    )
    assert [o["id"] for o in listed.json()["items"]] == [order["id"]]
    none = await client.get(
        f"{API}/orders", params={"fulfillment_status": "unfulfilled"}, headers=bearer(admin)
    )
    assert none.json()["items"] == []


async def test_refunding_the_units_left_to_fulfil_lets_the_order_ship(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-71": 5})
    order = await place_guest_order(client, {"TEE-71": 2})
    url = f"{API}/orders/{order['id']}"
    [line] = order["lines"]
    await _paid(app, client, admin, order)
    await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": line["line_id"], "quantity": 1}], "tracking_number": "T1"},
        headers=bearer(admin),
    )
    await _refund(
        app,
        client,
        admin,
        order,
        line["unit_price"],
        [{"line_id": line["line_id"], "sku": "TEE-71", "quantity": 1}],
    )
    seen = await _order(client, admin, order["id"])
    assert seen["fulfillment_status"] == "fulfilled"
    assert "ship" in seen["allowed_actions"] and "fulfil" not in seen["allowed_actions"]
    shipped = await client.post(f"{url}/ship", headers=bearer(admin))
    assert shipped.status_code == 200 and shipped.json()["fulfillment_status"] == "shipped"


async def test_a_fully_refunded_order_cannot_be_fulfilled_or_shipped(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-72": 5})
    order = await place_guest_order(client, {"TEE-72": 1})
    url = f"{API}/orders/{order['id']}"
    await _paid(app, client, admin, order)
    await _refund(app, client, admin, order, order["total"])
    seen = await _order(client, admin, order["id"])
    assert (seen["status"], seen["payment_status"]) == ("refunded", "refunded")
    assert seen["allowed_actions"] == []
    fulfil = await client.post(
        f"{url}/fulfillments",
        json={"lines": [{"line_id": order["lines"][0]["line_id"], "quantity": 1}]}
        | {"tracking_number": "T1"},
        headers=bearer(admin),
    )
    assert fulfil.status_code in (409, 422), fulfil.text
    assert (await client.post(f"{url}/ship", headers=bearer(admin))).status_code == 409


async def test_a_short_capture_shows_partially_paid_with_the_amount_captured(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-73": 5})
    order = await place_guest_order(client, {"TEE-73": 1})
    placed = await _order(client, admin, order["id"])
    assert (placed["payment_status"], placed["amount_paid"]) == ("pending", 0)
    await _paid(app, client, admin, order, captured=1000)
    seen = await _order(client, admin, order["id"])
    assert (seen["status"], seen["payment_status"], seen["amount_paid"]) == (
        "paid",
        "partially_paid",
        1000,
    )
    # Fulfilment is allowed (as Saleor allows it with a partial charge): staff see the shortfall.
    assert "fulfil" in seen["allowed_actions"]
    short = await client.get(
        f"{API}/orders", params={"payment_status": "partially_paid"}, headers=bearer(admin)
    )
    assert [(o["id"], o["amount_paid"]) for o in short.json()["items"]] == [(order["id"], 1000)]

    full = await place_guest_order(client, {"TEE-73": 1}, email="full@example.com")
    await _paid(app, client, admin, full)
    seen = await _order(client, admin, full["id"])
    assert (seen["payment_status"], seen["amount_paid"]) == ("paid", full["total"])


async def test_each_caller_is_offered_only_the_actions_it_may_take(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-74": 5})
    ana = await customer(client, "ana")
    cart = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "items": [{"sku": "TEE-74", "quantity": 1}]},
        headers=bearer(ana),
    )
    placed = await checkout(client, cart.json()["id"], bearer(ana))
    assert placed.status_code == 201, placed.text
    assert placed.json()["allowed_actions"] == ["pay", "cancel"]
    order = placed.json()
    assert (await _order(client, ana, order["id"]))["allowed_actions"] == ["pay", "cancel"]
    assert (await _order(client, admin, order["id"]))["allowed_actions"] == ["cancel"]
    await _paid(app, client, admin, order)
    assert (await _order(client, ana, order["id"]))["allowed_actions"] == []
    assert (await _order(client, admin, order["id"]))["allowed_actions"] == [
        "fulfil_partially",
        "fulfil",
        "refund_partially",
        "refund",
    ]

    guest = await place_guest_order(client, {"TEE-74": 1})
    seen = await client.get(f"{API}/orders/{guest['id']}", headers=guest["_headers"])
    assert seen.json()["allowed_actions"] == ["pay", "cancel"]
    cancelled = await client.post(f"{API}/orders/{guest['id']}/cancel", headers=guest["_headers"])
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["allowed_actions"], body["payment_status"]) == ([], "voided")


async def test_an_inverted_created_range_is_a_422_naming_created_from(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-75": 5})
    await place_guest_order(client, {"TEE-75": 1})
    inverted = await client.get(
        f"{API}/orders",
        params={"created_from": "2026-11-02", "created_to": "2026-11-01"},
        headers=bearer(admin),
    )
    assert inverted.status_code == 422, inverted.text
    assert [(e["field"], e["in"], e["message"]) for e in inverted.json()["errors"]] == [
        ("created_from", "query", "must not be after created_to")
    ]
    same = await client.get(
        f"{API}/orders",
        params={"created_from": "2026-11-01", "created_to": "2026-11-01"},
        headers=bearer(admin),
    )
    assert same.status_code == 200 and same.json()["items"] == []
    wrong = await client.get(
        f"{API}/orders", params={"fulfillment_status": "lost"}, headers=bearer(admin)
    )
    assert wrong.status_code == 422
    assert [e["field"] for e in wrong.json()["errors"]] == ["fulfillment_status"]


async def test_stock_reserved_at_checkout_names_the_buyer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-76": 5})
    ana = await customer(client, "ana")
    cart = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "items": [{"sku": "TEE-76", "quantity": 1}]},
        headers=bearer(ana),
    )
    mine = await checkout(client, cart.json()["id"], bearer(ana))
    assert mine.status_code == 201, mine.text
    cart_id, token = await guest_cart(client, {"TEE-76": 1})
    guest = (await checkout(client, cart_id, token, email="g@example.com")).json()
    moved = await client.get(f"{API}/inventory/TEE-76/movements", headers=bearer(admin))
    assert moved.status_code == 200, moved.text
    reserved = {
        m["reference"]: m["actor"] for m in moved.json()["items"] if m["reason"] == "reserve"
    }
    assert reserved == {
        mine.json()["id"]: ana["id"],
        guest["id"]: f"guest:{cart_id}",
    }
