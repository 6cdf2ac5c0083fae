"""Catalog shows draft products only to its staff, so a cart reveals nothing of them either: to
anyone else a draft's SKU gets exactly the answer an unknown SKU gets. Staff see the reason."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    customer,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _draft(client: httpx.AsyncClient, admin: dict[str, Any], sku: str) -> None:
    response = await client.post(
        f"{API}/products",
        json={
            "name": f"Secret {sku}",
            "status": "draft",
            "variants": [{"sku": sku, "prices": [{"currency": "EUR", "amount": 2000}]}],
        },
        headers=bearer(admin),
    )
    assert response.status_code == 201, response.text


def _answer(response: httpx.Response, sku: str) -> tuple[int, str, str, str, Any]:
    """A refusal with the SKU it names blanked out: what tells one SKU from another."""
    body = response.json()
    errors = [{**e, "message": e["message"].replace(sku, "<sku>")} for e in body["errors"]]
    detail = body["detail"].replace(sku, "<sku>")
    return response.status_code, body["type"], body["title"], detail, errors


async def test_a_drafts_sku_is_unknown_to_a_guest_and_to_a_customer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-41": 5})
    await _draft(client, admin, "SECRET-41")
    ana = await customer(client, "ana")

    def create(sku: str) -> dict[str, Any]:
        items = [{"sku": "TEE-41", "quantity": 1}, {"sku": sku, "quantity": 1}]
        return {"currency": "EUR", "items": items}

    for who in ({}, bearer(ana)):
        # A new cart with items.
        draft = await client.post(f"{API}/carts", json=create("SECRET-41"), headers=who)
        unknown = await client.post(f"{API}/carts", json=create("NOPE-41"), headers=who)
        assert draft.status_code == 422, draft.text
        assert draft.headers["content-type"].startswith("application/problem+json")
        assert _answer(draft, "SECRET-41") == _answer(unknown, "NOPE-41")
        [error] = draft.json()["errors"]
        assert (error["field"], error["code"]) == ("items.1.sku", "unknown_sku")
        assert "draft" not in draft.text and "on sale" not in draft.text

        # Adding to a cart.
        created = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=who)
        assert created.status_code in (200, 201), created.text
        headers = {**who, **({} if who else {"X-Cart-Token": created.headers["X-Cart-Token"]})}
        url = f"{API}/carts/{created.json()['id']}/items"
        draft = await client.post(url, json={"sku": "SECRET-41", "quantity": 1}, headers=headers)
        unknown = await client.post(url, json={"sku": "NOPE-41", "quantity": 1}, headers=headers)
        assert draft.status_code == 422, draft.text
        assert _answer(draft, "SECRET-41") == _answer(unknown, "NOPE-41")
        [error] = draft.json()["errors"]
        assert (error["field"], error["code"]) == ("sku", "unknown_sku")
        assert "draft" not in draft.text and "on sale" not in draft.text


async def test_staff_are_told_the_sku_is_a_draft(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-42": 5})
    await _draft(client, admin, "SECRET-42")
    created = await client.post(
        f"{API}/carts",
        json={"currency": "EUR", "items": [{"sku": "SECRET-42", "quantity": 1}]},
        headers=bearer(admin),
    )
    assert created.status_code == 422, created.text
    [error] = created.json()["errors"]
    assert (error["field"], error["code"]) == ("items.0.sku", "not_purchasable")
    assert "draft" in error["message"]
