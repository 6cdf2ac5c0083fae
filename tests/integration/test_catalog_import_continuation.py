"""When a CSV product's first row is refused, the rows that continue it (same slug, no name of
their own) are refused saying so, in both modes and on both shapes: nothing of the product is
written, and the report lists each row with its line instead of a blank-name error."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.catalog.models import products, variants
from ecosistema.catalog.schemas import RowError
from ecosistema.catalog.transfer import import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

HEADER = "slug,name,status,sku,price_EUR\n"
MINOR_UNITS = "expected a whole number of minor units (1999 for 19.99), got {!r}"


def first_row_refused(line: int) -> tuple[None, str]:
    return (None, f"the product's first row (line {line}) was refused")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "products.csv"
    path.write_text(text, encoding="utf-8")
    return path


def entries(errors: list[RowError]) -> list[tuple[int, str | None, str | None, list[object]]]:
    return [(e.line, e.slug, e.sku, [(p.field, p.reason) for p in e.problems]) for e in errors]


async def stored(ctx: ServiceContext) -> tuple[list[str], list[str]]:
    async with ctx.db.read() as session:
        slugs = (await session.scalars(select(products.c.slug))).all()
        skus = (await session.scalars(select(variants.c.sku))).all()
    return sorted(slugs), sorted(skus)


async def test_the_rows_continuing_a_refused_first_row_are_refused_naming_it(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + (
        "fr-1,First Row,active,FR-1,x1\n"
        "fr-1,,,FR-2,100\n"
        "fr-1,,,FR-3,abc\n"
        "ok-1,Fine,active,OK-1,100\n"
        "ok-1,,,OK-2,200\n"
    )

    report = await import_file(catalog, write(tmp_path, source), format="csv", mode="skip-invalid")

    assert entries(report.errors) == [
        (2, "fr-1", "FR-1", [("price_EUR", MINOR_UNITS.format("x1"))]),
        (3, "fr-1", "FR-2", [first_row_refused(2)]),
        (4, "fr-1", "FR-3", [first_row_refused(2), ("price_EUR", MINOR_UNITS.format("abc"))]),
    ]
    assert (report.rows_read, report.rows_skipped) == (5, 3)
    assert (report.products_created, report.variants_written) == (1, 2)
    assert await stored(catalog) == (["ok-1"], ["OK-1", "OK-2"])


async def test_a_product_whose_own_fields_are_refused_takes_no_continuation_variant(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_product(catalog, "Stored", skus={"ST-1": 100})
    source = HEADER + (
        "bad-1,Bad,bogus,BAD-1,100\n"
        "bad-1,,,BAD-2,100\n"
        "bad-1,,,ST-1,100\n"
        "bad-1,,,,\n"
        "next-1,Next,active,NEXT-1,100\n"
    )

    report = await import_file(catalog, write(tmp_path, source), format="csv", mode="skip-invalid")

    [status] = report.errors[0].problems
    assert status.field == "status"
    assert entries(report.errors[1:]) == [
        (3, "bad-1", "BAD-2", [first_row_refused(2)]),
        (
            4,
            "bad-1",
            "ST-1",
            [first_row_refused(2), ("sku", "SKU ST-1 belongs to another product")],
        ),
        (5, "bad-1", None, [first_row_refused(2)]),
    ]
    assert (report.rows_read, report.rows_skipped) == (5, 4)
    assert await stored(catalog) == (["next-1", "stored"], ["NEXT-1", "ST-1"])


async def test_a_continuation_row_with_its_own_name_still_supplies_the_products_fields(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + (
        "hat,Bad Hat,bogus,HAT-S,100\n"
        "hat,,,HAT-M,100\n"
        "hat,Good Hat,active,HAT-L,100\n"
        "hat,,,HAT-XL,100\n"
    )

    report = await import_file(catalog, write(tmp_path, source), format="csv", mode="skip-invalid")

    assert [(e.line, [p.field for p in e.problems]) for e in report.errors] == [
        (2, ["status"]),
        (3, [None]),
    ]
    assert await stored(catalog) == (["hat"], ["HAT-L", "HAT-XL"])
    async with catalog.db.read() as session:
        hat_id = await session.scalar(select(products.c.id).where(products.c.slug == "hat"))
    assert hat_id is not None
    hat = await catalog_service.get_product(catalog, hat_id)
    assert (hat.name, hat.status) == ("Good Hat", "active")


async def test_an_all_or_nothing_http_import_lists_the_continuation_rows_of_a_refused_row(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    body = HEADER + "fr-1,First Row,active,FR-1,x1\nfr-1,,,FR-2,100\nfr-1,,,FR-3,200\n"

    response = await shop.post(
        f"{API}/products/import",
        params={"mode": "all-or-nothing"},
        content=body,
        headers={**staff, "Content-Type": "text/csv"},
    )

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("import-rejected")
    assert [(e["line"], e["reason"]) for e in problem["errors"]] == [
        (2, "price_EUR: " + MINOR_UNITS.format("x1")),
        (3, "the product's first row (line 2) was refused"),
        (4, "the product's first row (line 2) was refused"),
    ]
    assert [[p["field"] for p in e["problems"]] for e in problem["errors"][1:]] == [[None], [None]]
    assert problem["report"]["rows_skipped"] == 3
