"""Import reports name every problem of a refused row, each by the input's own column (CSV) or
field path (JSON Lines), with the row's SKU and slug."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from ecosistema.catalog.schemas import RowError
from ecosistema.catalog.transfer import import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    ctx_of,
    make_category,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
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


def problems(error: RowError | dict[str, Any]) -> list[tuple[str | None, str]]:
    """A report entry's problems as (field, reason), checked against its joined reason."""
    entry = error if isinstance(error, dict) else error.model_dump()
    found = [(p["field"], p["reason"]) for p in entry["problems"]]
    assert entry["reason"] == "; ".join(f"{f}: {r}" if f else r for f, r in found)
    return found


GRAMS = "expected a whole number of grams, got 'abc'"
MINOR_UNITS = "expected a whole number of minor units (1999 for 19.99), got 'x1'"
# Line 2 is good; line 3 repeats its SKU in its product; line 4 has a blank name, a bad
# weight, a bad price and the SKU of a stored product; line 5 a bad option and an unknown
# category; line 6 variant cells without a SKU; line 7 one field too many besides a bad status;
# line 8 a bad price and line 2's SKU in another product.
SEVERAL_PROBLEMS_CSV = HEADER + (
    "tee,Tee,,active,,,TEE-S,,size=S,180,1990,\n"
    "tee,Tee,,active,,,TEE-S,,size=M,190,1990,\n"
    "cup,,,active,,,MUG-1,,,abc,x1,\n"
    "cap,Cap,,active,nosuchcat,,CAP-1,,size,10,500,\n"
    ",,,,,,,,,abc,x1,\n"
    "bag,Bag,,bogus,,,BAG-1,,,10,500,,extra\n"
    "hat,Hat,,active,,,TEE-S,,,10,x1,\n"
)
SEVERAL_PROBLEMS_CSV_ERRORS: dict[int, list[tuple[str | None, str]]] = {
    3: [("sku", "SKU TEE-S appears twice in this product (line 2)")],
    4: [
        ("name", "String should have at least 1 character"),
        ("sku", "SKU MUG-1 belongs to another product"),
        ("weight_grams", GRAMS),
        ("price_EUR", MINOR_UNITS),
    ],
    5: [
        ("category", "unknown category nosuchcat"),
        ("options", "option 'size' is not name=value"),
    ],
    6: [
        ("name", "String should have at least 1 character"),
        ("sku", "empty, but the row has a variant's cells (weight_grams, price_EUR)"),
        ("weight_grams", GRAMS),
        ("price_EUR", MINOR_UNITS),
    ],
    7: [
        (None, "the row has more fields than the header"),
        ("status", "Input should be 'draft', 'active' or 'archived'"),
    ],
    8: [
        ("sku", "SKU TEE-S is already used by product tee (line 2)"),
        ("price_EUR", MINOR_UNITS),
    ],
}


def several_problems_jsonl() -> str:
    """Line 1 is good; line 2 has faults in its product fields and in two variants, one of
    which has the SKU of a stored product; line 3 line 1's SKU besides an unknown category."""
    good = {"slug": "tee", "name": "Tee", "status": "active", "variants": [{"sku": "TEE-S"}]}
    bad = {
        "slug": "cup",
        "name": "",
        "status": "bogus",
        "category": "nosuchcat",
        "images": ["ftp://x"],
        "variants": [
            {"sku": "CUP-1", "weight_grams": "abc", "prices": {"EUR": "x1"}},
            {"sku": "MUG-1", "options": {"size": ""}},
        ],
    }
    clash = {"slug": "hat", "name": "Hat", "category": "nosuchcat", "variants": [{"sku": "TEE-S"}]}
    return "".join(json.dumps(doc) + "\n" for doc in (good, bad, clash))


SEVERAL_PROBLEMS_JSONL_ERRORS: dict[int, list[tuple[str | None, str]]] = {
    2: [
        ("name", "String should have at least 1 character"),
        ("status", "Input should be 'draft', 'active' or 'archived'"),
        ("category", "unknown category nosuchcat"),
        ("images.0", "must be an http:// or https:// URL without spaces"),
        # As POST /products says it: a JSON string is not an integer, whatever it holds.
        ("variants.0.weight_grams", "Input should be a valid integer"),
        ("variants.0.prices.EUR", "Input should be a valid integer"),
        ("variants.1.sku", "SKU MUG-1 belongs to another product"),
        ("variants.1.options.size", "String should have at least 1 character"),
    ],
    3: [
        ("category", "unknown category nosuchcat"),
        ("variants.0.sku", "SKU TEE-S is already used by product tee (line 1)"),
    ],
}


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
        "category",
        "variants.1.weight_grams",
        "variants.1.prices.EUR",
        "variants.1.prices.XYZ",
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


async def test_a_csv_report_lists_every_problem_of_each_row_with_its_column(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_product(catalog, "Mug", skus={"MUG-1": 500})
    path = write(tmp_path, "a.csv", SEVERAL_PROBLEMS_CSV)

    rejected = await import_file(catalog, path, format="csv", mode="all-or-nothing")
    skipped = await import_file(catalog, path, format="csv", mode="skip-invalid")

    for report in (rejected, skipped):
        assert {e.line: problems(e) for e in report.errors} == SEVERAL_PROBLEMS_CSV_ERRORS
        assert report.rows_read == 7
    assert (rejected.applied, rejected.rows_skipped, rejected.products_created) == (False, 7, 0)
    assert (skipped.rows_skipped, skipped.products_created, skipped.variants_written) == (6, 1, 1)
    by_line = {e.line: e for e in skipped.errors}
    assert (by_line[4].sku, by_line[4].slug) == ("MUG-1", "cup")
    assert (by_line[6].sku, by_line[6].slug) == (None, None)
    assert (by_line[7].sku, by_line[7].slug) == ("BAG-1", "bag")
    assert (by_line[8].sku, by_line[8].slug) == ("TEE-S", "hat")


async def test_a_jsonl_report_lists_every_problem_of_each_line_in_field_order(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_product(catalog, "Mug", skus={"MUG-1": 500})
    path = write(tmp_path, "a.jsonl", several_problems_jsonl())

    rejected = await import_file(catalog, path, format="jsonl", mode="all-or-nothing")
    skipped = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    for report in (rejected, skipped):
        assert {e.line: problems(e) for e in report.errors} == SEVERAL_PROBLEMS_JSONL_ERRORS
        assert report.rows_read == 3
    assert (rejected.applied, rejected.rows_skipped, rejected.products_created) == (False, 3, 0)
    assert (skipped.rows_skipped, skipped.products_created, skipped.variants_written) == (2, 1, 1)
    by_line = {e.line: e for e in skipped.errors}
    assert (by_line[2].sku, by_line[2].slug) == ("CUP-1", "cup")
    assert (by_line[3].sku, by_line[3].slug) == ("TEE-S", "hat")


async def test_a_sku_twice_in_one_csv_product_refuses_the_second_row_only(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + "tee,Tee,,active,,,TEE-S,,,180,1990,\ntee,Tee,,active,,,TEE-S,,,190,2990,\n"

    report = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="skip-invalid"
    )

    assert [(e.line, problems(e)) for e in report.errors] == [
        (3, [("sku", "SKU TEE-S appears twice in this product (line 2)")])
    ]
    assert (report.products_created, report.variants_written) == (1, 1)


async def test_the_http_import_reports_every_problem_of_a_row_in_both_modes(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    await make_product(ctx_of(shop_app), "Mug", skus={"MUG-1": 500})
    staff = await sign_in_demo(shop_app, shop, "staff")
    bodies = {
        "text/csv": (SEVERAL_PROBLEMS_CSV, SEVERAL_PROBLEMS_CSV_ERRORS),
        "application/x-ndjson": (several_problems_jsonl(), SEVERAL_PROBLEMS_JSONL_ERRORS),
    }

    for content_type, (body, expected) in bodies.items():
        headers = {**staff, "Content-Type": content_type}
        rejected = await shop.post(f"{API}/products/import", content=body, headers=headers)
        skipped = await shop.post(
            f"{API}/products/import", params={"mode": "skip-invalid"}, content=body, headers=headers
        )

        assert rejected.status_code == 422, rejected.text
        assert rejected.headers["content-type"].startswith("application/problem+json")
        assert {e["line"]: problems(e) for e in rejected.json()["errors"]} == expected
        assert rejected.json()["report"]["rows_skipped"] == rejected.json()["report"]["rows_read"]
        assert skipped.status_code == 200, skipped.text
        assert {e["line"]: problems(e) for e in skipped.json()["errors"]} == expected
        assert skipped.json()["rows_skipped"] == len(expected)


def test_the_import_command_reports_every_problem_of_a_row(tmp_path: Path) -> None:
    from ecosistema.catalog import import_products_command
    from tests.conftest import make_settings

    settings = make_settings("embedded", tmp_path)
    csv_path = write(tmp_path, "products.csv", SEVERAL_PROBLEMS_CSV.replace("MUG-1", "CUP-1"))
    jsonl_path = write(tmp_path, "products.jsonl", several_problems_jsonl())

    from_csv = import_products_command(csv_path, mode="skip-invalid", settings=settings)
    from_jsonl = import_products_command(jsonl_path, mode="skip-invalid", settings=settings)

    assert {e.line: problems(e) for e in from_csv.errors} == {
        **SEVERAL_PROBLEMS_CSV_ERRORS,
        4: [p for p in SEVERAL_PROBLEMS_CSV_ERRORS[4] if p[0] != "sku"],
    }
    assert (from_csv.rows_read, from_csv.rows_skipped, from_csv.products_created) == (7, 6, 1)
    # The CSV import has created tee with TEE-S, which the JSON lines update; MUG-1 belongs
    # to no product here.
    assert {e.line: problems(e) for e in from_jsonl.errors} == {
        2: [p for p in SEVERAL_PROBLEMS_JSONL_ERRORS[2] if p[0] != "variants.1.sku"],
        3: SEVERAL_PROBLEMS_JSONL_ERRORS[3],
    }
    assert (from_jsonl.rows_skipped, from_jsonl.products_updated) == (2, 1)


async def test_an_import_rejected_problem_has_one_uniform_error_per_problem(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    await make_product(ctx_of(shop_app), "Mug", skus={"MUG-1": 500})
    staff = await sign_in_demo(shop_app, shop, "staff")
    bodies = {
        "text/csv": (SEVERAL_PROBLEMS_CSV, SEVERAL_PROBLEMS_CSV_ERRORS),
        "application/x-ndjson": (several_problems_jsonl(), SEVERAL_PROBLEMS_JSONL_ERRORS),
    }

    for content_type, (body, expected) in bodies.items():
        headers = {**staff, "Content-Type": content_type}
        rejected = await shop.post(f"{API}/products/import", content=body, headers=headers)

        assert rejected.status_code == 422, rejected.text
        errors = rejected.json()["errors"]
        # As every problem's errors: a field (the column or path; body for the whole row), a
        # message and a code, one entry per problem, with the row's line, in line order.
        assert [(e["line"], e["field"], e["message"]) for e in errors] == [
            (line, field or "body", reason)
            for line, found in sorted(expected.items())
            for field, reason in found
        ]
        assert {e["code"] for e in errors} <= {"invalid", "row"}
        assert all(e["code"] == "row" for e in errors if e["field"] == "body")
        # And the row's own members, as the entries always had them.
        for entry in errors:
            assert problems(entry) == expected[entry["line"]]
