"""A product insert that loses a race for its slug or a SKU answers the specific conflict, on
both shapes; the race itself is played on PostgreSQL, where two writers can interleave."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert

from ecosistema.catalog.models import products
from ecosistema.catalog.schemas import ProductCreate
from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.errors import Conflict, ProblemError
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    variant,
)


def _draft(name: str, *, slug: str | None = None, skus: tuple[str, ...] = ()) -> ProductCreate:
    body: dict[str, Any] = {"name": name, "variants": [variant(sku, 1000) for sku in skus]}
    if slug is not None:
        body["slug"] = slug
    return ProductCreate.model_validate(body)


async def _answer(ctx: ServiceContext, data: ProductCreate, slug: str | None) -> Conflict:
    result: Conflict = await catalog_service._create_race_conflict(ctx, data, slug)
    return result


async def test_a_lost_race_names_the_slug_or_skus_now_taken(catalog: ServiceContext) -> None:
    await make_product(catalog, "Desk Lamp", slug="desk-lamp", skus={"LAMP-1": 3000})

    sku = await _answer(catalog, _draft("Other", skus=("X-1", "LAMP-1")), "other")
    assert (sku.status, sku.type, sku.title) == (409, "sku-taken", "SKU already in use")
    assert sku.extra["skus"] == ["LAMP-1"]
    assert [e["field"] for e in sku.extra["errors"]] == ["variants.1.sku"]

    given = await _answer(catalog, _draft("Other", slug="desk-lamp"), "desk-lamp")
    assert (given.type, given.title) == ("slug-taken", "Slug already in use")
    assert given.extra["errors"][0]["field"] == "slug"

    made = await _answer(catalog, _draft("Desk Lamp"), "desk-lamp")
    assert (made.type, made.title) == ("slug-taken", "Slug already in use")
    assert "made from the name" in made.detail

    free = await _answer(catalog, _draft("Floor Lamp", skus=("FLOOR-1",)), "floor-lamp")
    assert (free.status, free.type) == (409, "product-conflict")
    assert free.title == "Product conflicts with a concurrent change"


async def test_a_slug_taken_between_the_check_and_the_insert_is_a_slug_taken_conflict(
    catalog: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not catalog.settings.database_url_for("catalog").startswith("postgresql"):
        pytest.skip("one process's SQLite writers queue, so they cannot interleave")
    real_check = catalog_service._check_category

    async def check_then_lose_the_race(session: Any, category_id: str | None) -> None:
        await real_check(session, category_id)
        # Another writer commits a product with the same slug on its own connection.
        now = utcnow()
        async with catalog.db.engine.begin() as other:
            await other.execute(
                insert(products).values(
                    id=new_id(),
                    slug="desk-lamp",
                    name="Desk Lamp",
                    description="",
                    status="draft",
                    images=[],
                    search_text="",
                    created_at=now,
                    updated_at=now,
                )
            )

    monkeypatch.setattr(catalog_service, "_check_category", check_then_lose_the_race)
    with pytest.raises(ProblemError) as lost:
        await catalog_service.create_product(
            catalog, _draft("Desk Lamp", slug="desk-lamp", skus=("LAMP-1",))
        )
    assert (lost.value.status, lost.value.type, lost.value.title) == (
        409,
        "slug-taken",
        "Slug already in use",
    )
