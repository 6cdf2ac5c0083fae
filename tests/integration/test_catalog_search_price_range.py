"""A price range on search, on both shapes: the price a product is shown "from", and sorted by,
is its lowest price among the variants in the range, so every listed price lies in it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ecosistema.catalog.schemas import ProductCreate, ProductPage
from ecosistema.catalog.search import SearchQuery, search_products
from ecosistema.platform.db import utcnow
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    settings_fixture,  # noqa: F401 - a fixture
)


async def search(ctx: ServiceContext, **kwargs: Any) -> ProductPage:
    return await search_products(ctx.db, SearchQuery(**kwargs))


async def add(
    ctx: ServiceContext,
    name: str,
    amounts: list[int],
    *,
    sale: dict[int, int] | None = None,
) -> str:
    """A product with one variant per EUR amount; ``sale`` maps an amount to a running sale."""
    sku = name.upper().replace(" ", "-")
    since = (utcnow() - timedelta(days=1)).isoformat()
    product = await catalog_service.create_product(
        ctx,
        ProductCreate.model_validate(
            {
                "name": name,
                "status": "active",
                "variants": [
                    {
                        "sku": f"{sku}-{n}",
                        "options": {"size": str(n)},
                        "prices": [{"currency": "EUR", "amount": amount}],
                        "sale_prices": [
                            {"currency": "EUR", "amount": (sale or {})[amount], "starts_at": since}
                        ]
                        if amount in (sale or {})
                        else [],
                    }
                    for n, amount in enumerate(amounts)
                ],
            }
        ),
    )
    return str(product.id)


def shown(page: ProductPage) -> list[tuple[str, int | None]]:
    return [(p.name, p.price_from.amount if p.price_from else None) for p in page.items]


async def test_the_price_shown_is_the_lowest_among_the_variants_in_the_range(
    catalog: ServiceContext,
) -> None:
    await add(catalog, "Linen Shirt", [1790, 2290, 2490])
    await add(catalog, "Wool Scarf", [2100])
    await add(catalog, "Silk Tie", [3000])

    in_range = await search(catalog, min_price=2000, max_price=2500, sort="price_asc")
    from_2000 = await search(catalog, min_price=2000, sort="price_asc")
    up_to_2000 = await search(catalog, max_price=2000, sort="price_asc")
    unfiltered = await search(catalog, sort="price_asc")

    assert shown(in_range) == [("Wool Scarf", 2100), ("Linen Shirt", 2290)]
    assert shown(from_2000) == [("Wool Scarf", 2100), ("Linen Shirt", 2290), ("Silk Tie", 3000)]
    assert shown(up_to_2000) == [("Linen Shirt", 1790)]
    assert shown(unfiltered) == [("Linen Shirt", 1790), ("Wool Scarf", 2100), ("Silk Tie", 3000)]


async def test_price_sorting_with_a_range_follows_the_prices_in_it(
    catalog: ServiceContext,
) -> None:
    await add(catalog, "Cheap Outside", [1790, 2600])
    await add(catalog, "Middle", [2100])
    await add(catalog, "Dear Outside", [1500, 3000])
    await add(catalog, "Below", [1900])

    ascending = await search(catalog, min_price=2000, sort="price_asc")
    descending = await search(catalog, max_price=2000, sort="price_desc")

    assert shown(ascending) == [("Middle", 2100), ("Cheap Outside", 2600), ("Dear Outside", 3000)]
    assert shown(descending) == [("Below", 1900), ("Cheap Outside", 1790), ("Dear Outside", 1500)]


async def test_cursor_pages_with_a_range_cover_every_product_once_in_order(
    catalog: ServiceContext,
) -> None:
    # Prices outside the range (1000-1099 and 4000-4099) would sort these products differently
    # from the prices inside it (2000-3099), and several share an in-range price.
    expected: set[str] = set()
    for n in range(11):
        inside = 2000 + (n * 7 % 4) * 350
        expected.add(await add(catalog, f"Lamp {n}", [4000 + n * 9, inside, 1000 + (10 - n) * 9]))
    await add(catalog, "Lamp Outside", [1500, 3500])

    for sort in ("price_asc", "price_desc"):
        everything = await search(catalog, min_price=2000, max_price=3100, sort=sort, limit=100)
        seen: list[str] = []
        amounts: list[int] = []
        cursor = None
        while True:
            page = await search(
                catalog, min_price=2000, max_price=3100, sort=sort, limit=3, cursor=cursor
            )
            seen.extend(p.id for p in page.items)
            amounts.extend(p.price_from.amount for p in page.items if p.price_from)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 11, sort
        assert set(seen) == expected, sort
        assert seen == [p.id for p in everything.items], sort
        assert all(2000 <= a <= 3100 for a in amounts), sort
        assert amounts == sorted(amounts, reverse=sort == "price_desc"), sort


async def test_the_range_and_the_price_shown_are_both_the_regular_price(
    catalog: ServiceContext,
) -> None:
    # Lists show regular prices (a running sale is on the product's own page): the value the
    # range filters on is the value shown, a sale below the range notwithstanding.
    await add(catalog, "Rain Jacket", [1790, 2290], sale={2290: 1500})

    in_range = await search(catalog, min_price=2000, max_price=2500)
    at_sale_price = await search(catalog, min_price=1400, max_price=1600)

    assert shown(in_range) == [("Rain Jacket", 2290)]
    assert shown(at_sale_price) == []
