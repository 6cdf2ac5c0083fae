"""Catalog's Alembic migration builds exactly the tables its models declare, plus the search
index of the dialect (FTS5 on SQLite, a tsvector column on PostgreSQL), on both shapes."""

from __future__ import annotations

import importlib
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ecosistema.catalog.models import metadata
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database

catalog = importlib.import_module("ecosistema.catalog").descriptor


def _search_artifact(object_: Any, name: str | None, type_: str, *_: Any) -> bool:
    # The FTS5 table (and its shadow tables) and the tsvector column live outside the metadata.
    if type_ == "table" and name and name.startswith("product_search"):
        return False
    return name not in ("search_vector", "ix_products_search_vector")


async def test_migration_creates_the_models_tables_and_the_search_index(
    settings: Settings,
) -> None:
    db = Database(
        "catalog",
        settings.database_url_for("catalog"),
        schema_prefix=settings.database_schema_prefix,
    )
    try:
        await db.migrate(catalog.migrations)
        await db.migrate(catalog.migrations)  # a second run is a no-op

        def _diff(conn: Connection) -> tuple[list[Any], set[str], list[str]]:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_schemas": False,
                    "include_object": _search_artifact,
                },
            )
            inspector = inspect(conn)
            tables = set(inspector.get_table_names(schema=db.schema))
            columns = [c["name"] for c in inspector.get_columns("products", schema=db.schema)]
            return compare_metadata(context, metadata), tables, columns

        async with db.engine.connect() as conn:
            diff, tables, columns = await conn.run_sync(_diff)
            if db.is_sqlite:
                kind = await conn.scalar(
                    text("SELECT sql FROM sqlite_master WHERE name = 'product_search'")
                )
                assert "fts5" in str(kind)
            else:
                assert "search_vector" in columns
        assert diff == []
        assert set(metadata.tables) <= tables
    finally:
        await db.drop_schema()
        await db.dispose()


async def test_search_folding_migration_writes_every_products_search_text_again(
    settings: Settings,
) -> None:
    from datetime import UTC, datetime

    from ecosistema.catalog.models import products, variants
    from ecosistema.catalog.search import SearchQuery, search_products
    from tests.integration.migration_support import downgrade

    db = Database(
        "catalog",
        settings.database_url_for("catalog"),
        schema_prefix=settings.database_schema_prefix,
    )
    now = datetime(2026, 11, 1, tzinfo=UTC)
    try:
        await db.migrate(catalog.migrations)
        await downgrade(db, catalog.migrations, "0003_catalog_updated_at")
        # A product written before: its search text as it was then, without folded words.
        async with db.transaction() as session:
            for n, name in enumerate(["Straßenschuh", "東京タワー"]):
                await session.execute(
                    products.insert().values(
                        id=f"p{n}",
                        slug=f"p{n}",
                        name=name,
                        description="",
                        status="active",
                        images=[],
                        search_text=f"OLD-{n}",
                        created_at=now,
                        updated_at=now,
                    )
                )
                await session.execute(
                    variants.insert().values(
                        id=f"v{n}",
                        product_id=f"p{n}",
                        sku=f"OLD-{n}",
                        name=name,
                        options={},
                        created_at=now,
                        updated_at=now,
                    )
                )
                if db.is_sqlite:
                    await session.execute(
                        text(
                            "INSERT INTO product_search (product_id, name, search_text, "
                            "description) VALUES (:pid, :name, :words, '')"
                        ),
                        {"pid": f"p{n}", "name": name, "words": f"OLD-{n}"},
                    )
        before = await search_products(db, SearchQuery(text="strassen"))
        assert before.items == []

        await db.migrate(catalog.migrations)

        for query, found in (("strassen", "Straßenschuh"), ("タワー", "東京タワー")):
            page = await search_products(db, SearchQuery(text=query))
            assert [p.name for p in page.items] == [found], query
        assert [p.name for p in (await search_products(db, SearchQuery(text="old"))).items]
    finally:
        await db.drop_schema()
        await db.dispose()
