"""Fulfilments and returns that ask for units a line does not have are a 422 naming that line
as the request gave it (``lines.1.quantity``, ``lines.0.line_id``), as refunds do."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    eventually,
    place_guest_order,
    publish,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["field"] for e in response.json()["errors"]]


async def test_bad_fulfilment_and_return_quantities_name_the_line(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-L1": 5, "MUG-L1": 5})
    order = await place_guest_order(client, {"TEE-L1": 2, "MUG-L1": 1})
    tee, mug = (line["line_id"] for line in order["lines"])
    url = f"{API}/orders/{order['id']}"
    await publish(
        app,
        "PaymentSucceeded",
        {"payment_id": "p", "order_id": order["id"], "amount": order["total"], "currency": "EUR"},
    )

    async def paid() -> bool:
        response = await client.get(url, headers=bearer(admin))
        return bool(response.json()["status"] == "paid")

    await eventually(paid, what="order paid")

    async def fulfil(lines: list[dict[str, Any]]) -> httpx.Response:
        body = {"lines": lines, "tracking_number": "TRK"}
        return await client.post(f"{url}/fulfillments", json=body, headers=bearer(admin))

    async def give_back(lines: list[dict[str, Any]]) -> httpx.Response:
        body = {"lines": lines, "reason": "too small"}
        return await client.post(f"{url}/returns", json=body, headers=bearer(admin))

    too_many = await fulfil([{"line_id": tee, "quantity": 1}, {"line_id": mug, "quantity": 2}])
    assert fields(too_many) == ["lines.1.quantity"]
    unknown = await fulfil([{"line_id": "nope", "quantity": 1}])
    assert fields(unknown) == ["lines.0.line_id"]
    zero = await fulfil([{"line_id": tee, "quantity": 0}])
    assert fields(zero) == ["lines.0.quantity"]

    shipped = await fulfil([{"line_id": tee, "quantity": 1}])
    assert shipped.status_code == 201, shipped.text
    beyond = await give_back([{"line_id": tee, "quantity": 2}])
    assert fields(beyond) == ["lines.0.quantity"]
    unshipped = await give_back([{"line_id": tee, "quantity": 1}, {"line_id": mug, "quantity": 1}])
    assert fields(unshipped) == ["lines.1.quantity"]
    back = await give_back([{"line_id": tee, "quantity": 1}])
    assert back.status_code in (200, 201), back.text
