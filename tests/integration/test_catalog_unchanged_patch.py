"""A PATCH that gives every field its stored value changes nothing, on both shapes: no event, no
new ``updated_at``, the same ETag, and cached reads stay cached; it answers 200 with the current
representation. A PATCH that changes one field still writes and publishes as before."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI

from ecosistema.catalog.service import cache_generation, product_cache_key
from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

LAMP: dict[str, Any] = {
    "name": "Brass Desk Lamp",
    "description": "Solid brass.\nE27 socket.",
    "status": "active",
    "images": ["https://img.example/lamp-1.jpg", "https://img.example/lamp-2.jpg"],
    "variants": [
        {
            "sku": "LAMP-BR",
            "name": "Brass",
            "options": {"finish": "brass", "cable": "black"},
            "weight_grams": 2100,
            "prices": [{"currency": "EUR", "amount": 8900}, {"currency": "USD", "amount": 9900}],
            "sale_prices": [
                {
                    "currency": "EUR",
                    "amount": 6900,
                    "starts_at": "2030-01-01T00:00:00Z",
                    "ends_at": "2030-01-08T00:00:00Z",
                },
                {"currency": "USD", "amount": 7900, "starts_at": "2030-01-01T00:00:00Z"},
            ],
        }
    ],
}


def _at(document: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(document["updated_at"])


async def _state(app: FastAPI, product_id: str) -> tuple[int, int, bool]:
    """Events in catalog's outbox, the read cache's generation, and whether the product's
    document is still in the read cache."""
    ctx = ctx_of(app)
    cached = await ctx.cache.get(product_cache_key(product_id)) is not None
    return len(await outbox_types(ctx)), await cache_generation(ctx), cached


async def _lamp(shop: httpx.AsyncClient, staff: dict[str, str]) -> dict[str, Any]:
    created = await shop.post(f"{API}/products", json=LAMP, headers=staff)
    assert created.status_code == 201, created.text
    product: dict[str, Any] = created.json()
    read = await shop.get(f"{API}/products/{product['id']}")  # cached from now on
    assert read.status_code == 200
    return product


async def test_a_product_patch_with_the_stored_values_changes_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    url = f"{API}/products/{product['id']}"
    etag = (await shop.get(url)).headers["etag"]
    before = await _state(shop_app, product["id"])

    same = {
        "name": LAMP["name"],
        "slug": product["slug"],
        "description": LAMP["description"],
        "status": "active",
        "category_id": None,
        "images": LAMP["images"],
    }
    answers = [
        await shop.patch(url, json=same, headers=staff),
        await shop.patch(url, json={"name": LAMP["name"]}, headers=staff),
        await shop.patch(url, json={}, headers=staff),
        await shop.patch(url, json=same, headers={**staff, "If-Match": etag}),
    ]

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json() == product
        assert answer.headers["etag"] == etag
    assert await _state(shop_app, product["id"]) == before
    after = await shop.get(url)
    assert after.headers["etag"] == etag
    assert after.json()["updated_at"] == product["updated_at"]


async def test_an_unchanged_patch_still_honours_if_match(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    url = f"{API}/products/{product['id']}"

    stale = await shop.patch(
        url, json={"name": LAMP["name"]}, headers={**staff, "If-Match": '"not-the-etag"'}
    )

    assert stale.status_code == 412, stale.text


async def test_a_product_patch_that_changes_one_field_writes_and_publishes(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    url = f"{API}/products/{product['id']}"
    etag = (await shop.get(url)).headers["etag"]
    events, generation, _ = await _state(shop_app, product["id"])

    changed = await shop.patch(
        url, json={"name": LAMP["name"], "description": "Solid brass."}, headers=staff
    )

    assert changed.status_code == 200, changed.text
    assert changed.json()["description"] == "Solid brass."
    assert _at(changed.json()) > _at(product)
    assert changed.headers["etag"] != etag
    after_events, after_generation, _ = await _state(shop_app, product["id"])
    assert after_events == events + 1 and after_generation > generation
    assert (await outbox_types(ctx_of(shop_app)))[-1] == (
        "ProductUpdated",
        {"product_id": product["id"], "slug": product["slug"]},
    )


async def test_archiving_an_archived_product_again_publishes_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    url = f"{API}/products/{product['id']}"

    assert (await shop.delete(url, headers=staff)).status_code == 204
    events = await outbox_types(ctx_of(shop_app))
    assert events[-1][0] == "ProductArchived"
    assert (await shop.delete(url, headers=staff)).status_code == 204
    again = await shop.patch(url, json={"status": "archived"}, headers=staff)

    assert again.status_code == 200, again.text
    assert again.json()["status"] == "archived"
    assert await outbox_types(ctx_of(shop_app)) == events


async def test_a_variant_patch_with_the_stored_values_and_prices_changes_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    variant = product["variants"][0]
    url = f"{API}/products/{product['id']}"
    variant_url = f"{url}/variants/{variant['id']}"
    etag = (await shop.get(url)).headers["etag"]
    before = await _state(shop_app, product["id"])

    same = {
        "name": "Brass",
        "options": {"cable": "black", "finish": "brass"},
        "weight_grams": 2100,
        "position": 0,
        # The same prices in another order, the same instants written with other offsets.
        "prices": [{"currency": "usd", "amount": 9900}, {"currency": "EUR", "amount": 8900}],
        "sale_prices": [
            {"currency": "USD", "amount": 7900, "starts_at": "2030-01-01T01:00:00+01:00"},
            {
                "currency": "EUR",
                "amount": 6900,
                "starts_at": "2029-12-31T19:00:00-05:00",
                "ends_at": "2030-01-08T00:00:00.000Z",
            },
        ],
    }
    answers = [
        await shop.patch(variant_url, json=same, headers=staff),
        await shop.patch(variant_url, json={"weight_grams": 2100}, headers=staff),
        await shop.patch(variant_url, json={}, headers={**staff, "If-Match": etag}),
    ]

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json() == variant
        assert answer.headers["etag"] == etag
    assert await _state(shop_app, product["id"]) == before
    after = await shop.get(url)
    assert after.headers["etag"] == etag
    assert after.json()["updated_at"] == product["updated_at"]


async def test_a_variant_patch_that_changes_a_price_writes_and_publishes(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _lamp(shop, staff)
    variant = product["variants"][0]
    url = f"{API}/products/{product['id']}"
    etag = (await shop.get(url)).headers["etag"]
    events, generation, _ = await _state(shop_app, product["id"])

    repriced = await shop.patch(
        f"{url}/variants/{variant['id']}",
        json={"name": "Brass", "prices": [{"currency": "EUR", "amount": 8900}]},
        headers=staff,
    )

    assert repriced.status_code == 200, repriced.text
    assert repriced.json()["prices"] == [{"currency": "EUR", "amount": 8900}]
    assert repriced.headers["etag"] != etag
    after_events, after_generation, _ = await _state(shop_app, product["id"])
    assert after_events == events + 1 and after_generation > generation
    assert _at((await shop.get(url)).json()) > _at(product)


async def test_a_category_patch_with_the_stored_values_changes_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    created = await shop.post(
        f"{API}/categories", json={"name": "Lighting", "description": "Lamps"}, headers=staff
    )
    category = created.json()
    url = f"{API}/categories/{category['id']}"
    ctx = ctx_of(shop_app)
    events, generation = len(await outbox_types(ctx)), await cache_generation(ctx)

    same = await shop.patch(url, json={"name": "Lighting", "description": "Lamps"}, headers=staff)
    empty = await shop.patch(url, json={}, headers=staff)

    for answer in (same, empty):
        assert answer.status_code == 200, answer.text
        assert answer.json() == category
    assert (len(await outbox_types(ctx)), await cache_generation(ctx)) == (events, generation)

    renamed = await shop.patch(url, json={"name": "Lights", "description": "Lamps"}, headers=staff)
    assert renamed.status_code == 200, renamed.text
    assert _at(renamed.json()) > _at(category)
    assert [t for t, _ in await outbox_types(ctx)][-1] == "CategoryUpdated"
    assert await cache_generation(ctx) > generation
