"""A CSV import reads a product's and a variant's name as the API takes it, on both shapes:
spaces around a name are kept, so a CSV export of names the API stored with spaces imports
back unchanged (nothing written, no event), as a JSON Lines export does."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    ctx_of,
    outbox_types,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

SPACED = {
    "name": "  Spaced Name  ",
    "slug": "sp-x",
    "status": "active",
    "variants": [
        {"sku": "SP-X", "name": " Var  ", "prices": [{"currency": "EUR", "amount": 100}]},
        {"sku": "SP-Y", "prices": [{"currency": "EUR", "amount": 200}]},
    ],
}
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


@pytest.mark.parametrize("format", ["csv", "jsonl"])
async def test_an_export_of_names_with_surrounding_spaces_imports_back_unchanged(
    shop_app: FastAPI, shop: httpx.AsyncClient, format: str
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    created = await shop.post(f"{API}/products", json=SPACED, headers=staff)
    assert created.status_code == 201, created.text
    events_before = len(await outbox_types(ctx_of(shop_app)))

    exported = await shop.get(f"{API}/products/export", params={"format": format}, headers=staff)
    assert exported.status_code == 200, exported.text
    imported = await shop.post(
        f"{API}/products/import",
        params={"mode": "all-or-nothing", "format": format},
        content=exported.content,
        headers={**staff, "Content-Type": CONTENT_TYPES[format]},
    )
    after = await shop.get(f"{API}/products/{created.json()['id']}", headers=staff)

    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert (report["products_unchanged"], report["products_updated"], report["errors"]) == (
        1,
        0,
        [],
    )
    assert after.json()["name"] == "  Spaced Name  "
    assert [v["name"] for v in after.json()["variants"]] == [" Var  ", "SP-Y"]
    assert len(await outbox_types(ctx_of(shop_app))) == events_before


async def test_a_csv_name_keeps_its_spaces_and_a_blank_one_is_refused_as_the_api_refuses_it(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    body = (
        "slug,name,status,sku,variant_name,price_EUR\n"
        "sp-a, Lamp ,active,SP-A,  Small ,100\n"
        "sp-b,   ,active,SP-B,,100\n"
        "sp-c,Chair,active,SP-C,   ,100\n"
    )
    api_blank = await shop.post(
        f"{API}/products", json={"name": "   ", "variants": [{"sku": "SP-Z"}]}, headers=staff
    )

    imported = await shop.post(
        f"{API}/products/import",
        params={"mode": "skip-invalid"},
        content=body,
        headers={**staff, "Content-Type": "text/csv"},
    )
    lamp = await shop.get(f"{API}/products", params={"q": "lamp"}, headers=staff)

    assert api_blank.status_code == 422, api_blank.text
    [api_error] = api_blank.json()["errors"]
    assert imported.status_code == 200, imported.text
    errors = imported.json()["errors"]
    assert [(e["line"], [p["field"] for p in e["problems"]]) for e in errors] == [
        (3, ["name"]),
        (4, ["variant_name"]),
    ]
    assert errors[0]["problems"][0]["reason"] == api_error["message"]
    [item] = lamp.json()["items"]
    stored = await shop.get(f"{API}/products/{item['id']}", headers=staff)
    assert stored.json()["name"] == " Lamp "
    assert [v["name"] for v in stored.json()["variants"]] == ["  Small "]
