"""Catalog's problems over HTTP on both shapes name the field at fault precisely, tell rules in
words, and carry a title of their own per type."""

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
    variant,
)

SKU_RULE = "must be a SKU: a letter or digit, then letters, digits, `.`, `_` or `-`"


def _fields(response: httpx.Response) -> list[tuple[str, str]]:
    return [(e["field"], e["message"]) for e in response.json()["errors"]]


async def _product(shop: httpx.AsyncClient, staff: dict[str, str], **body: Any) -> Any:
    created = await shop.post(
        f"{API}/products", json={"name": "Desk Lamp", "status": "active", **body}, headers=staff
    )
    assert created.status_code == 201, created.text
    return created.json()


async def test_an_inverted_price_range_is_a_422_at_min_price_not_an_empty_page(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    await _product(shop, staff, variants=[variant("LAMP-1", 3000)])

    inverted = await shop.get(f"{API}/products", params={"min_price": 5000, "max_price": 1000})
    equal = await shop.get(f"{API}/products", params={"min_price": 3000, "max_price": 3000})

    assert inverted.status_code == 422, inverted.text
    assert inverted.headers["content-type"].startswith("application/problem+json")
    assert inverted.json()["errors"] == [
        {
            "field": "min_price",
            "in": "query",
            "message": "must not be above max_price",
            "code": "invalid",
        }
    ]
    assert equal.status_code == 200
    assert [p["name"] for p in equal.json()["items"]] == ["Desk Lamp"]


async def test_unknown_skus_of_a_price_list_are_named_each_at_its_own_entry(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    await _product(shop, staff, variants=[variant("LAMP-1", 3000)])
    created = await shop.post(
        f"{API}/price-lists", json={"code": "trade", "name": "Trade"}, headers=staff
    )
    url = f"{API}/price-lists/{created.json()['id']}/prices"

    unknown = await shop.put(
        url,
        json={
            "prices": [
                {"sku": "NOSUCH", "currency": "EUR", "amount": 700},
                {"sku": "LAMP-1", "currency": "EUR", "amount": 2500},
                {"sku": "ALSO-MISSING", "currency": "EUR", "amount": 1},
            ]
        },
        headers=staff,
    )
    twice = await shop.put(
        url,
        json={
            "prices": [
                {"sku": "LAMP-1", "currency": "EUR", "amount": 2500},
                {"sku": "LAMP-1", "currency": "EUR", "amount": 2400},
            ]
        },
        headers=staff,
    )

    assert unknown.status_code == 422, unknown.text
    assert _fields(unknown) == [
        ("prices.0.sku", "no variant has SKU NOSUCH"),
        ("prices.2.sku", "no variant has SKU ALSO-MISSING"),
    ]
    assert twice.status_code == 422
    assert [e["field"] for e in twice.json()["errors"]] == ["prices.1"]
    assert (await shop.get(url, headers=staff)).json() == []


async def test_sku_and_code_rules_are_told_in_words(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")

    bad_sku = await shop.post(
        f"{API}/products",
        json={"name": "Lamp", "variants": [variant("QA SL-1", 100)]},
        headers=staff,
    )
    bad_code = await shop.post(
        f"{API}/price-lists", json={"code": "Trade List", "name": "Trade"}, headers=staff
    )
    bad_reference = await shop.post(
        f"{API}/quotes", json={"currency": "EUR", "skus": ["no spaces"]}, headers=staff
    )

    assert bad_sku.status_code == 422
    assert _fields(bad_sku) == [("variants.0.sku", SKU_RULE)]
    assert "String should match pattern" not in bad_sku.text
    assert bad_code.status_code == 422
    assert _fields(bad_code) == [
        (
            "code",
            "must be a code: lower-case letters a-z and digits joined by single hyphens, "
            "e.g. wholesale or eu-2",
        )
    ]
    assert bad_reference.status_code == 422
    assert _fields(bad_reference) == [
        ("skus.0", "must be a SKU: a letter or digit, then letters, digits, `.`, `_`, `-` or `/`")
    ]


async def test_a_category_name_without_a_slug_in_it_names_the_name_and_the_slug(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")

    refused = await shop.post(f"{API}/categories", json={"name": "!!!"}, headers=staff)
    given = await shop.post(
        f"{API}/categories", json={"name": "!!!", "slug": "exclamations"}, headers=staff
    )

    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["name", "slug"]
    assert given.status_code == 201
    assert given.json()["slug"] == "exclamations"


async def test_each_conflict_type_has_a_title_of_its_own(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    product = await _product(shop, staff, variants=[variant("LAMP-1", 3000)])
    warehouse = {"code": "main", "name": "Main"}
    assert (await shop.post(f"{API}/warehouses", json=warehouse, headers=staff)).status_code == 201
    received = await shop.post(
        f"{API}/inventory/LAMP-1/adjustments",
        json={"warehouse": "main", "on_hand": 5, "reason": "count"},
        headers=staff,
    )
    assert received.status_code == 201
    parent = (await shop.post(f"{API}/categories", json={"name": "Lamps"}, headers=staff)).json()
    child = {"name": "Desk lamps", "parent_id": parent["id"]}
    assert (await shop.post(f"{API}/categories", json=child, headers=staff)).status_code == 201

    answers = {
        "sku-taken": await shop.post(
            f"{API}/products",
            json={"name": "Other", "variants": [variant("LAMP-1", 1)]},
            headers=staff,
        ),
        "slug-taken": await shop.post(
            f"{API}/products", json={"name": "Other", "slug": product["slug"]}, headers=staff
        ),
        "code-taken": await shop.post(f"{API}/warehouses", json=warehouse, headers=staff),
        "category-not-empty": await shop.delete(f"{API}/categories/{parent['id']}", headers=staff),
        "variant-has-stock": await shop.delete(
            f"{API}/products/{product['id']}/variants/{product['variants'][0]['id']}",
            headers=staff,
        ),
    }

    titles = {}
    for kind, answer in answers.items():
        assert answer.status_code == 409, (kind, answer.text)
        assert answer.json()["type"].endswith(f"/{kind}")
        titles[kind] = answer.json()["title"]
    assert titles == {
        "sku-taken": "SKU already in use",
        "slug-taken": "Slug already in use",
        "code-taken": "Code already in use",
        "category-not-empty": "Category not empty",
        "variant-has-stock": "Variant still holds stock",
    }


async def test_a_taken_code_is_named_at_code_like_a_taken_slug_or_sku(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    warehouse = {"code": "qa-wh", "name": "QA"}
    price_list = {"code": "qa-pl", "name": "QA"}
    assert (await shop.post(f"{API}/warehouses", json=warehouse, headers=staff)).status_code == 201
    assert (
        await shop.post(f"{API}/price-lists", json=price_list, headers=staff)
    ).status_code == 201

    for url, body in ((f"{API}/warehouses", warehouse), (f"{API}/price-lists", price_list)):
        taken = await shop.post(url, json=body, headers=staff)
        assert taken.status_code == 409, taken.text
        assert taken.json()["type"].endswith("/code-taken")
        assert taken.json()["errors"] == [
            {"field": "code", "message": "code already in use", "code": "taken"}
        ]


async def test_a_price_list_replacement_names_every_faulty_entry_in_one_answer(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    await _product(shop, staff, variants=[variant("QA-TEE-M", 3000)])
    created = await shop.post(
        f"{API}/price-lists", json={"code": "qa-faults", "name": "Faults"}, headers=staff
    )
    url = f"{API}/price-lists/{created.json()['id']}/prices"

    refused = await shop.put(
        url,
        json={
            "prices": [
                {"sku": "QA-TEE-M", "currency": "EUR", "amount": 100},
                {"sku": "NOPE", "currency": "EUR", "amount": 100},
                {"sku": "QA-TEE-M", "currency": "eur", "amount": 90},
            ]
        },
        headers=staff,
    )

    assert refused.status_code == 422, refused.text
    assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [
        ("prices.1.sku", "not_found"),
        ("prices.2", "duplicate"),
    ]
    assert (await shop.get(url, headers=staff)).json() == []


async def test_a_reservation_of_an_unknown_sku_is_a_422_at_its_line_not_a_shortage(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    await _product(shop, staff, variants=[variant("LAMP-1", 3000)])
    lines = [{"sku": "LAMP-1", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]

    unknown = await shop.post(
        f"{API}/reservations",
        json={"order_id": "qa-o-1", "lines": lines, "ttl_seconds": 60},
        headers=staff,
    )
    bad_actor = await shop.post(
        f"{API}/reservations",
        json={"order_id": "qa-o-2", "lines": lines[:1], "ttl_seconds": 60, "actor": "two words"},
        headers=staff,
    )

    assert unknown.status_code == 422, unknown.text
    assert _fields(unknown) == [("lines.1.sku", "no variant has SKU NOPE")]
    assert bad_actor.status_code == 422, bad_actor.text
    [(field, message)] = _fields(bad_actor)
    assert field == "actor"
    assert message.startswith("must be a user id, api_key:<id> or guest:<cart id>")
    assert "should match pattern" not in bad_actor.text and "[A-Za-z0-9]" not in bad_actor.text
