"""Lost updates are refused on both shapes: a product or variant PATCH with If-Match (the ETag a
GET of the product gave) applies only while the product is still as read, else 412 and nothing
changes; every such PATCH answers with the product's new ETag."""

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


async def test_a_write_based_on_a_stale_read_is_refused_with_412(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    created = await shop.post(
        f"{API}/products",
        json={
            "name": "Match Lamp",
            "status": "active",
            "variants": [{"sku": "MATCH-1", "prices": [{"currency": "EUR", "amount": 1250}]}],
        },
        headers=staff,
    )
    product = created.json()
    url = f"{API}/products/{product['id']}"
    variant_url = f"{url}/variants/{product['variants'][0]['id']}"
    read = (await shop.get(url, headers=staff)).headers["etag"]

    # Two integrations read the same product; the first writes, the second's write is stale.
    prices = {"prices": [{"currency": "EUR", "amount": 1250}, {"currency": "USD", "amount": 1400}]}
    first = await shop.patch(variant_url, json=prices, headers={**staff, "If-Match": read})
    assert first.status_code == 200, first.text
    now = first.headers["etag"]
    assert now != read and now == (await shop.get(url, headers=staff)).headers["etag"]
    stale = await shop.patch(
        variant_url,
        json={"prices": [{"currency": "EUR", "amount": 1300}]},
        headers={**staff, "If-Match": read},
    )
    assert stale.status_code == 412, stale.text
    assert stale.headers["content-type"].startswith("application/problem+json")
    assert stale.json()["type"].endswith("/precondition-failed")
    kept = (await shop.get(url, headers=staff)).json()["variants"][0]["prices"]
    assert {p["currency"] for p in kept} == {"EUR", "USD"}

    for refused in (f"W/{now}", '"nothing"'):
        answer = await shop.patch(url, json={"name": "X"}, headers={**staff, "If-Match": refused})
        assert answer.status_code == 412, (refused, answer.text)
    renamed = await shop.patch(
        url, json={"name": "Match Lamp II"}, headers={**staff, "If-Match": f'"old", {now}'}
    )
    assert renamed.status_code == 200, renamed.text
    anyhow = await shop.patch(
        url, json={"name": "Match Lamp III"}, headers={**staff, "If-Match": "*"}
    )
    assert anyhow.status_code == 200, anyhow.text
    unconditional = await shop.patch(url, json={"description": "free"}, headers=staff)
    assert unconditional.status_code == 200 and unconditional.headers["etag"]
    missing = await shop.patch(
        f"{API}/products/{'0' * 32}", json={"name": "X"}, headers={**staff, "If-Match": "*"}
    )
    assert missing.status_code == 404
