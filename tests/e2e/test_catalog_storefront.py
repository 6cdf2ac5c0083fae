"""Over HTTP, on both shapes: staff build a small catalogue (category, warehouse, product with
variants, prices and stock) and a customer browses, searches, filters and revalidates."""

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


async def test_staff_build_the_shop_and_a_customer_browses_and_searches(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")

    footwear = (
        await shop.post(f"{API}/categories", json={"name": "Footwear"}, headers=staff)
    ).json()
    boots = (
        await shop.post(
            f"{API}/categories",
            json={"name": "Boots", "parent_id": footwear["id"]},
            headers=staff,
        )
    ).json()
    warehouse = await shop.post(
        f"{API}/warehouses", json={"code": "madrid", "name": "Madrid"}, headers=staff
    )
    assert warehouse.status_code == 201
    boot = await shop.post(
        f"{API}/products",
        json={
            "name": "Leather Chelsea Boot",
            "description": "Goodyear-welted, resoleable.",
            "status": "active",
            "category_id": boots["id"],
            "images": ["https://img.example/boot.jpg"],
            "variants": [
                {
                    "sku": f"BOOT-{size}",
                    "options": {"size": str(size), "colour": "brown"},
                    "weight_grams": 1300,
                    "prices": [
                        {"currency": "EUR", "amount": 18900},
                        {"currency": "USD", "amount": 19900},
                    ],
                }
                for size in (41, 42)
            ],
        },
        headers=staff,
    )
    assert boot.status_code == 201, boot.text
    received = await shop.post(
        f"{API}/inventory/BOOT-42/adjustments",
        json={"warehouse": "madrid", "delta": 6, "reason": "delivery 1187"},
        headers=staff,
    )
    assert received.status_code == 201
    assert received.json()["available"] == 6
    await shop.post(
        f"{API}/products",
        json={"name": "Canvas Sneaker", "status": "active", "category_id": footwear["id"]},
        headers=staff,
    )

    # The customer browses the category tree and the footwear category (boots included).
    tree = (await shop.get(f"{API}/categories", headers=customer)).json()
    assert [c["path"] for c in tree] == ["footwear", "footwear/boots"]
    in_footwear = (await shop.get(f"{API}/products", params={"category_id": footwear["id"]})).json()
    assert sorted(p["name"] for p in in_footwear["items"]) == [
        "Canvas Sneaker",
        "Leather Chelsea Boot",
    ]

    # Searches by word, filters by size and stock, and sees prices in dollars.
    found = (
        await shop.get(
            f"{API}/products",
            params={"q": "chelsea", "option": "size:42", "in_stock": "true", "currency": "USD"},
            headers=customer,
        )
    ).json()
    assert [(p["name"], p["price_from"]) for p in found["items"]] == [
        ("Leather Chelsea Boot", {"currency": "USD", "amount": 19900})
    ]
    assert (await shop.get(f"{API}/products", params={"q": "chelsea", "option": "size:44"})).json()[
        "items"
    ] == []

    # Opens the product, then revalidates it with its ETag.
    url = f"{API}/products/{boot.json()['id']}"
    page = await shop.get(url, headers=customer)
    assert page.status_code == 200
    assert [v["current_prices"][0] for v in page.json()["variants"]] == [
        {"currency": "EUR", "amount": 18900}
    ] * 2
    again = await shop.get(url, headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304

    # Stock details stay with staff.
    assert (await shop.get(f"{API}/inventory/BOOT-42", headers=customer)).status_code == 403
    movements = (await shop.get(f"{API}/inventory/BOOT-42/movements", headers=staff)).json()
    assert [(m["on_hand_delta"], m["reason"], m["note"]) for m in movements["items"]] == [
        (6, "receive", "delivery 1187")
    ]


async def test_a_price_range_shows_and_sorts_by_the_prices_within_it(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    for name, amounts in (("Linen Shirt", (1790, 2290)), ("Wool Scarf", (2100,))):
        created = await shop.post(
            f"{API}/products",
            json={
                "name": name,
                "status": "active",
                "variants": [
                    {
                        "sku": f"{name.split()[0].upper()}-{n}",
                        "prices": [{"currency": "EUR", "amount": amount}],
                    }
                    for n, amount in enumerate(amounts)
                ],
            },
            headers=staff,
        )
        assert created.status_code == 201, created.text

    async def shown(**params: str) -> list[tuple[str, int]]:
        answer = await shop.get(f"{API}/products", params=params)
        assert answer.status_code == 200, answer.text
        return [(p["name"], p["price_from"]["amount"]) for p in answer.json()["items"]]

    # Filtered to 20-25 EUR, the shirt is shown from its 22.90 variant, not its 17.90 one.
    assert sorted(await shown(min_price="2000", max_price="2500")) == [
        ("Linen Shirt", 2290),
        ("Wool Scarf", 2100),
    ]
    assert await shown(min_price="2000", sort="price_asc") == [
        ("Wool Scarf", 2100),
        ("Linen Shirt", 2290),
    ]
    assert await shown(sort="price_asc") == [("Linen Shirt", 1790), ("Wool Scarf", 2100)]
