"""Prices on both shapes: quotes with base prices, customer price lists, scheduled sales and
the channel's tax setting; price lists managed over HTTP by staff."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.schemas import PriceListCreate, PriceListPrice, VariantUpdate
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import Unprocessable
from ecosistema.platform.service import ServiceContext
from tests.integration.test_catalog_support import (
    API,
    catalog_fixture,  # noqa: F401 - a fixture
    catalog_runtime,
    catalog_service,
    ctx_of,
    make_product,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)


async def test_quote_gives_base_price_weight_availability_and_omits_unknown_skus(
    catalog: ServiceContext,
) -> None:
    product = await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})
    await make_product(catalog, "Draft Lamp", skus={"LAMP-D": 100}, status="draft")

    quotes = await InProcessCatalogClient(catalog).quote(
        ["LAMP-1", "LAMP-D", "NOPE"], currency="EUR"
    )

    assert set(quotes) == {"LAMP-1", "LAMP-D"}
    lamp = quotes["LAMP-1"]
    assert (lamp.product_id, lamp.product_name, lamp.unit_price) == (product.id, "Desk Lamp", 4990)
    assert (lamp.available, lamp.purchasable, lamp.tax_inclusive) == (0, True, True)
    assert quotes["LAMP-D"].purchasable is False


async def test_quote_without_a_price_in_the_currency_is_not_purchasable(
    catalog: ServiceContext,
) -> None:
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})

    quote = (await InProcessCatalogClient(catalog).quote(["LAMP-1"], currency="USD"))["LAMP-1"]

    assert (quote.unit_price, quote.purchasable) == (0, False)
    with pytest.raises(Unprocessable):
        await InProcessCatalogClient(catalog).quote(["LAMP-1"], currency="EURO")


async def test_a_price_list_price_without_a_regular_price_does_not_make_a_variant_purchasable(
    catalog: ServiceContext,
) -> None:
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})
    wholesale = await catalog_service.create_price_list(
        catalog, PriceListCreate(code="wholesale", name="Wholesale")
    )
    await catalog_service.set_price_list_prices(
        catalog, wholesale.id, [PriceListPrice(sku="LAMP-1", currency="USD", amount=50)]
    )
    await catalog_service.set_price_list_customers(catalog, wholesale.id, ["buyer-1"])

    quote = (
        await InProcessCatalogClient(catalog).quote(
            ["LAMP-1"], currency="USD", customer_id="buyer-1"
        )
    )["LAMP-1"]

    assert (quote.unit_price, quote.purchasable, quote.reason) == (0, False, "not_priced")


async def test_scheduled_sale_applies_only_inside_its_window(catalog: ServiceContext) -> None:
    product = await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})
    now = utcnow()
    await catalog_service.update_variant(
        catalog,
        product.id,
        product.variants[0].id,
        VariantUpdate.model_validate(
            {
                "sale_prices": [
                    {
                        "currency": "EUR",
                        "amount": 3990,
                        "starts_at": (now + timedelta(days=1)).isoformat(),
                        "ends_at": (now + timedelta(days=2)).isoformat(),
                    }
                ]
            }
        ),
    )
    client = InProcessCatalogClient(catalog)

    today = await client.quote(["LAMP-1"], currency="EUR", at=now)
    during = await client.quote(["LAMP-1"], currency="EUR", at=now + timedelta(days=1, hours=1))
    after = await client.quote(["LAMP-1"], currency="EUR", at=now + timedelta(days=2))

    assert [q["LAMP-1"].unit_price for q in (today, during, after)] == [4990, 3990, 4990]


async def test_customer_price_list_applies_to_assigned_customers_and_a_lower_sale_wins(
    catalog: ServiceContext,
) -> None:
    product = await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990, "LAMP-2": 5990})
    wholesale = await catalog_service.create_price_list(
        catalog, PriceListCreate(code="wholesale", name="Wholesale")
    )
    await catalog_service.set_price_list_prices(
        catalog,
        wholesale.id,
        [
            PriceListPrice(sku="LAMP-1", currency="EUR", amount=3500),
            PriceListPrice(sku="LAMP-2", currency="EUR", amount=4500),
        ],
    )
    await catalog_service.set_price_list_customers(catalog, wholesale.id, ["buyer-1"])
    await catalog_service.update_variant(
        catalog,
        product.id,
        product.variants[1].id,
        VariantUpdate.model_validate({"sale_prices": [{"currency": "EUR", "amount": 3000}]}),
    )
    client = InProcessCatalogClient(catalog)

    retail = await client.quote(["LAMP-1", "LAMP-2"], currency="EUR", customer_id="someone")
    trade = await client.quote(["LAMP-1", "LAMP-2"], currency="EUR", customer_id="buyer-1")

    assert [retail[s].unit_price for s in ("LAMP-1", "LAMP-2")] == [4990, 3000]
    assert [trade[s].unit_price for s in ("LAMP-1", "LAMP-2")] == [3500, 3000]


async def test_channel_setting_decides_whether_prices_include_tax(settings: Settings) -> None:
    b2b = settings.model_copy(
        update={"sales_channel": "b2b", "channel_prices_include_tax": {"b2b": False}}
    )
    async with catalog_runtime(b2b) as catalog:
        await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})

        quotes = await InProcessCatalogClient(catalog).quote(["LAMP-1"], currency="EUR")

        assert quotes["LAMP-1"].tax_inclusive is False
        assert catalog_service.channel_prices_include_tax(catalog, "web") is True


async def _user_id(shop: httpx.AsyncClient, who: dict[str, str]) -> str:
    return str((await shop.get(f"{API}/users/me", headers=who)).json()["id"])


async def test_a_price_list_takes_only_customers_identity_knows(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    buyer = await _user_id(shop, await sign_in_demo(shop_app, shop, "customer"))
    created = await shop.post(
        f"{API}/price-lists", json={"code": "wholesale", "name": "Wholesale"}, headers=staff
    )
    url = f"{API}/price-lists/{created.json()['id']}/customers"
    assert (await shop.put(url, json={"customer_ids": [buyer]}, headers=staff)).status_code == 200

    refused = await shop.put(
        url, json={"customer_ids": ["nobody-1", buyer, "no/body?2"]}, headers=staff
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert [(e["field"], e["code"]) for e in refused.json()["errors"]] == [
        ("customer_ids.0", "not_found"),
        ("customer_ids.2", "not_found"),
    ]
    assert (await shop.get(url, headers=staff)).json() == {"customer_ids": [buyer]}


async def test_staff_manage_price_lists_over_http(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    await shop.post(
        f"{API}/products",
        json={
            "name": "Desk Lamp",
            "status": "active",
            "variants": [{"sku": "LAMP-1", "prices": [{"currency": "EUR", "amount": 4990}]}],
        },
        headers=staff,
    )

    created = await shop.post(
        f"{API}/price-lists", json={"code": "wholesale", "name": "Wholesale"}, headers=staff
    )
    list_id = created.json()["id"]
    prices = await shop.put(
        f"{API}/price-lists/{list_id}/prices",
        json={"prices": [{"sku": "LAMP-1", "currency": "EUR", "amount": 3900}]},
        headers=staff,
    )
    unknown = await shop.put(
        f"{API}/price-lists/{list_id}/prices",
        json={"prices": [{"sku": "NOPE", "currency": "EUR", "amount": 1}]},
        headers=staff,
    )
    buyers = sorted([await _user_id(shop, customer), await _user_id(shop, staff)])
    customers = await shop.put(
        f"{API}/price-lists/{list_id}/customers", json={"customer_ids": buyers}, headers=staff
    )
    listed = await shop.get(f"{API}/price-lists", headers=staff)

    assert created.status_code == 201
    assert prices.json() == [{"sku": "LAMP-1", "currency": "EUR", "amount": 3900}]
    assert unknown.status_code == 422
    assert customers.json() == {"customer_ids": buyers}
    assert [(p["code"], p["customer_count"]) for p in listed.json()] == [("wholesale", 2)]
    assert (await shop.get(f"{API}/price-lists", headers=customer)).status_code == 403
    duplicate = await shop.post(
        f"{API}/price-lists", json={"code": "wholesale", "name": "Again"}, headers=staff
    )
    assert duplicate.status_code == 409


async def test_staff_delete_a_price_list_and_its_customers_pay_regular_prices(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    catalog = ctx_of(shop_app)
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 4990})
    created = await shop.post(
        f"{API}/price-lists", json={"code": "wholesale", "name": "Wholesale"}, headers=staff
    )
    list_id = created.json()["id"]
    await shop.put(
        f"{API}/price-lists/{list_id}/prices",
        json={"prices": [{"sku": "LAMP-1", "currency": "EUR", "amount": 3900}]},
        headers=staff,
    )
    buyer = await _user_id(shop, customer)
    await shop.put(
        f"{API}/price-lists/{list_id}/customers", json={"customer_ids": [buyer]}, headers=staff
    )

    forbidden = await shop.delete(f"{API}/price-lists/{list_id}", headers=customer)
    deleted = await shop.delete(f"{API}/price-lists/{list_id}", headers=staff)
    again = await shop.delete(f"{API}/price-lists/{list_id}", headers=staff)

    assert forbidden.status_code == 403
    assert deleted.status_code == 204, deleted.text
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")
    assert (await shop.get(f"{API}/price-lists/{list_id}", headers=staff)).status_code == 404
    assert (await shop.get(f"{API}/price-lists", headers=staff)).json() == []
    quote = await InProcessCatalogClient(catalog).quote(
        ["LAMP-1"], currency="EUR", customer_id=buyer
    )
    assert quote["LAMP-1"].unit_price == 4990
    recreated = await shop.post(
        f"{API}/price-lists", json={"code": "wholesale", "name": "Wholesale"}, headers=staff
    )
    assert recreated.status_code == 201
    assert (
        await shop.get(f"{API}/price-lists/{recreated.json()['id']}/customers", headers=staff)
    ).json() == {"customer_ids": []}


async def test_a_customer_quoting_without_customer_id_gets_their_own_price_list(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    catalog = ctx_of(shop_app)
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 1234})
    trade = await catalog_service.create_price_list(
        catalog, PriceListCreate(code="trade", name="Trade")
    )
    await catalog_service.set_price_list_prices(
        catalog, trade.id, [PriceListPrice(sku="LAMP-1", currency="EUR", amount=700)]
    )
    buyer = await _user_id(shop, customer)
    await catalog_service.set_price_list_customers(catalog, trade.id, [buyer])
    body = {"currency": "EUR", "skus": ["LAMP-1"]}

    own = await shop.post(f"{API}/quotes", json=body, headers=customer)
    named = await shop.post(f"{API}/quotes", json={**body, "customer_id": buyer}, headers=customer)
    by_staff = await shop.post(f"{API}/quotes", json=body, headers=staff)
    for_buyer = await shop.post(f"{API}/quotes", json={**body, "customer_id": buyer}, headers=staff)
    for_someone_else = await shop.post(
        f"{API}/quotes", json={**body, "customer_id": "someone-else"}, headers=customer
    )

    assert own.status_code == 200, own.text
    assert own.json()["LAMP-1"]["unit_price"] == 700
    assert named.json()["LAMP-1"]["unit_price"] == 700
    assert by_staff.json()["LAMP-1"]["unit_price"] == 1234
    assert for_buyer.json()["LAMP-1"]["unit_price"] == 700
    assert for_someone_else.status_code == 403


async def test_a_customer_quoting_a_draft_sku_hears_what_an_unknown_sku_gets(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = await sign_in_demo(shop_app, shop, "staff")
    customer = await sign_in_demo(shop_app, shop, "customer")
    catalog = ctx_of(shop_app)
    await make_product(catalog, "Desk Lamp", skus={"LAMP-1": 1234})
    await make_product(catalog, "Secret Lamp", skus={"LAMP-NEXT": 4000}, status="draft")
    await make_product(catalog, "Old Lamp", skus={"LAMP-OLD": 900}, status="archived")

    def quote(skus: list[str], headers: dict[str, str]) -> Any:
        return shop.post(f"{API}/quotes", json={"currency": "EUR", "skus": skus}, headers=headers)

    draft = await quote(["LAMP-NEXT"], customer)
    unknown = await quote(["NOPE"], customer)
    mixed = await quote(["LAMP-1", "LAMP-NEXT", "LAMP-OLD"], customer)
    by_staff = await quote(["LAMP-1", "LAMP-NEXT", "LAMP-OLD"], staff)

    assert draft.status_code == unknown.status_code == 200, draft.text
    assert draft.json() == unknown.json() == {}
    assert "LAMP-NEXT" not in mixed.text and "Secret" not in mixed.text
    # Archived products were on sale once: a buyer is told they are no longer sold, as carts do.
    assert {sku: q["reason"] for sku, q in mixed.json().items()} == {
        "LAMP-1": None,
        "LAMP-OLD": "archived",
    }
    assert {sku: q["reason"] for sku, q in by_staff.json().items()} == {
        "LAMP-1": None,
        "LAMP-NEXT": "draft",
        "LAMP-OLD": "archived",
    }
