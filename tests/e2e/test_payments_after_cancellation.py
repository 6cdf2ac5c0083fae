"""A payment racing its order's cancellation, end to end over HTTP with identity, catalog, orders
and payments in one app, on both shapes: the money that lands after the order was cancelled is
refunded in full by the platform itself, and the cancelled order and its stock stay as they are."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

from ecosistema.payments.service import provider_for, use_provider
from tests.e2e.test_payments_flow import app, order_status, pay, placed_order
from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    available,
    customer,
    eventually,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


class HeldAtTheProvider:
    """The sandbox, with each authorization held until the test lets it go: the charge is in
    flight while the order is cancelled."""

    name = "sandbox"

    def __init__(self, sandbox: Any) -> None:
        self._sandbox = sandbox
        self.charging = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._sandbox, attribute)

    async def authorize(self, **call: Any) -> Any:
        self.charging.set()
        await self.go.wait()
        return await self._sandbox.authorize(**call)


async def test_payment_that_lands_after_the_cancellation_is_refunded_in_full(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"RACE-TEE": 10})
    shopper = await customer(client, "racer")
    order = await placed_order(client, shopper, "RACE-TEE")
    assert await available(client, admin, "RACE-TEE") == 8
    payments_ctx = app.state.runtime.contexts["payments"]
    provider = HeldAtTheProvider(provider_for(payments_ctx, "sandbox"))
    use_provider(payments_ctx, provider)  # type: ignore[arg-type]

    paying = asyncio.create_task(pay(client, shopper, order["id"]))
    await asyncio.wait_for(provider.charging.wait(), 10)
    cancelled = await client.post(
        f"{API}/orders/{order['id']}/cancel", json={}, headers=bearer(shopper)
    )
    assert cancelled.status_code == 200, cancelled.text
    provider.go.set()
    paid = await paying
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    assert payment["status"] == "succeeded"

    async def refunds() -> list[Any]:
        listed = await client.get(f"{API}/payments/{payment['id']}/refunds", headers=bearer(admin))
        items: list[Any] = listed.json()["items"]
        return items

    async def refunded() -> bool:
        return any(refund["status"] == "succeeded" for refund in await refunds())

    await eventually(refunded, what="the refused payment refunded")
    [refund] = await refunds()
    assert (refund["status"], refund["amount"]) == ("succeeded", payment["captured_amount"])
    assert refund["reason"] == "The order was cancelled before this payment completed."
    documents = (await client.get(f"{API}/invoices", headers=bearer(admin))).json()["items"]
    kinds = sorted(d["kind"] for d in documents if d["payment_id"] == payment["id"])
    assert kinds == ["credit_note", "invoice"]

    # The order stays cancelled, its totals untouched; its stock went back and stays back.
    assert await order_status(client, admin, order["id"]) == "cancelled"
    shown = (await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))).json()
    assert shown["refunded_total"] == 0
    history = (
        await client.get(f"{API}/orders/{order['id']}/history", headers=bearer(admin))
    ).json()
    actions = [entry["action"] for entry in history]
    assert "payment_refused" in actions and "refused_payment_refunded" in actions
    assert await available(client, admin, "RACE-TEE") == 10
