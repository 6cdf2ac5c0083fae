"""Import and export on both shapes: bad rows reported by line with both modes, upserts by
slug and SKU, an export that imports back to the same catalogue, and the HTTP endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi import FastAPI

from ecosistema.catalog.transfer import export_chunks, import_file
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_runtime,
    catalog_service,
    ctx_of,
    make_category,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

CSV_HEADER = (
    "slug,name,description,status,category,images,sku,variant_name,options,weight_grams,"
    "price_EUR,price_USD\n"
)
CSV_WITH_BAD_ROWS = (
    CSV_HEADER
    + """\
tee,Cotton Tee,Soft,active,tops,https://img.example/t.jpg,TEE-S,Small,size=S,180,1990,2190
tee,Cotton Tee,Soft,active,tops,,TEE-M,Medium,size=M,abc,1990,2190
tee,Cotton Tee,Soft,active,tops,,TEE-L,Large,size=L,200,-1,2190
cap,Cap,,active,nowhere,,CAP-1,,,,990,
mug,Mug,,bogus,,,MUG-1,,,,500,
bag,Tote Bag,,active,,,TEE-S,,,,1200,
"""
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def test_all_or_nothing_applies_nothing_and_reports_each_bad_line(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_category(catalog, "Tops")
    path = write(tmp_path, "products.csv", CSV_WITH_BAD_ROWS)

    report = await import_file(catalog, path, format="csv", mode="all-or-nothing")

    assert report.applied is False
    assert report.rows_read == 6
    assert report.rows_skipped == 6
    assert report.products_created == 0
    assert [e.line for e in report.errors] == [3, 4, 5, 6, 7]
    reasons = {e.line: e.reason for e in report.errors}
    assert "weight_grams" in reasons[3] or "invalid literal" in reasons[3]
    assert "greater than or equal to 0" in reasons[4]
    assert "unknown category nowhere" in reasons[5]
    assert "status" in reasons[6]
    assert "TEE-S is already used by product tee (line 2)" in reasons[7]
    async with catalog.db.read() as session:
        from sqlalchemy import func, select

        from ecosistema.catalog.models import products

        assert await session.scalar(select(func.count()).select_from(products)) == 0


async def test_skip_invalid_applies_the_good_rows_and_lists_exactly_the_skipped_ones(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    await make_category(catalog, "Tops")
    path = write(tmp_path, "products.csv", CSV_WITH_BAD_ROWS)

    report = await import_file(catalog, path, format="csv", mode="skip-invalid")

    assert report.applied is True
    assert report.rows_skipped == 5
    assert [e.line for e in report.errors] == [3, 4, 5, 6, 7]
    assert (report.products_created, report.variants_written) == (1, 1)
    assert await product_slugs(catalog) == ["tee"]
    tee = await catalog_service.get_product(catalog, await product_id(catalog, "tee"))
    assert [(v.sku, v.options, v.weight_grams) for v in tee.variants] == [
        ("TEE-S", {"size": "S"}, 180)
    ]
    assert [(p.currency, p.amount) for p in tee.variants[0].prices] == [
        ("EUR", 1990),
        ("USD", 2190),
    ]


async def product_slugs(ctx: ServiceContext) -> list[str]:
    from sqlalchemy import select

    from ecosistema.catalog.models import products

    async with ctx.db.read() as session:
        return sorted((await session.scalars(select(products.c.slug))).all())


async def variant_skus(ctx: ServiceContext) -> list[str]:
    from sqlalchemy import select

    from ecosistema.catalog.models import variants

    async with ctx.db.read() as session:
        return sorted((await session.scalars(select(variants.c.sku))).all())


async def test_skip_invalid_writes_nothing_of_a_refused_row_and_counts_only_what_it_wrote(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    await make_category(ctx_of(shop_app), "Tops")
    staff = await sign_in_demo(shop_app, shop, "staff")
    body = (
        CSV_HEADER
        + """\
shirt,Shirt,,active,tops,,SHIRT-1,,,200,1500,
socks,Socks,,active,,,SOCKS-1,,,50,500,
glove,Glove,,active,,,GLOVE-1,,,60,-5,
scarf,Scarf,,active,nowhere,,SCARF-1,,,70,900,
boot,Boot,,active,,,BOOT-1,,,heavy,4000,
"""
    )

    response = await shop.post(
        f"{API}/products/import",
        params={"mode": "skip-invalid"},
        content=body,
        headers={**staff, "Content-Type": "text/csv"},
    )
    listed = await shop.get(f"{API}/products")
    searched = await shop.get(f"{API}/products", params={"q": "glove"})

    assert response.status_code == 200, response.text
    report = response.json()
    assert {k: report[k] for k in ("rows_read", "products_created", "variants_written")} == {
        "rows_read": 5,
        "products_created": 2,
        "variants_written": 2,
    }
    assert report["rows_skipped"] == 3
    assert [e["line"] for e in report["errors"]] == [4, 5, 6]
    assert await product_slugs(ctx_of(shop_app)) == ["shirt", "socks"]
    assert listed.status_code == 200
    assert sorted(p["slug"] for p in listed.json()["items"]) == ["shirt", "socks"]
    assert searched.json()["items"] == []


async def test_skip_invalid_takes_a_products_fields_from_its_first_accepted_row(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "products.csv",
        CSV_HEADER
        + "hat,Bad Hat,,draft,,,HAT-S,,,-3,100,\n"
        + "hat,Good Hat,,active,,,HAT-M,,,90,100,\n",
    )

    report = await import_file(catalog, path, format="csv", mode="skip-invalid")

    assert (report.products_created, report.variants_written, report.rows_skipped) == (1, 1, 1)
    hat = await catalog_service.get_product(catalog, await product_id(catalog, "hat"))
    assert (hat.name, hat.status, [v.sku for v in hat.variants]) == (
        "Good Hat",
        "active",
        ["HAT-M"],
    )


async def test_skip_invalid_drops_a_json_line_whole_when_one_of_its_variants_is_refused(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    lines = [
        {"slug": "kettle", "name": "Kettle", "variants": [{"sku": "K-1"}]},
        # K-1 belongs to kettle: the whole line is refused, so J-2 is not written either.
        {"slug": "jug", "name": "Jug", "variants": [{"sku": "J-2"}, {"sku": "K-1"}]},
        # ...and J-2, never written, stays free for a later line.
        {"slug": "jar", "name": "Jar", "variants": [{"sku": "J-2"}]},
        {"slug": "pot", "name": "Pot", "category": "nowhere", "variants": [{"sku": "P-1"}]},
    ]
    path = write(tmp_path, "p.jsonl", "".join(json.dumps(line) + "\n" for line in lines))

    report = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    assert [e.line for e in report.errors] == [2, 4]
    assert (report.rows_read, report.rows_skipped) == (4, 2)
    assert (report.products_created, report.variants_written) == (2, 2)
    assert await product_slugs(catalog) == ["jar", "kettle"]
    assert await variant_skus(catalog) == ["J-2", "K-1"]


async def product_id(ctx: ServiceContext, slug: str) -> str:
    from sqlalchemy import select

    from ecosistema.catalog.models import products

    async with ctx.db.read() as session:
        found = await session.scalar(select(products.c.id).where(products.c.slug == slug))
    assert found is not None
    return str(found)


async def test_import_updates_by_slug_and_sku_instead_of_duplicating(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    first = {"slug": "lamp", "name": "Lamp", "variants": [{"sku": "L-1", "prices": {"EUR": 100}}]}
    second = {
        "slug": "lamp",
        "name": "Desk Lamp",
        "status": "active",
        "variants": [{"sku": "L-1", "prices": {"EUR": 120}}, {"sku": "L-2"}],
    }
    await import_file(
        catalog,
        write(tmp_path, "a.jsonl", json.dumps(first) + "\n"),
        format="jsonl",
        mode="all-or-nothing",
    )
    report = await import_file(
        catalog,
        write(tmp_path, "b.jsonl", json.dumps(second) + "\n"),
        format="jsonl",
        mode="all-or-nothing",
    )

    assert (report.products_created, report.products_updated) == (0, 1)
    lamp = await catalog_service.get_product(catalog, await product_id(catalog, "lamp"))
    assert (lamp.name, lamp.status) == ("Desk Lamp", "active")
    assert [(v.sku, [p.amount for p in v.prices]) for v in lamp.variants] == [
        ("L-1", [120]),
        ("L-2", []),
    ]


async def test_jsonl_errors_carry_line_numbers(catalog: ServiceContext, tmp_path: Path) -> None:
    lines = [
        json.dumps({"name": "Good", "variants": [{"sku": "G-1"}]}),
        "",
        "{not json",
        json.dumps({"name": "Extra", "unexpected": 1}),
        json.dumps({"name": "Twice", "variants": [{"sku": "T-1"}, {"sku": "T-1"}]}),
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(lines) + "\n")

    report = await import_file(catalog, path, format="jsonl", mode="skip-invalid")

    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (3, "not JSON"),
        (4, "unexpected"),
        (5, "variants.1.sku"),
    ]
    assert (report.rows_read, report.rows_skipped, report.products_created) == (4, 3, 1)


async def test_export_then_import_reproduces_the_catalogue(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    from ecosistema.catalog.demo import seed_demo

    await seed_demo(catalog)
    for format in ("csv", "jsonl"):
        exported = tmp_path / f"export.{format}"
        with exported.open("wb") as out:
            async for chunk in export_chunks(catalog, format):
                out.write(chunk)
        copy_dir = tmp_path / f"copy-{format}"
        if catalog.db.is_sqlite:
            elsewhere = {
                "database_url": f"sqlite+aiosqlite:///{copy_dir.as_posix()}/{{service}}.db"
            }
        else:
            prefix = catalog.settings.database_schema_prefix + f"{format}_"
            elsewhere = {"database_schema_prefix": prefix}
        settings = catalog.settings.model_copy(update={"data_dir": copy_dir, **elsewhere})
        async with catalog_runtime(settings) as copy:
            from ecosistema.catalog.demo import _ensure_categories

            await _ensure_categories(copy)
            report = await import_file(copy, exported, format=format, mode="all-or-nothing")
            assert report.applied, report.errors[:3]
            assert report.products_created == 240
            again = tmp_path / f"again.{format}"
            with again.open("wb") as out:
                async for chunk in export_chunks(copy, format):
                    out.write(chunk)
        assert sorted_lines(again) == sorted_lines(exported), format


def sorted_lines(path: Path) -> list[str]:
    """Export order is by product id, which differs between copies; the content must not."""
    return sorted(path.read_text(encoding="utf-8").splitlines())


async def test_import_and_export_over_http(shop_app: FastAPI, shop: httpx.AsyncClient) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    body = "".join(
        json.dumps({"name": f"Poster {n}", "status": "active", "variants": [{"sku": f"P-{n}"}]})
        + "\n"
        for n in range(50)
    )

    refused = await shop.post(
        f"{API}/products/import",
        content=body,
        headers={**customer, "Content-Type": "application/x-ndjson"},
    )
    imported = await shop.post(
        f"{API}/products/import",
        params={"mode": "skip-invalid"},
        content=body + "{broken\n",
        headers={**staff, "Content-Type": "application/x-ndjson"},
    )
    exported = await shop.get(f"{API}/products/export", params={"format": "csv"}, headers=staff)
    unknown_type = await shop.post(
        f"{API}/products/import", content=body, headers={**staff, "Content-Type": "text/plain"}
    )

    assert refused.status_code == 403
    assert imported.status_code == 200, imported.text
    assert imported.json()["products_created"] == 50
    reason = imported.json()["errors"][0]["reason"]
    assert reason.startswith("not JSON: ")
    assert imported.json()["errors"] == [
        {
            "line": 51,
            "reason": reason,
            "sku": None,
            "slug": None,
            "problems": [{"field": None, "reason": reason}],
        }
    ]
    assert exported.headers["content-type"].startswith("text/csv")
    assert len(exported.text.splitlines()) == 51
    assert unknown_type.status_code == 415
    assert unknown_type.json()["type"].endswith("/unsupported-media-type")
    assert "text/plain" in unknown_type.json()["detail"]
    assert ctx_of(shop_app).name == "catalog"


def test_import_command_imports_a_file_and_returns_the_report(tmp_path: Path) -> None:
    from ecosistema.catalog import import_products_command
    from tests.conftest import make_settings

    settings = make_settings("embedded", tmp_path)
    path = write(
        tmp_path,
        "products.csv",
        CSV_HEADER + "lamp,Desk Lamp,,active,,,LAMP-1,,,900,4990,\nbad,,,,,,,,,,,\n",
    )

    report = import_products_command(path, mode="skip-invalid", settings=settings)

    assert (report.products_created, report.variants_written) == (1, 1)
    assert [e.line for e in report.errors] == [3]


async def test_a_product_read_before_an_import_shows_what_the_import_changed(
    catalog: ServiceContext, tmp_path: Path
) -> None:
    header = "slug,name,status,sku,price_EUR\n"
    for mode in ("all-or-nothing", "skip-invalid"):
        slug = f"lamp-{mode}"
        first = await import_file(
            catalog,
            write(tmp_path, "first.csv", f"{header}{slug},Lamp,active,L-{mode},1000\n"),
            format="csv",
            mode=mode,
        )
        assert first.products_created == 1
        page = await catalog_service.search.search_products(
            catalog.db, catalog_service.search.SearchQuery(text=slug)
        )
        product_id = page.items[0].id
        before = await catalog_service.get_product(catalog, product_id)  # cached now

        second = await import_file(
            catalog,
            write(tmp_path, "second.csv", f"{header}{slug},Lamp II,active,L-{mode},1200\n"),
            format="csv",
            mode=mode,
        )

        assert second.products_updated == 1
        after = await catalog_service.get_product(catalog, product_id)
        assert (after.name, after.variants[0].prices[0].amount) == ("Lamp II", 1200), mode
        assert after.updated_at > before.updated_at
