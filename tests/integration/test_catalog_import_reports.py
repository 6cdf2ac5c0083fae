"""Import reports name every problem of a refused row, each by the input's own column (CSV) or
field path (JSON Lines), with the row's SKU and slug."""

from __future__ import annotations

import json
from pathlib import Path

from ecosistema.catalog.transfer import import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    make_category,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
)

HEADER = (
    "slug,name,description,status,category,images,sku,variant_name,options,weight_grams,"
    "price_EUR,price_XYZ\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def columns(reason: str) -> list[str]:
    return [part.split(":")[0] for part in reason.split("; ")]


async def test_a_csv_row_lists_every_problem_by_its_column(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + "imp-j,Import J,,bogus,nosuchcat,ftp://x,bad sku!,,size,-1,-5,7\n"

    report = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="skip-invalid"
    )

    [error] = report.errors
    assert (error.line, error.sku, error.slug) == (2, "bad sku!", "imp-j")
    assert columns(error.reason) == [
        "status",
        "category",
        "images",
        "sku",
        "options",
        "weight_grams",
        "price_EUR",
        "price_XYZ",
    ]
    assert "unknown category nosuchcat" in error.reason
    assert "'ftp://x'" in error.reason
    assert "price_XYZ: 'XYZ' is not an ISO 4217 currency" in error.reason
    assert "prices.EUR" not in error.reason


async def test_a_csv_price_error_names_its_column_not_a_field_path(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_category(catalog, "Tops")
    source = HEADER + "tee,Tee,,active,tops,,TEE-S,,size=S,180,-5,\n"

    report = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="skip-invalid"
    )

    [error] = report.errors
    assert error.reason.startswith("price_EUR: ")
    assert (error.sku, error.slug) == ("TEE-S", "tee")


async def test_a_json_line_lists_every_problem_by_its_path_with_its_sku_and_slug(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    line = {
        "slug": "imp-j",
        "name": "Import J",
        "status": "bogus",
        "category": "nosuchcat",
        "variants": [
            {"sku": "J-1", "prices": {"EUR": 100}},
            {"sku": "J-2", "weight_grams": -1, "prices": {"EUR": -5, "XYZ": 7}},
            {"sku": "J-1"},
        ],
    }
    path = write(tmp_path, "a.jsonl", json.dumps(line) + "\n")

    report = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    [error] = report.errors
    assert (error.line, error.sku, error.slug) == (1, "J-2", "imp-j")
    assert columns(error.reason) == [
        "status",
        "variants.1.weight_grams",
        "variants.1.prices.EUR",
        "variants.1.prices.XYZ",
        "category",
        "variants.2.sku",
    ]
    assert "unknown currency XYZ" in error.reason
    assert "SKU J-1 appears twice in this product" in error.reason


async def test_sku_conflicts_are_all_named_by_column_or_path(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_product(catalog, "Mug", skus={"MUG-1": 500, "MUG-2": 600})
    line = {"name": "Cup", "variants": [{"sku": "MUG-1"}, {"sku": "CUP-1"}, {"sku": "MUG-2"}]}
    jsonl = write(tmp_path, "a.jsonl", json.dumps(line) + "\n")
    csv_source = HEADER + "tee,Tee,,,,,TEE-S,,,,,\nbag,Bag,,,,,TEE-S,,,,,\n"

    from_jsonl = await import_file(catalog, jsonl, format="jsonl", mode="skip-invalid")
    from_csv = await import_file(
        catalog, write(tmp_path, "a.csv", csv_source), format="csv", mode="skip-invalid"
    )

    [error] = from_jsonl.errors
    assert (error.sku, error.slug) == ("MUG-1", "cup")
    assert error.reason == (
        "variants.0.sku: SKU MUG-1 belongs to another product; "
        "variants.2.sku: SKU MUG-2 belongs to another product"
    )
    [clash] = from_csv.errors
    assert (clash.line, clash.sku, clash.slug) == (3, "TEE-S", "bag")
    assert clash.reason == "sku: SKU TEE-S is already used by product tee (line 2)"
