"""Refunds seen from the order, with identity, catalog, orders and payments in one app: after a
refund of the rest with restock, the order's lines count as refunded exactly the units put back
in stock; after refunds by line and of an amount, the rest's units are the same on the order,
its mail, its credit note and the sales report; restocked units go back to the warehouses they
came from; a fully discounted line is not refunded."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.e2e.test_payments_flow import CARD, app
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    available,
    checkout,
    customer,
    eventually,
    guest_cart,
    outbox_payloads,
    place_guest_order,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _refund(
    client: httpx.AsyncClient, admin: dict[str, Any], payment_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        f"{API}/payments/{payment_id}/refunds",
        json=body,
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )


async def test_refunding_the_rest_with_restock_records_the_restocked_units_on_the_lines(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"RR-TEE": 10, "RR-MUG": 10})
    shopper = await customer(client, "rest")
    created = await client.post(
        f"{API}/carts",
        json={"items": [{"sku": "RR-TEE", "quantity": 3}, {"sku": "RR-MUG", "quantity": 2}]},
        headers=bearer(shopper),
    )
    assert created.status_code == 201, created.text
    placed = await checkout(client, created.json()["id"], bearer(shopper))
    assert placed.status_code == 201, placed.text
    order = placed.json()
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**bearer(shopper), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201, paid.text
    payment_id = paid.json()["id"]

    async def order_now() -> dict[str, Any]:
        response = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def status_is(status: str) -> bool:
        return bool((await order_now())["status"] == status)

    await eventually(lambda: status_is("paid"), what="the order to become paid")
    sold = {sku: await available(client, admin, sku) for sku in ("RR-TEE", "RR-MUG")}
    tee = next(line for line in order["lines"] if line["sku"] == "RR-TEE")
    by_line = await _refund(
        client,
        admin,
        payment_id,
        {"lines": [{"line_id": tee["line_id"], "quantity": 1}], "reason": "torn", "restock": True},
    )
    assert by_line.status_code == 201, by_line.text
    await eventually(lambda: status_is("partially_refunded"), what="the refund by line")

    rest = await _refund(client, admin, payment_id, {"reason": "rest", "restock": True})
    assert rest.status_code == 201, rest.text
    await eventually(lambda: status_is("refunded"), what="the refund of the rest")

    async def all_back() -> bool:
        return (
            await available(client, admin, "RR-TEE"),
            await available(client, admin, "RR-MUG"),
        ) == (
            sold["RR-TEE"] + 3,
            sold["RR-MUG"] + 2,
        )

    await eventually(all_back, what="every unit back in stock")
    lines = {line["sku"]: line for line in (await order_now())["lines"]}
    restocked = {sku: await available(client, admin, sku) - sold[sku] for sku in sold}
    assert {sku: line["refunded_quantity"] for sku, line in lines.items()} == restocked
    assert restocked == {"RR-TEE": 3, "RR-MUG": 2}


async def test_after_an_amount_refund_the_rest_names_the_same_units_everywhere(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"AG-RED": 10, "AG-WHI": 10})
    order = await place_guest_order(client, {"AG-RED": 2, "AG-WHI": 1})
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**order["_headers"], "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201, paid.text
    payment_id = paid.json()["id"]
    line_ids = {line["sku"]: line["line_id"] for line in order["lines"]}

    async def order_now() -> dict[str, Any]:
        response = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def status_is(status: str) -> bool:
        return bool((await order_now())["status"] == status)

    await eventually(lambda: status_is("paid"), what="the order to become paid")
    for body in (
        {"reason": "white", "lines": [{"line_id": line_ids["AG-WHI"], "quantity": 1}]},
        {"reason": "red", "lines": [{"line_id": line_ids["AG-RED"], "quantity": 1}]},
        {"reason": "goodwill", "amount": 1000},
    ):
        response = await _refund(client, admin, payment_id, body)
        assert response.status_code == 201, response.text
    rest = await _refund(client, admin, payment_id, {"reason": "rest"})
    assert rest.status_code == 201, rest.text
    await eventually(lambda: status_is("refunded"), what="the refund of the rest")

    # The amount took back no unit: the rest gives back the red unit no refund by line took.
    assert [(x["sku"], x["quantity"]) for x in rest.json()["lines"]] == [("AG-RED", 1)]
    refunded = {line["sku"]: line["refunded_quantity"] for line in (await order_now())["lines"]}
    assert refunded == {"AG-RED": 2, "AG-WHI": 1}
    mailed = (await outbox_payloads(app, "OrderRefunded"))[-1]
    assert [(x["sku"], x["quantity"]) for x in mailed["lines"]] == [("AG-RED", 1)]
    listing = await client.get(
        f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(admin)
    )
    assert listing.status_code == 200, listing.text
    credited: dict[str, int] = {}
    for note in listing.json()["items"]:
        for line in note["lines"] if note["kind"] == "credit_note" else []:
            if line["sku"]:
                credited[line["sku"]] = credited.get(line["sku"], 0) + line["quantity"]
    assert credited == refunded
    report = await client.get(f"{API}/reports/sales", headers=bearer(admin))
    assert report.status_code == 200, report.text
    counted = {p["sku"]: p["refunded_quantity"] for p in report.json()["top_products"]}
    assert counted == refunded


async def test_refunds_with_restock_return_units_to_the_warehouses_they_came_from(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"WH-TEE": 8})
    overflow = await client.post(
        f"{API}/warehouses",
        json={"code": "overflow", "name": "Overflow", "priority": 1},
        headers=bearer(admin),
    )
    assert overflow.status_code == 201, overflow.text
    moved = await client.post(
        f"{API}/inventory/WH-TEE/adjustments",
        json={"warehouse": "overflow", "delta": 60, "reason": "delivery"},
        headers=bearer(admin),
    )
    assert moved.status_code in (200, 201), moved.text
    order = await place_guest_order(client, {"WH-TEE": 65})
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**order["_headers"], "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201, paid.text

    async def on_hand() -> dict[str, int]:
        response = await client.get(f"{API}/inventory/WH-TEE", headers=bearer(admin))
        assert response.status_code == 200, response.text
        return {w["warehouse_code"]: w["on_hand"] for w in response.json()["warehouses"]}

    async def stock_is(expected: dict[str, int]) -> bool:
        return await on_hand() == expected

    await eventually(lambda: stock_is({"main": 0, "overflow": 3}), what="the sale to commit")
    [line] = order["lines"]
    for quantity, expected in ((63, {"main": 8, "overflow": 58}), (2, {"main": 8, "overflow": 60})):
        refunded = await _refund(
            client,
            admin,
            paid.json()["id"],
            {
                "reason": "returned",
                "lines": [{"line_id": line["line_id"], "quantity": quantity}],
                "restock": True,
            },
        )
        assert refunded.status_code == 201, refunded.text
        await eventually(lambda e=expected: stock_is(e), what=f"{quantity} units restocked")


async def test_a_fully_discounted_line_is_not_refunded_and_its_unit_can_be_restocked(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"FREE-TEE": 5})
    voucher = await client.post(
        f"{API}/vouchers",
        json={"code": "ALLFREE", "kind": "fixed", "value": 100000, "currency": "EUR"},
        headers=bearer(admin),
    )
    assert voucher.status_code == 201, voucher.text
    cart_id, headers = await guest_cart(client, {"FREE-TEE": 1})
    applied = await client.post(
        f"{API}/carts/{cart_id}/vouchers", json={"code": "ALLFREE"}, headers=headers
    )
    assert applied.status_code == 200, applied.text
    placed = await checkout(client, cart_id, headers, email="free@example.com")
    assert placed.status_code == 201, placed.text
    order = placed.json()
    [line] = order["lines"]
    assert line["total"] == 0 and order["total"] == order["shipping_total"] > 0
    paid = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert paid.status_code == 201, paid.text
    await eventually(lambda: _on_hand_is(client, admin, "FREE-TEE", 4), what="the sale to commit")

    refused = await _refund(
        client,
        admin,
        paid.json()["id"],
        {
            "reason": "zero line",
            "lines": [{"line_id": line["line_id"], "quantity": 1}],
            "restock": True,
        },
    )

    assert refused.status_code == 422, refused.text
    [error] = refused.json()["errors"]
    assert (error["field"], error["code"]) == ("lines.0.line_id", "line_fully_discounted")
    assert "POST /api/v1/restocks" in error["message"]
    restocked = await client.post(
        f"{API}/restocks",
        json={
            "order_id": order["id"],
            "lines": [{"sku": "FREE-TEE", "quantity": 1}],
            "reason": "returned, fully discounted",
        },
        headers=bearer(admin),
    )
    assert restocked.status_code == 204, restocked.text
    assert await available(client, admin, "FREE-TEE") == 5
    payment = await client.get(f"{API}/payments/{paid.json()['id']}", headers=bearer(admin))
    assert payment.json()["refunded_amount"] == 0


async def _on_hand_is(
    client: httpx.AsyncClient, admin: dict[str, Any], sku: str, expected: int
) -> bool:
    response = await client.get(f"{API}/inventory/{sku}", headers=bearer(admin))
    assert response.status_code == 200, response.text
    return bool(response.json()["on_hand"] == expected)


async def test_unit_refunds_of_a_partly_captured_line_credit_what_its_invoice_shows(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"PART-TEE": 10})
    order = await place_guest_order(client, {"PART-TEE": 3})
    authorized = await client.post(
        f"{API}/payments",
        json={"order_id": order["id"], "payment_method": CARD, "capture_method": "manual"},
        headers={**order["_headers"], "Idempotency-Key": uuid.uuid4().hex},
    )
    assert authorized.status_code == 201, authorized.text
    payment_id = authorized.json()["id"]
    captured = await client.post(
        f"{API}/payments/{payment_id}/capture",
        json={"amount_to_capture": order["total"] // 3},
        headers={**bearer(admin), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert captured.status_code == 200, captured.text

    async def documents() -> list[dict[str, Any]]:
        listing = await client.get(
            f"{API}/invoices", params={"order_id": order["id"]}, headers=bearer(admin)
        )
        assert listing.status_code == 200, listing.text
        return sorted(listing.json()["items"], key=lambda d: d["number"])

    [invoice] = await documents()
    [line] = order["lines"]
    [invoiced] = [i for i in invoice["lines"] if i["sku"] == "PART-TEE"]
    assert invoiced["quantity"] == 3 and invoiced["total"] < line["total"]

    amounts = []
    for _ in range(3):
        refunded = await _refund(
            client,
            admin,
            payment_id,
            {"reason": "one unit", "lines": [{"line_id": line["line_id"], "quantity": 1}]},
        )
        assert refunded.status_code == 201, refunded.text
        amounts.append(refunded.json()["amount"])

    assert sum(amounts) == invoiced["total"]
    notes = [d for d in await documents() if d["kind"] == "credit_note"]
    assert sorted(-n["total"] for n in notes) == sorted(amounts)
