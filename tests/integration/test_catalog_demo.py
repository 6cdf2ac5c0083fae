"""Catalog's demo seed: created once, and never a hand on the merchant's data afterwards."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.demo import seed_demo
from ecosistema.catalog.models import sale_prices, stock, stock_movements, variants
from ecosistema.catalog.schemas import PriceListPrice, VariantUpdate
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.platform.service import ServiceContext
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_catalog_support import (
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_service,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
)


async def _snapshot(ctx: ServiceContext, price_list_id: str) -> dict[str, Any]:
    async with ctx.db.read() as session:
        return {
            "stock": sorted(
                tuple(r) for r in (await session.execute(select(stock.c.sku, stock.c.on_hand)))
            ),
            "movements": await session.scalar(select(func.count()).select_from(stock_movements)),
            "sales": sorted(
                tuple(r)
                for r in (
                    await session.execute(select(sale_prices.c.variant_id, sale_prices.c.amount))
                )
            ),
            "wholesale": await catalog_service.get_price_list_prices(ctx, price_list_id),
        }


async def test_seeding_the_demo_again_leaves_the_merchants_data_alone(
    catalog: ServiceContext,
) -> None:
    first = await seed_demo(catalog)
    price_list_id = first["price_lists"]["wholesale"]
    merchant = await make_product(catalog, "Merchant Mug", skus={"MUG-1": 1200})
    demo_prices = await catalog_service.get_price_list_prices(catalog, price_list_id)
    edited = [demo_prices[0].model_copy(update={"amount": 5}), *demo_prices[1:3]]
    await catalog_service.set_price_list_prices(catalog, price_list_id, edited)
    demo_variant = await _variant_of_sku(catalog, edited[0].sku)
    await catalog_service.update_variant(
        catalog,
        demo_variant[0],
        demo_variant[1],
        VariantUpdate.model_validate({"prices": [{"currency": "EUR", "amount": 777}]}),
    )
    before = await _snapshot(catalog, price_list_id)

    again = await seed_demo(catalog)

    after = await _snapshot(catalog, price_list_id)
    assert again["price_lists"]["wholesale"] == price_list_id
    assert after == before
    assert after["wholesale"] == [
        PriceListPrice(sku=e.sku, currency=e.currency, amount=e.amount) for e in edited
    ]
    assert not any(sku == "MUG-1" for sku, _ in after["stock"])
    product = await catalog_service.get_product(catalog, merchant.id)
    assert [v.sku for v in product.variants] == ["MUG-1"]
    demo_product = await catalog_service.get_product(catalog, demo_variant[0])
    (kept,) = [v for v in demo_product.variants if v.id == demo_variant[1]]
    assert [(p.currency, p.amount) for p in kept.prices] == [("EUR", 777)]


async def test_demo_seed_gives_stock_and_sales_only_to_demo_skus(catalog: ServiceContext) -> None:
    merchant = await make_product(catalog, "Merchant Mug", skus={"MUG-1": 1200})

    seeded = await seed_demo(catalog)

    async with catalog.db.read() as session:
        stocked = set((await session.scalars(select(stock.c.sku))).all())
        on_sale = set(
            (
                await session.scalars(
                    select(variants.c.sku).join(
                        sale_prices, sale_prices.c.variant_id == variants.c.id
                    )
                )
            ).all()
        )
    wholesale = await catalog_service.get_price_list_prices(
        catalog, seeded["price_lists"]["wholesale"]
    )
    assert "MUG-1" not in stocked
    assert len(stocked) == seeded["variants"]
    assert len(on_sale) == 30 and "MUG-1" not in on_sale
    assert "MUG-1" not in {p.sku for p in wholesale}
    assert [v.sku for v in (await catalog_service.get_product(catalog, merchant.id)).variants] == [
        "MUG-1"
    ]


async def _variant_of_sku(ctx: ServiceContext, sku: str) -> tuple[str, str]:
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                select(variants.c.product_id, variants.c.id).where(variants.c.sku == sku)
            )
        ).one()
    return str(row.product_id), str(row.id)


async def test_the_demo_wholesale_account_pays_wholesale_prices_and_the_demo_customer_does_not(
    settings: Settings,
) -> None:
    from ecosistema.identity import seed_demo as seed_identity_demo
    from ecosistema.identity import service as identity

    runtime = Runtime(settings, load_services(["identity", "catalog"]))
    await runtime.start(background=False)
    try:
        accounts = await seed_identity_demo(runtime.contexts["identity"])
        catalog = runtime.contexts["catalog"]
        seeded = await seed_demo(catalog)
        again = await seed_demo(catalog)

        found = {
            name: await identity.find_user_by_email(
                runtime.contexts["identity"], email=accounts[name]["email"]
            )
            for name in ("wholesale", "customer")
        }
        trade, regular = (found["wholesale"], found["customer"])
        assert trade is not None and regular is not None
        assert str(trade.role) == "customer"
        price_list_id = seeded["price_lists"]["wholesale"]
        assert again["price_lists"]["wholesale"] == price_list_id
        assert await catalog_service.get_price_list_customers(catalog, price_list_id) == [trade.id]
        listed = await catalog_service.get_price_list_prices(catalog, price_list_id)
        skus = sorted({p.sku for p in listed if p.currency == "EUR"})[:20]
        client = InProcessCatalogClient(catalog)
        for_trade = await client.quote(skus, currency="EUR", customer_id=trade.id)
        for_regular = await client.quote(skus, currency="EUR", customer_id=regular.id)
        # A running sale may be lower than both; otherwise the trade buyer pays 80 %.
        assert all(for_trade[s].unit_price <= for_regular[s].unit_price for s in skus)
        assert any(for_trade[s].unit_price < for_regular[s].unit_price for s in skus)
    finally:
        await runtime.stop()
        await drop_test_schemas(settings)
