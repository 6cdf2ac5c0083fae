"""Categories are moved within the tree and re-slugged on both shapes: paths below follow,
cycles and taken slugs are refused, events name every category that changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.catalog.schemas import CategoryUpdate
from ecosistema.catalog.search import SearchQuery, search_products
from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    ctx_of,
    make_category,
    make_product,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)


async def _paths(ctx: ServiceContext) -> dict[str, tuple[str | None, str]]:
    return {c.slug: (c.parent_id, c.path) for c in await catalog_service.list_categories(ctx)}


async def _tree(ctx: ServiceContext) -> dict[str, Any]:
    clothing = await make_category(ctx, "Clothing")
    shirts = await make_category(ctx, "Shirts", clothing.id)
    linen = await make_category(ctx, "Linen", shirts.id)
    home = await make_category(ctx, "Home")
    return {"clothing": clothing, "shirts": shirts, "linen": linen, "home": home}


async def test_moving_a_category_moves_everything_below_it(catalog: ServiceContext) -> None:
    tree = await _tree(catalog)
    product = await make_product(
        catalog, "Linen Shirt", skus={"LIN-1": 5000}, category_id=tree["linen"].id
    )
    before = len(await outbox_types(catalog))

    moved = await catalog_service.update_category(
        catalog, tree["shirts"].id, CategoryUpdate(parent_id=tree["home"].id)
    )

    assert (moved.parent_id, moved.path) == (tree["home"].id, "home/shirts")
    assert await _paths(catalog) == {
        "clothing": (None, "clothing"),
        "home": (None, "home"),
        "shirts": (tree["home"].id, "home/shirts"),
        "linen": (tree["shirts"].id, "home/shirts/linen"),
    }
    events = (await outbox_types(catalog))[before:]
    assert [(kind, payload["slug"]) for kind, payload in events] == [
        ("CategoryUpdated", "shirts"),
        ("CategoryUpdated", "linen"),
    ]
    home = await search_products(catalog.db, SearchQuery(category_id=tree["home"].id))
    clothing = await search_products(catalog.db, SearchQuery(category_id=tree["clothing"].id))
    assert [p.id for p in home.items] == [product.id]
    assert clothing.items == []


async def test_a_category_moves_to_the_root_with_a_null_parent(catalog: ServiceContext) -> None:
    tree = await _tree(catalog)

    moved = await catalog_service.update_category(
        catalog, tree["shirts"].id, CategoryUpdate.model_validate({"parent_id": None})
    )

    assert (moved.parent_id, moved.path) == (None, "shirts")
    assert (await _paths(catalog))["linen"] == (tree["shirts"].id, "shirts/linen")


async def test_a_category_cannot_move_under_itself_or_its_descendants(
    catalog: ServiceContext,
) -> None:
    tree = await _tree(catalog)
    before = await _paths(catalog)

    for target in ("clothing", "shirts", "linen"):
        with pytest.raises(Unprocessable) as refused:
            await catalog_service.update_category(
                catalog, tree["clothing"].id, CategoryUpdate(parent_id=tree[target].id)
            )
        assert [e["field"] for e in refused.value.extra["errors"]] == ["parent_id"]
    with pytest.raises(Unprocessable) as missing:
        await catalog_service.update_category(
            catalog, tree["clothing"].id, CategoryUpdate(parent_id="no-such-category")
        )
    assert missing.value.extra["errors"][0]["code"] == "not_found"
    assert await _paths(catalog) == before


async def test_a_new_slug_rewrites_the_paths_below_and_must_be_free(
    catalog: ServiceContext,
) -> None:
    tree = await _tree(catalog)

    renamed = await catalog_service.update_category(
        catalog, tree["shirts"].id, CategoryUpdate(slug="tops")
    )
    with pytest.raises(Conflict) as taken:
        await catalog_service.update_category(
            catalog, tree["linen"].id, CategoryUpdate(slug="home")
        )

    assert (renamed.slug, renamed.path) == ("tops", "clothing/tops")
    assert (await _paths(catalog))["linen"] == (tree["shirts"].id, "clothing/tops/linen")
    assert taken.value.type == "slug-taken"
    assert taken.value.extra["errors"][0]["field"] == "slug"
    assert (await _paths(catalog))["linen"] == (tree["shirts"].id, "clothing/tops/linen")


async def test_staff_move_and_re_slug_a_category_over_http(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    tree = await _tree(ctx_of(shop_app))
    url = f"{API}/categories/{tree['shirts'].id}"
    cached = await shop.get(f"{API}/categories")

    moved = await shop.patch(
        url, json={"parent_id": tree["home"].id, "slug": "tops", "name": "Tops"}, headers=staff
    )
    cycle = await shop.patch(
        f"{API}/categories/{tree['clothing'].id}",
        json={"parent_id": tree["clothing"].id},
        headers=staff,
    )
    taken = await shop.patch(url, json={"slug": "clothing"}, headers=staff)
    null_slug = await shop.patch(url, json={"slug": None}, headers=staff)
    forbidden = await shop.patch(url, json={"parent_id": None}, headers=customer)
    listed = await shop.get(f"{API}/categories", headers={"If-None-Match": cached.headers["etag"]})

    assert moved.status_code == 200, moved.text
    assert (moved.json()["path"], moved.json()["name"]) == ("home/tops", "Tops")
    assert cycle.status_code == 422
    assert [e["field"] for e in cycle.json()["errors"]] == ["parent_id"]
    assert taken.status_code == 409
    assert taken.json()["title"] == "Slug already in use"
    assert [e["field"] for e in taken.json()["errors"]] == ["slug"]
    assert null_slug.status_code == 422
    assert forbidden.status_code == 403
    assert listed.status_code == 200
    assert [c["path"] for c in listed.json()] == [
        "clothing",
        "home",
        "home/tops",
        "home/tops/linen",
    ]


async def test_a_patch_naming_the_current_parent_and_slug_changes_nothing(
    catalog: ServiceContext,
) -> None:
    tree = await _tree(catalog)
    before = len(await outbox_types(catalog))
    stored = await catalog_service.get_category(catalog, tree["shirts"].id)

    same = await catalog_service.update_category(
        catalog,
        tree["shirts"].id,
        CategoryUpdate(parent_id=tree["clothing"].id, slug="shirts", name="Shirts"),
    )

    assert same == stored
    assert len(await outbox_types(catalog)) == before
