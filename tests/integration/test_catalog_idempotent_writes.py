"""Catalog's creating POSTs take an Idempotency-Key on both shapes, with Stripe's rules: a retry
with the same key and body replays the first answer and changes nothing more; another body with
the same key is a 422."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)


async def _post(
    shop: httpx.AsyncClient, path: str, body: Any, who: dict[str, str], key: str
) -> httpx.Response:
    return await shop.post(f"{API}{path}", json=body, headers={**who, "Idempotency-Key": key})


async def test_a_retried_stock_adjustment_is_booked_once(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = {
        "name": "Retry Lamp",
        "status": "active",
        "variants": [{"sku": "RETRY-1", "prices": [{"currency": "EUR", "amount": 990}]}],
    }
    created = await _post(shop, "/products", product, staff, "erp-product-1")
    again = await _post(shop, "/products", product, staff, "erp-product-1")
    assert (created.status_code, again.status_code) == (201, 201), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == created.json()
    assert created.headers["Location"] == f"/api/v1/products/{created.json()['id']}"
    listed = await shop.get(f"{API}/products", params={"q": "Retry Lamp"})
    assert [p["slug"] for p in listed.json()["items"]] == ["retry-lamp"]

    warehouse = {"code": "madrid", "name": "Madrid"}
    assert (await _post(shop, "/warehouses", warehouse, staff, "wh")).status_code == 201
    body = {"warehouse": "madrid", "delta": 5, "reason": "delivery 42"}
    first = await _post(shop, "/inventory/RETRY-1/adjustments", body, staff, "erp-adjust-1")
    retried = await _post(shop, "/inventory/RETRY-1/adjustments", body, staff, "erp-adjust-1")
    assert (first.status_code, retried.status_code) == (201, 201), retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == first.json()
    stock = await shop.get(f"{API}/inventory/RETRY-1", headers=staff)
    assert stock.json()["on_hand"] == 5

    other = await _post(
        shop, "/inventory/RETRY-1/adjustments", {**body, "delta": 6}, staff, "erp-adjust-1"
    )
    assert other.status_code == 422, other.text
    assert other.json()["type"].endswith("/idempotency-key-reuse")
    assert (await shop.get(f"{API}/inventory/RETRY-1", headers=staff)).json()["on_hand"] == 5


async def test_variants_categories_price_lists_and_warehouses_are_made_once_per_key(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _post(shop, "/products", {"name": "Keyed Mug", "status": "draft"}, staff, "mug")
    writes = [
        (f"/products/{product.json()['id']}/variants", {"sku": "KEYED-1"}),
        ("/categories", {"name": "Keyed"}),
        ("/price-lists", {"code": "keyed", "name": "Keyed"}),
        ("/warehouses", {"code": "keyed", "name": "Keyed"}),
    ]
    for path, body in writes:
        first = await _post(shop, path, body, staff, f"key{path}")
        second = await _post(shop, path, body, staff, f"key{path}")
        assert (first.status_code, second.status_code) == (201, 201), (path, second.text)
        assert second.headers["Idempotent-Replayed"] == "true"
        assert second.json()["id"] == first.json()["id"]
