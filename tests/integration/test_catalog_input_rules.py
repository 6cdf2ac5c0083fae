"""What catalog accepts as a SKU, a name or an option, on both shapes: the SKU rule orders
applies, display text without invisible characters, option errors at a clean field, a PATCH
null refused; text and SKUs stored before these rules stay readable."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from ecosistema.catalog.models import products, variants
from tests.integration.test_catalog_support import (
    API,
    catalog_service,
    ctx_of,
    make_category,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

CSV = {"Content-Type": "text/csv"}
SKIP = {"mode": "skip-invalid"}
# "nim-fasele": Persian joins its two words with a zero-width non-joiner (U+200C).
PERSIAN_HALF_SPACE = "\u0646\u06cc\u0645\u200c\u0641\u0627\u0635\u0644\u0647"


def fields(response: httpx.Response) -> list[tuple[str, str]]:
    """The (field, message) of each error of a 422."""
    assert response.status_code == 422, response.text
    return [(e["field"], e["message"]) for e in response.json()["errors"]]


async def test_a_sku_orders_would_refuse_is_a_422_at_its_field_wherever_a_sku_is_created(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    slashed = await shop.post(
        f"{API}/products",
        json={"name": "Slashed", "variants": [{"sku": "QA/SL-fe24a", "name": "a"}]},
        headers=staff,
    )
    product = await shop.post(
        f"{API}/products", json={"name": "Plain", "variants": [{"sku": "PLAIN-1"}]}, headers=staff
    )
    assert product.status_code == 201, product.text
    product_id = product.json()["id"]
    added = await shop.post(
        f"{API}/products/{product_id}/variants", json={"sku": "PLAIN 2"}, headers=staff
    )
    variant_id = product.json()["variants"][0]["id"]
    renamed = await shop.patch(
        f"{API}/products/{product_id}/variants/{variant_id}", json={"sku": "A/B"}, headers=staff
    )
    csv_import = await shop.post(
        f"{API}/products/import",
        params=SKIP,
        content="slug,name,status,sku\nq-slash,Q,active,Q/1\n",
        headers={**staff, **CSV},
    )
    jsonl_import = await shop.post(
        f"{API}/products/import",
        params=SKIP,
        content='{"name": "J", "variants": [{"sku": "J/1"}]}\n',
        headers={**staff, "Content-Type": "application/x-ndjson"},
    )
    good = await shop.post(
        f"{API}/products",
        json={"name": "Dotted", "variants": [{"sku": "mug_2.0-A"}]},
        headers=staff,
    )

    assert [f for f, _ in fields(slashed)] == ["variants.0.sku"]
    assert [f for f, _ in fields(added)] == ["sku"]
    assert [f for f, _ in fields(renamed)] == ["sku"]
    assert csv_import.status_code == 200, csv_import.text
    [row] = csv_import.json()["errors"]
    assert (row["line"], [p["field"] for p in row["problems"]]) == (2, ["sku"])
    [line] = jsonl_import.json()["errors"]
    assert [p["field"] for p in line["problems"]] == ["variants.0.sku"]
    assert csv_import.json()["products_created"] == jsonl_import.json()["products_created"] == 0
    assert good.status_code == 201, good.text


async def test_a_sku_stored_with_a_slash_before_the_rule_stays_readable_and_usable(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    made = await make_product(catalog, "Old Mug", skus={"OLD-1": 900})
    async with catalog.db.transaction() as session:
        await session.execute(update(variants).where(variants.c.sku == "OLD-1").values(sku="OLD/1"))
    await catalog_service.invalidate(catalog, [made.id])
    staff = await sign_in_demo(shop_app, shop, "staff")

    product = await shop.get(f"{API}/products/{made.id}")
    listed = await shop.get(f"{API}/products", params={"currency": "EUR"})
    variant_list = await shop.get(f"{API}/products/{made.id}/variants", headers=staff)
    exported = await shop.get(f"{API}/products/export", params={"format": "jsonl"}, headers=staff)
    price_list = await shop.post(
        f"{API}/price-lists", json={"code": "trade", "name": "Trade"}, headers=staff
    )
    prices_url = f"{API}/price-lists/{price_list.json()['id']}/prices"
    priced = await shop.put(
        prices_url,
        json={"prices": [{"sku": "OLD/1", "currency": "EUR", "amount": 800}]},
        headers=staff,
    )
    read_back = await shop.get(prices_url, headers=staff)
    quoted = await shop.post(
        f"{API}/quotes", json={"skus": ["OLD/1"], "currency": "EUR"}, headers=staff
    )
    available = await shop.get(f"{API}/availability", params={"sku": "OLD/1"})

    assert product.status_code == 200, product.text
    assert [v["sku"] for v in product.json()["variants"]] == ["OLD/1"]
    assert listed.status_code == 200, listed.text
    assert [p["id"] for p in listed.json()["items"]] == [made.id]
    assert variant_list.status_code == 200, variant_list.text
    assert exported.status_code == 200, exported.text
    assert "OLD/1" in exported.text
    assert priced.status_code == 200, priced.text
    assert read_back.status_code == 200, read_back.text
    assert read_back.json() == [{"sku": "OLD/1", "currency": "EUR", "amount": 800}]
    assert quoted.status_code == 200, quoted.text
    assert (quoted.json()["OLD/1"]["unit_price"], quoted.json()["OLD/1"]["purchasable"]) == (
        900,
        True,
    )
    assert available.status_code == 200, available.text
    assert available.json()["items"] == [{"sku": "OLD/1", "available": 0, "in_stock": False}]


async def test_a_bad_option_name_is_a_422_at_the_options_naming_the_name(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    answers = {}
    for label, key in (("empty", ""), ("blank", " "), ("override", "size\u202e")):
        answers[label] = await shop.post(
            f"{API}/products",
            json={
                "name": "opt",
                "variants": [{"sku": "OPTK-1", "name": "a", "options": {key: "x"}}],
            },
            headers=staff,
        )
    product = await shop.post(
        f"{API}/products",
        json={"name": "opt", "variants": [{"sku": "OPTK-2", "options": {"size": "M"}}]},
        headers=staff,
    )
    product_id, variant_id = product.json()["id"], product.json()["variants"][0]["id"]
    patched = await shop.patch(
        f"{API}/products/{product_id}/variants/{variant_id}",
        json={"options": {"": "x", "size": "L"}},
        headers=staff,
    )
    bad_value = await shop.patch(
        f"{API}/products/{product_id}/variants/{variant_id}",
        json={"options": {"size": ""}},
        headers=staff,
    )
    imported = await shop.post(
        f"{API}/products/import",
        params=SKIP,
        content='{"name": "J", "variants": [{"sku": "J-1", "options": {"": "x"}}]}\n',
        headers={**staff, "Content-Type": "application/x-ndjson"},
    )

    assert fields(answers["empty"]) == [("variants.0.options", "option name '' must not be empty")]
    assert fields(answers["blank"]) == [("variants.0.options", "option name ' ' must not be blank")]
    [(field, message)] = fields(answers["override"])
    assert field == "variants.0.options"
    assert message.startswith("option name 'size\\u202e' must not contain")
    assert fields(patched) == [("options", "option name '' must not be empty")]
    assert [f for f, _ in fields(bad_value)] == ["options.size"]
    [line] = imported.json()["errors"]
    assert [(p["field"], p["reason"]) for p in line["problems"]] == [
        ("variants.0.options", "option name '' must not be empty")
    ]


async def test_invisible_formatting_characters_are_refused_in_names_and_descriptions(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    refused: dict[str, list[tuple[str, str]]] = {}
    for char in ("\u202e", "\u200b", "\u00ad"):
        product = await shop.post(
            f"{API}/products",
            json={"name": f"Tee{char}shirt", "variants": [{"sku": "T-1", "name": f"S{char}"}]},
            headers=staff,
        )
        category = await shop.post(f"{API}/categories", json={"name": f"Caps{char}"}, headers=staff)
        described = await shop.post(
            f"{API}/products", json={"name": "Tee", "description": f"soft{char}"}, headers=staff
        )
        refused[char] = fields(product) + fields(category) + fields(described)
    persian = await shop.post(
        f"{API}/products",
        json={"name": PERSIAN_HALF_SPACE, "description": "Line one\nline two\twith a tab"},
        headers=staff,
    )

    for char, errors in refused.items():
        assert [f for f, _ in errors] == ["name", "variants.0.name", "name", "description"], char
        assert all("invisible" in message for _, message in errors), errors
    assert persian.status_code == 201, persian.text


async def test_names_stored_before_the_rule_stay_readable_and_other_fields_changeable(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    made = await make_product(catalog, "Old Name", skus={"OLDN-1": 500})
    async with catalog.db.transaction() as session:
        await session.execute(
            update(products).where(products.c.id == made.id).values(name="Old\u202eName")
        )
    await catalog_service.invalidate(catalog, [made.id])
    staff = await sign_in_demo(shop_app, shop, "staff")

    read = await shop.get(f"{API}/products/{made.id}")
    changed = await shop.patch(
        f"{API}/products/{made.id}", json={"description": "now described"}, headers=staff
    )

    assert read.status_code == 200, read.text
    assert read.json()["name"] == "Old\u202eName"
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Old\u202eName"


async def test_null_for_a_field_that_cannot_be_empty_is_a_422_in_every_patch(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    catalog = ctx_of(shop_app)
    category = await make_category(catalog, "Caps")
    made = await make_product(catalog, "Cap", skus={"CAP-1": 500}, category_id=category.id)
    variant_id = made.variants[0].id
    staff = await sign_in_demo(shop_app, shop, "staff")
    answers: dict[str, httpx.Response] = {}
    for name in ("name", "description"):
        answers[f"category.{name}"] = await shop.patch(
            f"{API}/categories/{category.id}", json={name: None}, headers=staff
        )
    for name in ("prices", "sale_prices"):
        answers[f"variant.{name}"] = await shop.patch(
            f"{API}/products/{made.id}/variants/{variant_id}", json={name: None}, headers=staff
        )
    unchanged = await shop.get(f"{API}/categories/{category.id}")
    uncategorised = await shop.patch(
        f"{API}/products/{made.id}", json={"category_id": None}, headers=staff
    )

    for label, response in answers.items():
        assert fields(response) == [(label.partition(".")[2], "must not be null")], label
    assert unchanged.json()["name"] == "Caps"
    assert uncategorised.status_code == 200, uncategorised.text
    assert uncategorised.json()["category_id"] is None
