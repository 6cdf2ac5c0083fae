"""Catalog endpoints on both shapes given hostile or careless input: forged cursors, queries
made of search syntax, a price filter without a currency, and an import whose rows are bad.
None of it may produce a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    make_product,
    make_warehouse,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

HUGE = 99999999999999999999999999999


def unpack(cursor: str) -> list[Any]:
    decoded: list[Any] = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return decoded


def pack(values: Any) -> str:
    """A cursor of these values; non-finite floats come out as JSON's ``Infinity``/``NaN``."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def assert_invalid_cursor(response: httpx.Response, label: str) -> None:
    assert response.status_code == 422, (label, response.status_code, response.text)
    body = response.json()
    assert body["type"].endswith("/invalid-cursor"), (label, body)
    assert [e["field"] for e in body["errors"]] == ["cursor"], (label, body)


async def next_cursor(shop: httpx.AsyncClient, **params: Any) -> list[Any]:
    """The values of the cursor to the second page of this listing."""
    response = await shop.get(f"{API}/products", params=params)
    assert response.status_code == 200, response.text
    cursor = response.json()["next_cursor"]
    assert cursor is not None, params
    return unpack(cursor)


async def test_forged_search_cursors_are_422_invalid_cursor_for_every_sort(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    for n in range(3):
        await make_product(catalog, f"Hiking Boot {n}", skus={f"BOOT-{n}": 5000 + n * 100})
    not_a_key: list[Any] = [True, False, "text", None, [1], {"x": 1}]
    not_a_moment = [1.5, HUGE, 0, {"t": "2026-01-01T00:00:00"}, {"t": "0001-01-01T00:00+14:00"}]
    cases: list[tuple[dict[str, Any], Any, list[Any]]] = [
        ({"q": "boot", "limit": 1}, 1.5, [*not_a_key, {"t": "2026-01-01T00:00:00+00:00"}]),
        (
            {"q": "boot", "sort": "price_asc", "limit": 1},
            5000,
            [*not_a_key, HUGE, -HUGE, 2**63, 1.5],
        ),
        ({"q": "boot", "sort": "price_desc", "limit": 1}, 5200, [*not_a_key, HUGE, 5000.5]),
        (
            {"sort": "newest", "limit": 1},
            {"t": "2026-01-01T00:00:00+00:00"},
            [*not_a_key, *not_a_moment],
        ),
    ]
    for params, good_key, forged_keys in cases:
        fingerprint, key, last_id = await next_cursor(shop, **params)
        genuine = await shop.get(
            f"{API}/products", params={**params, "cursor": pack([fingerprint, good_key, last_id])}
        )
        assert genuine.status_code == 200, (params, genuine.text)
        for forged in forged_keys:
            response = await shop.get(
                f"{API}/products",
                params={**params, "cursor": pack([fingerprint, forged, last_id])},
            )
            assert_invalid_cursor(response, f"{params} key={forged!r}")
        for forged_id in (True, HUGE, None):
            response = await shop.get(
                f"{API}/products", params={**params, "cursor": pack([fingerprint, key, forged_id])}
            )
            assert_invalid_cursor(response, f"{params} id={forged_id!r}")
        if params.get("sort") is None:
            # A rank is any finite number: a huge one is a page past every result, not an error.
            huge = await shop.get(
                f"{API}/products", params={**params, "cursor": pack([fingerprint, HUGE, last_id])}
            )
            assert huge.status_code == 200, huge.text
            for not_finite in (float("inf"), float("nan")):
                assert_invalid_cursor(
                    await shop.get(
                        f"{API}/products",
                        params={**params, "cursor": pack([fingerprint, not_finite, last_id])},
                    ),
                    f"rank {not_finite}",
                )
        other_query = await shop.get(
            f"{API}/products", params={**params, "cursor": pack(["0" * 16, key, last_id])}
        )
        assert_invalid_cursor(other_query, f"{params} fingerprint")


async def test_forged_movement_cursors_are_422_invalid_cursor(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    await make_warehouse(ctx_of(shop_app), "main")
    await make_product(ctx_of(shop_app), "Lantern", skus={"LAN-1": 900})
    staff = await sign_in_demo(shop_app, shop, "staff")
    for n in range(3):
        adjusted = await shop.post(
            f"{API}/inventory/LAN-1/adjustments",
            json={"warehouse": "main", "delta": 1, "reason": f"delivery {n}"},
            headers=staff,
        )
        assert adjusted.status_code == 201, adjusted.text
    first = await shop.get(f"{API}/inventory/LAN-1/movements?limit=1", headers=staff)
    assert first.status_code == 200, first.text
    second = await shop.get(
        f"{API}/inventory/LAN-1/movements",
        params={"limit": 1, "cursor": first.json()["next_cursor"]},
        headers=staff,
    )
    assert second.status_code == 200, second.text
    assert second.json()["items"][0]["note"] == "delivery 1"

    legacy = base64.urlsafe_b64encode(b"m99999999999999999999999").decode()
    for cursor in (legacy, pack([HUGE]), pack([True]), pack([1.5]), pack(["3"]), "%%%"):
        response = await shop.get(
            f"{API}/inventory/LAN-1/movements", params={"cursor": cursor}, headers=staff
        )
        assert_invalid_cursor(response, cursor)


async def test_search_syntax_in_a_query_is_literal_and_punctuation_alone_matches_nothing(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    await make_product(catalog, "Hiking Boot", skus={"BOOT-1": 5000})
    await make_product(catalog, "Near And Far Poster", skus={"POSTER-1": 1500})
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 2500})

    async def found(q: str) -> list[str]:
        response = await shop.get(f"{API}/products", params={"q": q})
        assert response.status_code == 200, (q, response.text)
        return sorted(p["name"] for p in response.json()["items"])

    for punctuation in ('"', "*", "(", ".", ")", "-", "^", ":", "_", '""', "* ( . )", "&|!<>"):
        assert await found(punctuation) == [], punctuation
    assert await found('boot"') == ["Hiking Boot"]
    assert await found('"boot') == ["Hiking Boot"]
    assert await found("boot*") == ["Hiking Boot"]
    assert await found("-boot") == ["Hiking Boot"]
    assert await found("hiking OR lamp") == []
    assert await found("AND OR NOT") == []
    assert await found("NEAR(") == ["Near And Far Poster"]
    assert await found("near AND far") == ["Near And Far Poster"]
    assert await found("product_id : boot") == []
    assert await found("{lamp}") == ["Desk Lamp"]
    assert await found("boot:* & !lamp") == []
    assert await found("boot:*") == ["Hiking Boot"]
    assert await found("  ") == ["Desk Lamp", "Hiking Boot", "Near And Far Poster"]


async def test_a_price_filter_without_currency_uses_the_default_currency(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    assert catalog.settings.catalog_default_currency == "EUR"
    await make_product(catalog, "Cheap Mug", skus={"MUG-1": 500})
    await make_product(catalog, "Dear Jacket", skus={"JACKET-1": 20000})

    async def names(**params: Any) -> list[str]:
        response = await shop.get(f"{API}/products", params=params)
        assert response.status_code == 200, (params, response.text)
        return sorted(p["name"] for p in response.json()["items"])

    assert await names(min_price=1000) == ["Dear Jacket"]
    assert await names(max_price=1000) == ["Cheap Mug"]
    assert await names(min_price=1000) == await names(min_price=1000, currency="EUR")
    assert await names(min_price=1, currency="USD") == []

    schema = (await shop.get("/openapi.json")).json()
    parameters = {p["name"]: p for p in schema["paths"][f"{API}/products"]["get"]["parameters"]}
    for name in ("currency", "min_price", "max_price"):
        assert "default currency" in parameters[name].get("description", ""), name


async def test_an_all_or_nothing_import_with_bad_rows_is_a_422_listing_them(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = {**await sign_in_demo(shop_app, shop, "staff"), "Content-Type": "application/x-ndjson"}
    good = json.dumps({"name": "Poster", "status": "active", "variants": [{"sku": "P-1"}]})
    body = good + "\n{broken\n" + json.dumps({"name": "", "variants": []}) + "\n"

    rejected = await shop.post(f"{API}/products/import", content=body, headers=staff)
    listed = await shop.get(f"{API}/products")
    skipped = await shop.post(
        f"{API}/products/import", params={"mode": "skip-invalid"}, content=body, headers=staff
    )
    clean = await shop.post(
        f"{API}/products/import",
        content=json.dumps({"name": "Mug", "status": "active", "variants": [{"sku": "M-1"}]}),
        headers=staff,
    )

    assert rejected.status_code == 422, rejected.text
    assert rejected.headers["content-type"].startswith("application/problem+json")
    problem = rejected.json()
    assert problem["type"].endswith("/import-rejected")
    assert [e["line"] for e in problem["errors"]] == [2, 3]
    assert all(e["reason"] for e in problem["errors"])
    assert problem["report"]["applied"] is False
    assert problem["report"]["rows_read"] == 3
    assert listed.json()["items"] == []
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["applied"] is True
    assert skipped.json()["products_created"] == 1
    assert [e["line"] for e in skipped.json()["errors"]] == [2, 3]
    assert clean.status_code == 200, clean.text
    assert clean.json()["errors"] == []


async def test_currency_codes_are_read_in_any_case_and_unknown_ones_refused(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    await make_product(catalog, "Cheap Mug", skus={"MUG-2": 500})

    lower = await shop.get(f"{API}/products", params={"currency": "eur", "min_price": 100})
    upper = await shop.get(f"{API}/products", params={"currency": "EUR", "min_price": 100})
    assert lower.status_code == 200, lower.text
    assert lower.json()["items"] == upper.json()["items"]
    assert lower.json()["items"][0]["price_from"] == {"currency": "EUR", "amount": 500}

    for code in ("xyz", "XYZ"):
        refused = await shop.get(f"{API}/products", params={"currency": code})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert (error["field"], error["message"]) == ("currency", "not an ISO 4217 currency code")

    staff = await sign_in_demo(shop_app, shop, "staff")
    created = await shop.post(
        f"{API}/products",
        json={
            "name": "Lower-case Prices",
            "status": "active",
            "variants": [{"sku": "LOW-1", "prices": [{"currency": "usd", "amount": 700}]}],
        },
        headers=staff,
    )
    assert created.status_code == 201, created.text
    assert created.json()["variants"][0]["prices"] == [{"currency": "USD", "amount": 700}]
    twice = await shop.post(
        f"{API}/products",
        json={
            "name": "Twice Priced",
            "variants": [
                {
                    "sku": "TWO-1",
                    "prices": [
                        {"currency": "usd", "amount": 700},
                        {"currency": "USD", "amount": 800},
                    ],
                }
            ],
        },
        headers=staff,
    )
    assert twice.status_code == 422, twice.text
