"""An import takes the numbers the API takes, on both shapes: a CSV weight or price is ASCII
digits, a JSON Lines weight a JSON integer; anything else is refused naming its column or
field path, and nothing of the row is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ecosistema.catalog.models import products, variants
from ecosistema.catalog.transfer import import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    settings_fixture,  # noqa: F401 - a fixture
)

HEADER = "slug,name,status,sku,weight_grams,price_EUR\n"
GRAMS = "expected a whole number of grams, got {!r}"
MINOR_UNITS = "expected a whole number of minor units (1999 for 19.99), got {!r}"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def stored_skus(ctx: ServiceContext) -> list[str]:
    async with ctx.db.read() as session:
        return sorted((await session.scalars(select(variants.c.sku))).all())


async def product_id(ctx: ServiceContext, slug: str) -> str:
    async with ctx.db.read() as session:
        found = await session.scalar(select(products.c.id).where(products.c.slug == slug))
    assert found is not None, slug
    return str(found)


@pytest.mark.parametrize(
    ("weight", "price", "column", "message"),
    [
        ("", "1_000", "price_EUR", MINOR_UNITS.format("1_000")),
        ("", "\u0661\u0660\u0660", "price_EUR", MINOR_UNITS.format("\u0661\u0660\u0660")),
        ("", "+100", "price_EUR", MINOR_UNITS.format("+100")),
        ("", "1e3", "price_EUR", MINOR_UNITS.format("1e3")),
        ("", "-", "price_EUR", MINOR_UNITS.format("-")),
        ("\uff11\uff10", "100", "weight_grams", GRAMS.format("\uff11\uff10")),
        ("1_0", "100", "weight_grams", GRAMS.format("1_0")),
        ("+10", "100", "weight_grams", GRAMS.format("+10")),
        ("\u00b2", "100", "weight_grams", GRAMS.format("\u00b2")),
    ],
)
async def test_a_csv_number_that_is_not_ascii_digits_is_refused_naming_its_column(
    catalog: ServiceContext, tmp_path: Path, weight: str, price: str, column: str, message: str
) -> None:
    source = HEADER + f"num-x,Number,active,NUM-1,{weight},{price}\n"

    report = await import_file(
        catalog, write(tmp_path, "n.csv", source), format="csv", mode="skip-invalid"
    )

    [error] = report.errors
    assert error.line == 2
    assert [(p.field, p.reason) for p in error.problems] == [(column, message)]
    assert (report.products_created, report.variants_written) == (0, 0)
    assert await stored_skus(catalog) == []


async def test_a_csv_of_plain_digits_still_imports_and_a_negative_is_refused_by_its_range(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + "num-a,Number A,active,NUM-A, 250 ,0100\nnum-b,Number B,active,NUM-B,,-5\n"

    report = await import_file(
        catalog, write(tmp_path, "n.csv", source), format="csv", mode="skip-invalid"
    )

    [error] = report.errors
    assert error.line == 3
    assert [p.field for p in error.problems] == ["price_EUR"]
    assert "greater than or equal to 0" in error.reason
    assert await stored_skus(catalog) == ["NUM-A"]
    product = await catalog_service.get_product(catalog, await product_id(catalog, "num-a"))
    [variant] = product.variants
    assert (variant.weight_grams, [(p.currency, p.amount) for p in variant.prices]) == (
        250,
        [("EUR", 100)],
    )


@pytest.mark.parametrize("weight", [True, "5", 5.0, 5.5, None])
async def test_a_json_lines_weight_must_be_a_json_integer_as_the_api_requires(
    catalog: ServiceContext, tmp_path: Path, weight: Any
) -> None:
    line = {"slug": "num-j", "name": "J", "variants": [{"sku": "NUM-J", "weight_grams": weight}]}
    path = write(tmp_path, "n.jsonl", json.dumps(line) + "\n")

    report = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    [error] = report.errors
    assert [p.field for p in error.problems] == ["variants.0.weight_grams"]
    assert (report.products_created, report.variants_written) == (0, 0)
    assert await stored_skus(catalog) == []


async def test_a_json_lines_integer_weight_still_imports(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    line = {"slug": "num-k", "name": "K", "variants": [{"sku": "NUM-K", "weight_grams": 5}]}
    path = write(tmp_path, "n.jsonl", json.dumps(line) + "\n")

    report = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    assert (report.errors, report.variants_written) == ([], 1)
    assert await stored_skus(catalog) == ["NUM-K"]
