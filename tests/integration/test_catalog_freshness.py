"""How long cached catalog reads stay true: a scheduled sale bounds what shared caches may keep,
and a write made by another process on the same database reaches this process's cache."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import httpx
import pytest

from ecosistema.catalog.schemas import ProductUpdate, VariantUpdate
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.runtime import Runtime
from ecosistema.platform.service import ServiceContext
from ecosistema.services import load_services
from tests.integration.test_catalog_support import (
    API,
    catalog_service,
    ctx_of,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
)


def shared_cache_seconds(response: httpx.Response) -> int | None:
    found = re.search(r"s-maxage=(\d+)", response.headers["cache-control"])
    return int(found.group(1)) if found else None


async def test_a_scheduled_sale_bounds_how_long_shared_caches_keep_products_and_lists(
    shop_app: object, shop: httpx.AsyncClient
) -> None:
    ctx = ctx_of(shop_app)  # type: ignore[arg-type]
    plain = await make_product(ctx, "Plain Mug", skus={"MUG-1": 1200})
    lamp = await make_product(ctx, "Desk Lamp", skus={"LAMP-1": 4990})

    before = await shop.get(f"{API}/products/{plain.id}")
    listed_before = await shop.get(f"{API}/products")
    assert shared_cache_seconds(before) is None
    assert shared_cache_seconds(listed_before) is None

    starts = utcnow() + timedelta(hours=1)
    sale = {"currency": "EUR", "amount": 3990, "starts_at": starts.isoformat()}
    await catalog_service.update_variant(
        ctx, lamp.id, lamp.variants[0].id, VariantUpdate.model_validate({"sale_prices": [sale]})
    )
    product = await shop.get(f"{API}/products/{lamp.id}")
    listed = await shop.get(f"{API}/products")
    untouched = await shop.get(f"{API}/products/{plain.id}")

    for response in (product, listed):
        assert response.status_code == 200
        seconds = shared_cache_seconds(response)
        assert seconds is not None and 3500 <= seconds <= 3600, response.headers
        assert response.headers["cache-control"].startswith("public, no-cache")
    # A product whose own prices do not change keeps no bound of its own.
    assert shared_cache_seconds(untouched) is None


async def test_a_write_by_another_process_reaches_this_processs_cache(
    shape: str, settings: Settings
) -> None:
    if shape != "embedded":
        pytest.skip("a shared cache (Redis) is cleared by the writing process itself")
    platform = Runtime(settings, load_services(["catalog"]))
    await platform.start()  # with its relay, as the running platform has
    try:
        ctx: ServiceContext = platform.contexts["catalog"]
        product = await make_product(ctx, "Tea Pot", skus={"POT-1": 2500})
        cached = await catalog_service.product_document(ctx, product.id)
        assert b"Tea Pot" in cached.body

        # Another process (``ecosistema catalog import``, say): its own runtime and cache.
        other = Runtime(settings, load_services(["catalog"]))
        await other.start(background=False)
        try:
            await catalog_service.update_product(
                other.contexts["catalog"], product.id, ProductUpdate(name="Teapot, glass")
            )
        finally:
            await other.stop()

        # The platform relays the other process's event from the shared outbox; its cache of
        # the product (kept for minutes otherwise) is cleared by it.
        for _ in range(100):
            seen = await catalog_service.product_document(ctx, product.id)
            if b"Teapot, glass" in seen.body:
                break
            await asyncio.sleep(0.1)
        assert b"Teapot, glass" in seen.body
    finally:
        await platform.stop()
