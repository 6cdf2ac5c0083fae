"""Incremental sync on both shapes: ``GET /products?updated_since=...&sort=updated_at`` lists the
products changed at or after an instant, oldest change first (ties by id), in cursor pages an
integration can follow and resume; what counts as a change; and bad instants as 422 problems
on the parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from ecosistema.catalog.models import products
from ecosistema.catalog.service import invalidate
from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
    variant,
)


def _at(document: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(document["updated_at"])


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _create(
    shop: httpx.AsyncClient, staff: dict[str, str], name: str, status: str = "active"
) -> dict[str, Any]:
    sku = name.upper().replace(" ", "-")
    answer = await shop.post(
        f"{API}/products",
        json={"name": name, "status": status, "variants": [variant(sku, 1000)]},
        headers=staff,
    )
    assert answer.status_code == 201, answer.text
    product: dict[str, Any] = answer.json()
    return product


async def _changes(
    shop: httpx.AsyncClient, since: str, headers: dict[str, str] | None = None, **params: Any
) -> list[dict[str, Any]]:
    """Every page of the products changed since ``since``, followed to the end."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"updated_since": since, **params, **({"cursor": cursor} if cursor else {})}
        answer = await shop.get(f"{API}/products", params=query, headers=headers or {})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _expected(*documents: dict[str, Any], since: datetime) -> list[str]:
    """The ids of ``documents`` changed at or after ``since``, oldest change first, ties by id."""
    chosen = [d for d in documents if _at(d) >= since]
    return [d["id"] for d in sorted(chosen, key=lambda d: (_at(d), d["id"]))]


async def _current(shop: httpx.AsyncClient, staff: dict[str, str], product_id: str) -> Any:
    return (await shop.get(f"{API}/products/{product_id}", headers=staff)).json()


async def test_products_changed_since_an_instant_come_oldest_change_first(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    a, b, c = [await _create(shop, staff, name) for name in ("Sync A", "Sync B", "Sync C")]
    since = _at(b)

    listed = await _changes(shop, _iso(since))

    assert [p["id"] for p in listed] == _expected(a, b, c, since=since)
    assert [p["updated_at"] for p in listed] == [
        (await _current(shop, staff, p["id"]))["updated_at"] for p in listed
    ]
    # The same instant written with another offset, and the sort named explicitly.
    other_offset = (since.astimezone(UTC) + timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.%f+01:00"
    )
    assert await _changes(shop, other_offset) == listed
    assert await _changes(shop, _iso(since), sort="updated_at", limit=1) == listed

    # A new price on A's variant changes A: it comes again, as the latest change.
    repriced = await shop.patch(
        f"{API}/products/{a['id']}/variants/{a['variants'][0]['id']}",
        json={"prices": [{"currency": "EUR", "amount": 1200}]},
        headers=staff,
    )
    assert repriced.status_code == 200, repriced.text
    a = await _current(shop, staff, a["id"])
    again = await _changes(shop, _iso(since))
    assert [p["id"] for p in again] == _expected(a, b, c, since=since)
    assert again[-1]["id"] == a["id"]
    assert [p["id"] for p in await _changes(shop, _iso(_at(a)))] == [a["id"]]
    later = _at(a) + timedelta(microseconds=1)
    assert await _changes(shop, _iso(later)) == []


async def test_pages_of_changes_cover_each_product_once_and_a_change_mid_sync_comes_again(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    made = [await _create(shop, staff, f"Tie {n}") for n in range(5)]
    # Five products changed at the same instant: their order is their ids'.
    instant = datetime(2020, 1, 1, 12, tzinfo=UTC)
    ctx = ctx_of(shop_app)
    async with ctx.db.transaction() as session:
        await session.execute(
            update(products)
            .where(products.c.id.in_([p["id"] for p in made]))
            .values(updated_at=instant)
        )
    await invalidate(ctx, [p["id"] for p in made])
    by_id = sorted(p["id"] for p in made)

    first = (
        await shop.get(
            f"{API}/products",
            params={"updated_since": _iso(instant), "sort": "updated_at", "limit": 2},
        )
    ).json()
    assert [p["id"] for p in first["items"]] == by_id[:2]
    assert all(p["updated_at"] == "2020-01-01T12:00:00Z" for p in first["items"])

    # One already seen changes while the integration pages: it comes again at the end.
    seen = first["items"][0]["id"]
    renamed = await shop.patch(
        f"{API}/products/{seen}", json={"name": "Tie renamed"}, headers=staff
    )
    assert renamed.status_code == 200, renamed.text
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor is not None:
        page = (
            await shop.get(
                f"{API}/products",
                params={
                    "updated_since": _iso(instant),
                    "sort": "updated_at",
                    "limit": 2,
                    "cursor": cursor,
                },
            )
        ).json()
        rest.extend(p["id"] for p in page["items"])
        cursor = page["next_cursor"]

    assert rest == [*by_id[2:], seen]
    assert [p["id"] for p in await _changes(shop, _iso(_at(renamed.json())))] == [seen]


async def test_anonymous_callers_see_only_active_products_among_the_changes(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    since = _iso(datetime.now(UTC) - timedelta(minutes=5))
    active = await _create(shop, staff, "Seen Lamp")
    draft = await _create(shop, staff, "Secret Lamp", status="draft")
    every = ["draft", "active", "archived"]

    assert [p["id"] for p in await _changes(shop, since)] == [active["id"]]
    assert {p["id"] for p in await _changes(shop, since, headers=staff, status=every)} == {
        active["id"],
        draft["id"],
    }
    forbidden = await shop.get(
        f"{API}/products", params={"updated_since": since, "status": "draft"}
    )
    assert forbidden.status_code == 422

    assert (await shop.delete(f"{API}/products/{active['id']}", headers=staff)).status_code == 204
    assert await _changes(shop, since) == []
    archived = await _changes(shop, since, headers=staff, status=every)
    assert [(p["id"], p["status"]) for p in archived][-1] == (active["id"], "archived")


async def test_what_counts_as_a_change_of_a_product(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    category = (await shop.post(f"{API}/categories", json={"name": "Sync"}, headers=staff)).json()
    product = await _create(shop, staff, "Sync Mug")
    await shop.patch(
        f"{API}/products/{product['id']}", json={"category_id": category["id"]}, headers=staff
    )
    await shop.post(f"{API}/warehouses", json={"code": "sync", "name": "Sync"}, headers=staff)
    price_list = (
        await shop.post(f"{API}/price-lists", json={"code": "sync", "name": "Sync"}, headers=staff)
    ).json()
    product = await _current(shop, staff, product["id"])
    since = _iso(_at(product) + timedelta(microseconds=1))

    # Stock, customers' price lists and the category's name are not part of the product.
    moved = await shop.post(
        f"{API}/inventory/SYNC-MUG/adjustments",
        json={"warehouse": "sync", "delta": 5, "reason": "delivery"},
        headers=staff,
    )
    listed = await shop.put(
        f"{API}/price-lists/{price_list['id']}/prices",
        json={"prices": [{"sku": "SYNC-MUG", "currency": "EUR", "amount": 800}]},
        headers=staff,
    )
    renamed = await shop.patch(
        f"{API}/categories/{category['id']}", json={"name": "Synced"}, headers=staff
    )
    unchanged = await shop.patch(
        f"{API}/products/{product['id']}", json={"name": "Sync Mug"}, headers=staff
    )
    assert [r.status_code for r in (moved, listed, renamed, unchanged)] == [201, 200, 200, 200]
    assert await _changes(shop, since) == []

    # A variant added, then removed: each is a change of the product.
    added = await shop.post(
        f"{API}/products/{product['id']}/variants", json=variant("SYNC-MUG-2", 900), headers=staff
    )
    assert added.status_code == 201, added.text
    after_add = await _current(shop, staff, product["id"])
    assert [p["id"] for p in await _changes(shop, since)] == [product["id"]]
    removed = await shop.delete(
        f"{API}/products/{product['id']}/variants/{added.json()['id']}", headers=staff
    )
    assert removed.status_code == 204
    after_remove = await _current(shop, staff, product["id"])
    assert _at(after_remove) > _at(after_add)

    # An import that changes a price changes the product; one that changes nothing does not.
    csv = f"slug,name,status,sku,price_EUR\n{product['slug']},Sync Mug,active,SYNC-MUG,"
    headers = {**staff, "Content-Type": "text/csv"}
    imported = await shop.post(f"{API}/products/import", content=csv + "1100\n", headers=headers)
    assert imported.status_code == 200, imported.text
    after_import = await _current(shop, staff, product["id"])
    assert _at(after_import) > _at(after_remove)
    again = await shop.post(f"{API}/products/import", content=csv + "1100\n", headers=headers)
    assert again.json()["products_unchanged"] == 1
    assert (await _current(shop, staff, product["id"]))["updated_at"] == after_import["updated_at"]


async def test_a_bad_instant_is_a_422_on_updated_since(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    bad = [
        "yesterday",
        "2026-11-29T10:00:00",  # no offset: never guessed
        "2026-11-29",
        "1764410400",
        "2026-02-30T10:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:00:00-05:00",
        "",
    ]
    for value in bad:
        answer = await shop.get(f"{API}/products", params={"updated_since": value})
        assert answer.status_code == 422, (value, answer.text)
        problem = answer.json()
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert problem["type"].endswith("/validation-error"), value
        assert [e["field"] for e in problem["errors"]] == ["updated_since"], value

    # An offset's "+" sent unescaped arrives as a space; the message says so.
    plus = await shop.get(f"{API}/products?updated_since=2026-11-29T10:00:00+01:00")
    assert plus.status_code == 422, plus.text
    assert "%2B" in plus.json()["errors"][0]["message"]
    escaped = await shop.get(f"{API}/products?updated_since=2026-11-29T10:00:00%2B01:00")
    assert escaped.status_code == 200, escaped.text

    too_long = await shop.get(f"{API}/products", params={"updated_since": "2" * 100})
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "updated_since"

    unknown_sort = await shop.get(f"{API}/products", params={"sort": "updated"})
    assert unknown_sort.status_code == 422
    assert unknown_sort.json()["errors"][0]["field"] == "sort"


async def test_a_cursor_works_only_for_its_own_instant(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    for name in ("Cursor A", "Cursor B"):
        await _create(shop, staff, name)
    since = "2020-01-01T00:00:00Z"
    first = (await shop.get(f"{API}/products", params={"updated_since": since, "limit": 1})).json()
    assert first["next_cursor"]

    other = await shop.get(
        f"{API}/products",
        params={
            "updated_since": "2021-01-01T00:00:00Z",
            "limit": 1,
            "cursor": first["next_cursor"],
        },
    )
    newest = await shop.get(
        f"{API}/products",
        params={
            "updated_since": since,
            "sort": "newest",
            "limit": 1,
            "cursor": first["next_cursor"],
        },
    )

    for answer in (other, newest):
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"].endswith("/invalid-cursor")
