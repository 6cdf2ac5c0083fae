"""Product import and export that do what a user expects: an unchanged row writes and emits
nothing, a bad cell is named with its expected type, exported cells cannot run as spreadsheet
formulas yet import back exactly, drafts are counted, and a quote says why a SKU is not for sale."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from ecosistema.catalog import service as catalog_service
from ecosistema.catalog.models import products
from ecosistema.catalog.schemas import Product
from ecosistema.catalog.service import PRODUCT_UPDATED
from ecosistema.catalog.transfer import export_chunks, import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    settings_fixture,  # noqa: F401 - a fixture
)

HEADER = "slug,name,description,status,category,images,sku,variant_name,options,weight_grams,"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def export_csv(ctx: ServiceContext, path: Path) -> str:
    with path.open("wb") as out:
        async for chunk in export_chunks(ctx, "csv"):
            out.write(chunk)
    return path.read_text(encoding="utf-8")


async def by_slug(ctx: ServiceContext, slug: str) -> Product:
    async with ctx.db.read() as session:
        found = await session.scalar(select(products.c.id).where(products.c.slug == slug))
    assert found is not None
    return await catalog_service.get_product(ctx, str(found))


async def updated_events(ctx: ServiceContext) -> int:
    table = ctx.outbox.table
    async with ctx.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(table).where(table.c.type == PRODUCT_UPDATED)
        )
    return int(count or 0)


async def test_reimporting_an_unchanged_export_writes_and_emits_nothing(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = (
        HEADER + "price_EUR\n"
        "tee,Tee,Soft,active,,,TEE-S,Small,size=S,180,1990\n"
        "tee,Tee,Soft,active,,,TEE-M,Medium,size=M,190,1990\n"
        "mug,Mug,,active,,,,,,,\n"
    )
    first = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="all-or-nothing"
    )
    assert first.products_created == 2
    exported = write(tmp_path, "export.csv", await export_csv(catalog, tmp_path / "e.csv"))
    async with catalog.db.read() as session:
        stamps = dict((await session.execute(select(products.c.slug, products.c.updated_at))).all())
    events = await updated_events(catalog)

    again = await import_file(catalog, exported, format="csv", mode="all-or-nothing")

    assert again.applied and again.products_unchanged == 2
    assert (again.products_created, again.products_updated, again.variants_written) == (0, 0, 0)
    assert await updated_events(catalog) == events
    async with catalog.db.read() as session:
        after = dict((await session.execute(select(products.c.slug, products.c.updated_at))).all())
    assert after == stamps

    changed = exported.read_text().replace("1990", "2090", 1)
    third = await import_file(
        catalog, write(tmp_path, "c.csv", changed), format="csv", mode="all-or-nothing"
    )
    assert (third.products_updated, third.products_unchanged) == (1, 1)
    assert await updated_events(catalog) == events + 1


async def test_a_cell_of_the_wrong_type_is_named_with_the_type_expected(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = HEADER + "price_EUR\ntee,Tee,,active,,,TEE-S,,,abc,19.90\n"
    report = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="skip-invalid"
    )
    [error] = report.errors
    assert "invalid literal" not in error.reason
    assert "weight_grams: expected a whole number of grams, got 'abc'" in error.reason
    assert "price_EUR: expected a whole number of minor units" in error.reason


async def test_a_column_given_twice_refuses_the_file(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    from ecosistema.platform.errors import Unprocessable

    source = "name,sku,price_EUR,price_EUR\nTee,TEE-S,100,200\n"
    try:
        await import_file(
            catalog, write(tmp_path, "a.csv", source), format="csv", mode="all-or-nothing"
        )
    except Unprocessable as exc:
        assert "'price_EUR'" in str(exc.detail)
    else:
        raise AssertionError("a duplicate column was accepted")


async def test_exported_cells_cannot_run_as_formulas_and_import_back_exactly(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    evil = '=HYPERLINK("http://evil")'
    source = (
        HEADER + "price_EUR\n"
        f'evil,"{evil.replace(chr(34), chr(34) * 2)}",-5 stars,active,,,EVIL-1,@home,,,100\n'
        "quoted,''=really,'plain,active,,,Q-1,,,,100\n"
    )
    created = await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="all-or-nothing"
    )
    assert created.applied, created.errors
    text = await export_csv(catalog, tmp_path / "export.csv")
    for line in text.splitlines()[1:]:
        for cell in line.split(","):
            assert cell.lstrip('"')[:1] not in "=+-@\t\r" or cell == "", line
    product = await by_slug(catalog, "evil")
    assert product.name == evil and product.description == "-5 stars"
    assert [v.name for v in product.variants] == ["@home"]

    again = await import_file(catalog, tmp_path / "export.csv", format="csv", mode="all-or-nothing")
    assert again.products_unchanged == 2 and again.products_updated == 0
    quoted = await by_slug(catalog, "quoted")
    assert (quoted.name, quoted.description) == ("'=really", "'plain")


async def test_drafts_are_counted_with_a_note(catalog: ServiceContext, tmp_path: Path) -> None:
    report = await import_file(
        catalog,
        write(tmp_path, "a.csv", "name,sku\nTee,TEE-1\nMug,MUG-1\n"),
        format="csv",
        mode="all-or-nothing",
    )
    assert report.products_draft == 2
    assert report.notes and "2 products were imported as draft" in report.notes[0]
    assert "no status column" in report.notes[0]


async def test_a_quote_says_why_a_sku_cannot_be_bought(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    source = (
        "name,status,sku,price_EUR\n"
        "Old,archived,OLD-1,100\n"
        "New,draft,NEW-1,100\n"
        "Live,active,LIVE-1,\n"
        "Good,active,GOOD-1,100\n"
    )
    await import_file(
        catalog, write(tmp_path, "a.csv", source), format="csv", mode="all-or-nothing"
    )
    quotes = await catalog_service.quote(
        catalog, ["OLD-1", "NEW-1", "LIVE-1", "GOOD-1"], currency="EUR", staff=True
    )
    assert {sku: q.reason for sku, q in quotes.items()} == {
        "OLD-1": "archived",
        "NEW-1": "draft",
        "LIVE-1": "not_priced",
        "GOOD-1": None,
    }
    assert quotes["OLD-1"].reason_message == "OLD-1 is archived: it is no longer sold"
    assert not quotes["OLD-1"].purchasable and quotes["GOOD-1"].purchasable
