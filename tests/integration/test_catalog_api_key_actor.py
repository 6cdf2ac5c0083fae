"""What a machine client changes is recorded as the API key's doing, on both shapes: a stock
movement made with a key names ``api_key:<key id>``, not the key's creator."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)


async def test_a_stock_movement_made_with_an_api_key_names_the_key(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    me = (await shop.get(f"{API}/users/me", headers=staff)).json()["id"]
    created = await shop.post(
        f"{API}/api-keys",
        json={"name": "erp", "scopes": ["catalog:write", "inventory:write", "inventory:read"]},
        headers=staff,
    )
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["key"]}
    assert (
        await shop.post(f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=staff)
    ).status_code == 201
    product = await shop.post(
        f"{API}/products",
        json={"name": "Keyed Lamp", "status": "active", "variants": [{"sku": "ERP-1"}]},
        headers=key,
    )
    assert product.status_code == 201, product.text

    for who, delta in ((key, 5), (staff, 1)):
        moved = await shop.post(
            f"{API}/inventory/ERP-1/adjustments",
            json={"warehouse": "main", "delta": delta, "reason": "delivery"},
            headers=who,
        )
        assert moved.status_code == 201, moved.text
    movements = (await shop.get(f"{API}/inventory/ERP-1/movements", headers=staff)).json()
    actors = {m["on_hand_delta"]: m["actor"] for m in movements["items"]}
    assert actors == {5: f"api_key:{created.json()['id']}", 1: me}
