"""A product is read by its slug on both shapes, as a storefront with slug URLs does: the same
document and ETag as by id, active products only for anyone but staff."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
    variant,
)


async def test_a_product_is_read_by_its_slug_with_the_same_document_and_etag_as_by_id(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    created = await shop.post(
        f"{API}/products",
        json={"name": "Modern Bamboo Runner", "status": "active", "variants": [variant("R-1", 1)]},
        headers=staff,
    )
    product = created.json()

    by_slug = await shop.get(f"{API}/products/by-slug/modern-bamboo-runner")
    by_id = await shop.get(f"{API}/products/{product['id']}")
    again = await shop.get(
        f"{API}/products/by-slug/modern-bamboo-runner",
        headers={"If-None-Match": by_slug.headers["etag"]},
    )
    unknown = await shop.get(f"{API}/products/by-slug/no-such-runner")

    assert by_slug.status_code == 200, by_slug.text
    assert by_slug.json() == by_id.json()
    assert by_slug.json()["id"] == product["id"]
    assert by_slug.headers["etag"] == by_id.headers["etag"]
    assert by_slug.headers["cache-control"].startswith("public")
    assert again.status_code == 304
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert unknown.json()["detail"] == "No product with this slug."


async def test_a_draft_is_read_by_its_slug_by_staff_only_and_a_new_slug_takes_over(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    created = await shop.post(f"{API}/products", json={"name": "Secret Lamp"}, headers=staff)
    product_id = created.json()["id"]
    url = f"{API}/products/by-slug/secret-lamp"

    anonymous = await shop.get(url)
    signed_in = await shop.get(url, headers=customer)
    for_staff = await shop.get(url, headers=staff)
    renamed = await shop.patch(
        f"{API}/products/{product_id}",
        json={"slug": "open-lamp", "status": "active"},
        headers=staff,
    )
    old = await shop.get(url)
    new = await shop.get(f"{API}/products/by-slug/open-lamp")

    assert anonymous.status_code == 404
    assert signed_in.status_code == 404
    assert for_staff.status_code == 200
    assert for_staff.json()["status"] == "draft"
    assert for_staff.headers["cache-control"].startswith("private")
    assert renamed.status_code == 200, renamed.text
    assert old.status_code == 404
    assert new.status_code == 200
    assert new.json()["id"] == product_id
