"""Instants at the ends of the calendar, on both shapes: query parameters and bodies of orders,
vouchers and audit events answer 422 naming the field; an instant that reaches the database
unchecked answers 422 too, never 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import add_product, app, settings, staff_tokens

__all__ = ["app", "settings"]

LATE = "9999-12-31T23:00:00-05:00"
EARLY = "0001-01-01T00:00:00+05:00"


def field_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    errors: list[dict[str, Any]] = response.json()["errors"]
    assert "outside the supported range" in errors[0]["message"]
    return str(errors[0]["field"])


@pytest.mark.parametrize("value", [LATE, EARLY])
async def test_list_filters_name_the_instant_out_of_range(
    app: FastAPI, client: httpx.AsyncClient, value: str
) -> None:
    admin = await staff_tokens(app, client)
    for name in ("created_from", "created_to"):
        response = await client.get(f"{API}/orders", params={name: value}, headers=bearer(admin))
        assert field_of(response) == name
    for name in ("since", "until"):
        response = await client.get(
            f"{API}/audit-events", params={name: value}, headers=bearer(admin)
        )
        assert field_of(response) == name
    fine = await client.get(
        f"{API}/audit-events",
        params={"since": "0001-01-01T05:00:00+05:00", "until": "9999-12-31T23:00:00Z"},
        headers=bearer(admin),
    )
    assert fine.status_code == 200, fine.text


async def test_voucher_dates_out_of_range_name_their_field(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    base = {"code": "EDGE", "kind": "percentage", "value": 1000}
    late = await client.post(
        f"{API}/vouchers", json={**base, "ends_at": LATE}, headers=bearer(admin)
    )
    assert field_of(late) == "ends_at"
    early = await client.post(
        f"{API}/vouchers", json={**base, "starts_at": EARLY}, headers=bearer(admin)
    )
    assert field_of(early) == "starts_at"
    naive = await client.post(
        f"{API}/vouchers", json={**base, "starts_at": "2026-12-01T00:00:00"}, headers=bearer(admin)
    )
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "starts_at"
    created = await client.post(
        f"{API}/vouchers",
        json={**base, "starts_at": "2026-12-01T01:00:00+01:00", "ends_at": "9999-12-31T00:00:00Z"},
        headers=bearer(admin),
    )
    assert created.status_code == 201, created.text
    assert created.json()["starts_at"].startswith("2026-12-01T00:00:00")
    update = await client.patch(
        f"{API}/vouchers/EDGE", json={"ends_at": LATE}, headers=bearer(admin)
    )
    assert field_of(update) == "ends_at"


async def test_sale_price_out_of_range_names_its_field(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await add_product(client, admin, "EDGE-1", 0)
    listing = await client.get(f"{API}/products", headers=bearer(admin))
    [summary] = listing.json()["items"]
    product = (await client.get(f"{API}/products/{summary['id']}", headers=bearer(admin))).json()
    variant = product["variants"][0]
    response = await client.patch(
        f"{API}/products/{product['id']}/variants/{variant['id']}",
        json={"sale_prices": [{"currency": "EUR", "amount": 1000, "starts_at": LATE}]},
        headers=bearer(admin),
    )
    assert field_of(response) == "sale_prices.0.starts_at"
