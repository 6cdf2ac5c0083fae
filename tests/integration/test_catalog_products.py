"""Products over HTTP on both shapes: staff-only writes, visibility of drafts, CRUD of
products, variants and categories, ETags with If-None-Match, and cache invalidation."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
    variant,
)

TEE = {
    "name": "Organic Cotton Tee",
    "description": "Soft and breathable.",
    "status": "active",
    "images": ["https://img.example/tee.jpg"],
    "variants": [
        variant("TEE-S", 1990, options={"size": "S"}, weight_grams=180),
        variant("TEE-M", 1990, options={"size": "M"}, weight_grams=190),
    ],
}


async def created(shop: httpx.AsyncClient, staff: dict[str, str], body: dict[str, Any]) -> Any:
    response = await shop.post(f"{API}/products", json=body, headers=staff)
    assert response.status_code == 201, response.text
    return response.json()


async def test_staff_create_a_product_with_a_slug_from_its_name_and_anyone_reads_it(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")

    product = await created(shop, staff, TEE)
    again = await created(shop, staff, {**TEE, "variants": []})

    assert product["slug"] == "organic-cotton-tee"
    assert again["slug"] == "organic-cotton-tee-2"
    assert [v["sku"] for v in product["variants"]] == ["TEE-S", "TEE-M"]
    public = await shop.get(f"{API}/products/{product['id']}")
    assert public.status_code == 200
    assert public.json()["variants"][1]["prices"] == [{"currency": "EUR", "amount": 1990}]
    assert ("ProductCreated", {"product_id": product["id"], "slug": "organic-cotton-tee"}) in (
        await outbox_types(ctx_of(shop_app))
    )


async def test_customers_and_anonymous_callers_cannot_write(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    customer = await sign_in_demo(shop_app, shop, "customer")

    assert (await shop.post(f"{API}/products", json=TEE)).status_code == 401
    assert (await shop.post(f"{API}/products", json=TEE, headers=customer)).status_code == 403


async def test_drafts_are_visible_to_staff_only(shop_app: FastAPI, shop: httpx.AsyncClient) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    draft = await created(shop, staff, {**TEE, "status": "draft"})

    assert (await shop.get(f"{API}/products/{draft['id']}")).status_code == 404
    assert (await shop.get(f"{API}/products/{draft['id']}", headers=customer)).status_code == 404
    assert (await shop.get(f"{API}/products/{draft['id']}", headers=staff)).status_code == 200
    listed = (await shop.get(f"{API}/products")).json()["items"]
    assert draft["id"] not in [p["id"] for p in listed]
    staff_list = (
        await shop.get(f"{API}/products", params={"status": "draft"}, headers=staff)
    ).json()["items"]
    assert [p["id"] for p in staff_list] == [draft["id"]]
    assert (await shop.get(f"{API}/products", params={"status": "draft"})).status_code == 422


async def test_etag_answers_304_until_a_write_changes_the_product(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await created(shop, staff, TEE)
    url = f"{API}/products/{product['id']}"

    first = await shop.get(url)
    etag = first.headers["etag"]
    unchanged = await shop.get(url, headers={"If-None-Match": etag})
    weak = await shop.get(url, headers={"If-None-Match": f'"nope", W/{etag}'})
    patched = await shop.patch(url, json={"name": "Organic Cotton Tee v2"}, headers=staff)
    after = await shop.get(url, headers={"If-None-Match": etag})

    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert weak.status_code == 304
    assert patched.status_code == 200
    assert after.status_code == 200
    assert after.json()["name"] == "Organic Cotton Tee v2"
    assert after.headers["etag"] != etag


async def test_cached_lists_are_invalidated_by_writes(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    await created(shop, staff, TEE)
    before = await shop.get(f"{API}/products", params={"q": "linen"})
    await created(shop, staff, {**TEE, "name": "Linen Shirt", "variants": []})
    after = await shop.get(f"{API}/products", params={"q": "linen"})
    listed_etag = after.headers["etag"]

    assert before.json()["items"] == []
    assert [p["name"] for p in after.json()["items"]] == ["Linen Shirt"]
    assert (
        await shop.get(
            f"{API}/products", params={"q": "linen"}, headers={"If-None-Match": listed_etag}
        )
    ).status_code == 304


async def test_variants_are_added_changed_repriced_and_removed(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await created(shop, staff, TEE)
    base = f"{API}/products/{product['id']}/variants"

    added = await shop.post(base, json=variant("TEE-L", 2190), headers=staff)
    duplicate = await shop.post(base, json=variant("TEE-L", 2190), headers=staff)
    repriced = await shop.patch(
        f"{base}/{added.json()['id']}",
        json={"prices": [{"currency": "EUR", "amount": 2290}, {"currency": "USD", "amount": 2490}]},
        headers=staff,
    )
    removed = await shop.delete(f"{base}/{product['variants'][0]['id']}", headers=staff)
    listed = await shop.get(base)

    assert added.status_code == 201
    assert duplicate.status_code == 409 and duplicate.json()["type"].endswith("sku-taken")
    assert [(e["field"], e["code"]) for e in duplicate.json()["errors"]] == [("sku", "taken")]
    again = await shop.post(
        f"{API}/products",
        json={
            **TEE,
            "slug": product["slug"],
            "variants": [variant("TEE-X", 100), variant("TEE-L", 1)],
        },
        headers=staff,
    )
    assert again.status_code == 409 and again.json()["type"].endswith("slug-taken")
    assert [e["field"] for e in again.json()["errors"]] == ["slug"]
    renamed = {
        **TEE,
        "slug": "another-tee",
        "variants": [variant("TEE-X", 100), variant("TEE-L", 1)],
    }
    taken = await shop.post(f"{API}/products", json=renamed, headers=staff)
    assert [e["field"] for e in taken.json()["errors"]] == ["variants.1.sku"]
    assert repriced.json()["prices"] == [
        {"currency": "EUR", "amount": 2290},
        {"currency": "USD", "amount": 2490},
    ]
    assert removed.status_code == 204
    assert [v["sku"] for v in listed.json()] == ["TEE-M", "TEE-L"]


async def test_archiving_hides_the_product_and_is_evented(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await created(shop, staff, TEE)
    url = f"{API}/products/{product['id']}"
    await shop.get(url)  # cached now

    assert (await shop.delete(url, headers=staff)).status_code == 204

    assert (await shop.get(url)).status_code == 404
    assert (await shop.get(url, headers=staff)).json()["status"] == "archived"
    assert ("ProductArchived", {"product_id": product["id"], "slug": product["slug"]}) in (
        await outbox_types(ctx_of(shop_app))
    )


async def test_input_is_validated_strictly(shop_app: FastAPI, shop: httpx.AsyncClient) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    cases = [
        {**TEE, "colour": "red"},
        {**TEE, "slug": "Not A Slug"},
        {**TEE, "variants": [variant("DUP", 1), variant("DUP", 2)]},
        {**TEE, "variants": [variant("X-1", -5)]},
        {**TEE, "variants": [{"sku": "X-2", "prices": [{"currency": "XXX", "amount": 1}]}]},
        {**TEE, "images": ["javascript:alert(1)"]},
        {**TEE, "category_id": "missing"},
    ]
    for body in cases:
        response = await shop.post(f"{API}/products", json=body, headers=staff)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await shop.get(f"{API}/products/does-not-exist")).status_code == 404


async def test_categories_form_a_tree_and_listing_includes_descendants(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    clothing = (
        await shop.post(f"{API}/categories", json={"name": "Clothing"}, headers=staff)
    ).json()
    tees = (
        await shop.post(
            f"{API}/categories",
            json={"name": "T-Shirts", "parent_id": clothing["id"]},
            headers=staff,
        )
    ).json()
    await created(shop, staff, {**TEE, "category_id": tees["id"]})

    tree = (await shop.get(f"{API}/categories")).json()
    in_clothing = (await shop.get(f"{API}/products", params={"category_id": clothing["id"]})).json()
    not_empty = await shop.delete(f"{API}/categories/{clothing['id']}", headers=staff)

    assert [(c["slug"], c["path"]) for c in tree] == [
        ("clothing", "clothing"),
        ("t-shirts", "clothing/t-shirts"),
    ]
    assert [p["name"] for p in in_clothing["items"]] == ["Organic Cotton Tee"]
    assert not_empty.status_code == 409


async def test_every_catalog_read_carries_an_etag_that_revalidates(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await created(shop, staff, TEE)
    await shop.post(f"{API}/warehouses", json={"code": "main", "name": "Main"}, headers=staff)
    reads = [
        f"{API}/products/{product['id']}/variants",
        f"{API}/categories",
        f"{API}/warehouses",
        f"{API}/inventory/TEE-S",
        f"{API}/inventory/TEE-S/movements",
    ]
    for url in reads:
        first = await shop.get(url, headers=staff)
        assert first.status_code == 200, (url, first.text)
        again = await shop.get(url, headers={**staff, "If-None-Match": first.headers["etag"]})
        assert again.status_code == 304, url


async def test_anonymous_and_signed_in_reads_of_a_product_answer_alike(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    # Anonymous reads take the fast path, signed-in ones the framework route: one contract.
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    product = await created(shop, staff, TEE)
    url = f"{API}/products/{product['id']}"

    anonymous = await shop.get(url)
    signed_in = await shop.get(url, headers=customer)

    assert anonymous.status_code == signed_in.status_code == 200
    assert anonymous.content == signed_in.content
    for header in ("etag", "cache-control", "content-type", "content-length"):
        assert anonymous.headers[header] == signed_in.headers[header], header
    assert anonymous.json() == product
    for response in (anonymous, signed_in):
        assert response.headers["x-request-id"]
        assert response.headers["traceparent"]
        assert response.headers["x-content-type-options"] == "nosniff"
    metrics = (await shop.get("/metrics")).text
    series = (
        'ecosistema_http_requests_total{method="GET",'
        'route="/api/v1/products/{product_id}",status="200"}'
    )
    assert any(line.startswith(series + " 2.0") for line in metrics.splitlines())


async def test_unknown_product_is_the_same_404_problem_with_or_without_credentials(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    customer = await sign_in_demo(shop_app, shop, "customer")
    url = f"{API}/products/no-such-product"

    anonymous = await shop.get(url)
    signed_in = await shop.get(url, headers=customer)

    assert anonymous.status_code == signed_in.status_code == 404
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.json() == signed_in.json()
    assert anonymous.json()["instance"] == url


async def test_routes_declared_before_the_product_route_keep_their_paths(
    shop: httpx.AsyncClient,
) -> None:
    # /products/export is not a product id: it is the staff-only export, whoever asks.
    response = await shop.get(f"{API}/products/export")
    assert response.status_code == 401
    assert response.json()["type"].endswith("/unauthorized")


async def test_blank_names_and_control_characters_are_refused_on_the_field(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    cases = [
        ("products", {**TEE, "name": "  "}, "name"),
        ("products", {**TEE, "name": "Tee\u0000"}, "name"),
        ("products", {**TEE, "name": "Two\nlines"}, "name"),
        ("products", {**TEE, "description": "nul \u0000 here"}, "description"),
        ("products", {**TEE, "variants": [variant("V-1", 1, name=" ")]}, "variants.0.name"),
        ("products", {**TEE, "variants": [variant("V-1", 1, options={"size": "\u0000"})]},
         "variants.0.options.size"),
        ("categories", {"name": "\t "}, "name"),
        ("warehouses", {"code": "main", "name": " "}, "name"),
        ("price-lists", {"code": "vip", "name": "V\u0000IP"}, "name"),
    ]  # fmt: skip
    for path, body, field in cases:
        response = await shop.post(f"{API}/{path}", json=body, headers=staff)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == [field], body
    listed = await shop.get(f"{API}/products", headers=staff)
    assert listed.json()["items"] == []


async def test_names_in_any_script_get_slugs_of_their_own_for_products_and_categories(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")

    tea = await created(shop, staff, {**TEE, "name": "Чай зелёный", "variants": []})
    tower = await created(shop, staff, {**TEE, "name": "東京タワー", "variants": []})
    again = await created(shop, staff, {**TEE, "name": "Чай  зелёный!", "variants": []})
    given = await created(shop, staff, {**TEE, "slug": "чай-чёрный", "variants": []})
    category = await shop.post(f"{API}/categories", json={"name": "Чай"}, headers=staff)
    upper = await shop.post(f"{API}/products", json={**TEE, "slug": "Чай"}, headers=staff)

    assert [p["slug"] for p in (tea, tower, again, given)] == [
        "чай-зелёный",
        "東京タワー",
        "чай-зелёный-2",
        "чай-чёрный",
    ]
    assert category.status_code == 201, category.text
    assert category.json()["slug"] == "чай"
    assert upper.status_code == 422
    assert [e["field"] for e in upper.json()["errors"]] == ["slug"]
    read = await shop.get(f"{API}/products/{tea['id']}")
    assert read.json()["slug"] == "чай-зелёный"
