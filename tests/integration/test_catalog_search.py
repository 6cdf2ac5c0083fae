"""Search on both shapes (FTS5 on SQLite, tsvector on PostgreSQL): ranking, filters, sorting
and cursor pagination."""

from __future__ import annotations

from typing import Any

import pytest

from ecosistema.catalog.inventory import adjust_stock
from ecosistema.catalog.schemas import ProductCreate, ProductPage, StockAdjustment
from ecosistema.catalog.search import SearchQuery, search_products
from ecosistema.platform.errors import Unprocessable
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    make_category,
    make_warehouse,
    settings_fixture,  # noqa: F401 - a fixture
)


async def search(ctx: ServiceContext, **kwargs: Any) -> ProductPage:
    return await search_products(ctx.db, SearchQuery(**kwargs))


async def add(
    ctx: ServiceContext,
    name: str,
    *,
    description: str = "",
    prices: dict[str, int] | None = None,
    options: dict[str, str] | None = None,
    category_id: str | None = None,
    status: str = "active",
) -> str:
    sku = name.upper().replace(" ", "-")[:60]
    product = await catalog_service.create_product(
        ctx,
        ProductCreate.model_validate(
            {
                "name": name,
                "description": description,
                "status": status,
                "category_id": category_id,
                "variants": [
                    {
                        "sku": sku,
                        "options": options or {},
                        "prices": [{"currency": c, "amount": a} for c, a in (prices or {}).items()],
                    }
                ],
            }
        ),
    )
    return str(product.id)


def names(page: ProductPage) -> list[str]:
    return [p.name for p in page.items]


async def test_a_match_in_the_name_ranks_above_one_in_the_description(
    catalog: ServiceContext,
) -> None:
    await add(catalog, "Trail Runner", description="A light shoe for rocky paths.")
    await add(catalog, "Canvas Tote", description="Carries your trail snacks.")
    await add(catalog, "Desk Lamp", description="Warm light.")

    page = await search(catalog, text="trail")

    assert names(page) == ["Trail Runner", "Canvas Tote"]


async def test_every_word_must_match_and_prefixes_match(catalog: ServiceContext) -> None:
    await add(catalog, "Merino Wool Hoodie")
    await add(catalog, "Merino Socks")
    await add(catalog, "Wool Blanket")

    assert names(await search(catalog, text="merino wool")) == ["Merino Wool Hoodie"]
    assert sorted(names(await search(catalog, text="meri"))) == [
        "Merino Socks",
        "Merino Wool Hoodie",
    ]
    assert names(await search(catalog, text='"; DROP TABLE products; --')) == []


async def test_skus_option_values_and_category_names_are_searchable(
    catalog: ServiceContext,
) -> None:
    lighting = await make_category(catalog, "Lighting")
    await add(catalog, "Desk Lamp", options={"colour": "Saffron"}, category_id=lighting.id)
    await add(catalog, "Tote Bag")

    assert names(await search(catalog, text="saffron")) == ["Desk Lamp"]
    assert names(await search(catalog, text="lighting")) == ["Desk Lamp"]
    assert names(await search(catalog, text="DESK-LAMP")) == ["Desk Lamp"]


async def test_drafts_are_found_only_when_asked_for(catalog: ServiceContext) -> None:
    await add(catalog, "Secret Lamp", status="draft")

    assert names(await search(catalog, text="lamp")) == []
    assert names(await search(catalog, text="lamp", statuses=("draft",))) == ["Secret Lamp"]


async def test_category_filter_includes_descendants(catalog: ServiceContext) -> None:
    home = await make_category(catalog, "Home")
    kitchen = await make_category(catalog, "Kitchen", parent_id=home.id)
    garden = await make_category(catalog, "Garden")
    await add(catalog, "Chef Knife", category_id=kitchen.id)
    await add(catalog, "Home Candle", category_id=home.id)
    await add(catalog, "Rake", category_id=garden.id)

    assert sorted(names(await search(catalog, category_id=home.id))) == [
        "Chef Knife",
        "Home Candle",
    ]
    assert names(await search(catalog, category_id=kitchen.id)) == ["Chef Knife"]
    assert names(await search(catalog, category_id="missing")) == []


async def test_price_range_in_a_currency_and_price_sorting(catalog: ServiceContext) -> None:
    await add(catalog, "Cheap", prices={"EUR": 500, "USD": 600})
    await add(catalog, "Middle", prices={"EUR": 1500, "USD": 1700})
    await add(catalog, "Dear", prices={"EUR": 5000})

    in_range = await search(catalog, min_price=1000, max_price=6000, sort="price_asc")
    by_usd = await search(catalog, currency="USD", sort="price_desc")

    assert names(in_range) == ["Middle", "Dear"]
    assert names(by_usd) == ["Middle", "Cheap"]
    assert [p.price_from.amount for p in by_usd.items if p.price_from] == [1700, 600]


async def test_in_stock_and_option_filters(catalog: ServiceContext) -> None:
    await make_warehouse(catalog, "main")
    await add(catalog, "Red Tee", options={"colour": "red", "size": "M"})
    await add(catalog, "Blue Tee", options={"colour": "blue", "size": "M"})
    await adjust_stock(
        catalog,
        "BLUE-TEE",
        StockAdjustment(warehouse="main", on_hand=3, reason="count"),
        actor="staff",
    )

    assert names(await search(catalog, in_stock=True)) == ["Blue Tee"]
    assert names(await search(catalog, options=(("colour", "red"),))) == ["Red Tee"]
    assert names(await search(catalog, options=(("colour", "red"), ("size", "L")))) == []


async def test_cursor_pages_cover_every_result_once_for_each_sort(
    catalog: ServiceContext,
) -> None:
    for n in range(7):
        await add(catalog, f"Lantern {n}", prices={"EUR": 1000 + (n % 3) * 100})

    for sort in ("relevance", "newest", "price_asc", "price_desc"):
        seen: list[str] = []
        cursor = None
        while True:
            page = await search(catalog, text="lantern", sort=sort, limit=3, cursor=cursor)
            seen.extend(p.id for p in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == 7 and len(set(seen)) == 7, sort


async def test_a_cursor_only_works_for_its_own_query(catalog: ServiceContext) -> None:
    for n in range(3):
        await add(catalog, f"Lantern {n}")
    page = await search(catalog, text="lantern", limit=1)

    with pytest.raises(Unprocessable):
        await search(catalog, text="lamp", limit=1, cursor=page.next_cursor)
    with pytest.raises(Unprocessable):
        await search(catalog, text="lantern", limit=1, cursor="garbage!")


async def test_newest_sort_is_the_default_without_words(catalog: ServiceContext) -> None:
    for name in ("First", "Second", "Third"):
        await add(catalog, name)

    assert names(await search(catalog)) == ["Third", "Second", "First"]


async def test_option_values_match_whatever_their_case(catalog: ServiceContext) -> None:
    await add(catalog, "Red Tee", options={"colour": "Red", "size": "M"})
    await add(catalog, "Blue Tee", options={"colour": "blue", "size": "L"})

    assert names(await search(catalog, options=(("size", "m"),))) == ["Red Tee"]
    assert names(await search(catalog, options=(("colour", "RED"), ("size", "M")))) == ["Red Tee"]
    assert names(await search(catalog, options=(("colour", "Blue"),))) == ["Blue Tee"]


async def add_named(ctx: ServiceContext, sku: str, name: str, description: str = "") -> None:
    await catalog_service.create_product(
        ctx,
        ProductCreate.model_validate(
            {
                "name": name,
                "description": description,
                "status": "active",
                "variants": [{"sku": sku, "options": {"Größe": "Weiß"}, "prices": []}],
            }
        ),
    )


async def test_words_are_found_as_shoppers_type_them_folded_and_inside_cjk_runs(
    catalog: ServiceContext,
) -> None:
    await add_named(catalog, "STRASSE-1", "Straßenschuh", "Für die Großstadt.")
    await add_named(catalog, "TOKYO-1", "東京タワー Tシャツ", "綿百パーセント")
    full_width = "\uff26\uff55\uff4c\uff4c-width \ufb01ne print."
    await add_named(catalog, "CAFE-1", "Café Crème Mug", full_width)
    await add_named(catalog, "PLAIN-1", "Plain Mug")

    found = {
        query: names(await search(catalog, text=query))
        for query in (
            "strassen",  # ß typed as ss
            "straßen",  # and as written
            "STRASSENSCHUH",
            "grossstadt",  # in the description
            "weiss",  # an option value
            "タワー",  # inside a run of Japanese
            "東京",
            "シャツ",
            "\uff54シャツ",  # full-width Latin letter
            "cafe creme",  # accents left off
            "CAFÉ",
            "full fine",  # full-width letters and a ligature in the description
        )
    }

    assert found == {
        "strassen": ["Straßenschuh"],
        "straßen": ["Straßenschuh"],
        "STRASSENSCHUH": ["Straßenschuh"],
        "grossstadt": ["Straßenschuh"],
        "weiss": found["weiss"],
        "タワー": ["東京タワー Tシャツ"],
        "東京": ["東京タワー Tシャツ"],
        "シャツ": ["東京タワー Tシャツ"],
        "\uff54シャツ": ["東京タワー Tシャツ"],
        "cafe creme": ["Café Crème Mug"],
        "CAFÉ": ["Café Crème Mug"],
        "full fine": ["Café Crème Mug"],
    }
    assert sorted(found["weiss"]) == [
        "Café Crème Mug",
        "Plain Mug",
        "Straßenschuh",
        "東京タワー Tシャツ",
    ]
