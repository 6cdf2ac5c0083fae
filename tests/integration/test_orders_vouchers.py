"""Vouchers on both shapes: a voucher with a currency applies only to carts in that currency,
and a minimum spend is an amount in the voucher's currency."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import app, guest_cart, seed_shop, settings, staff_tokens

__all__ = ["app", "settings"]


async def _voucher(
    client: httpx.AsyncClient, admin: dict[str, Any], **terms: Any
) -> httpx.Response:
    return await client.post(f"{API}/vouchers", json=terms, headers=bearer(admin))


async def test_a_percentage_voucher_with_a_currency_applies_only_to_carts_in_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-V1": 10})
    created = await _voucher(
        client, admin, code="PCTUSD", kind="percentage", value=500, currency="usd"
    )
    assert created.status_code == 201, created.text
    assert created.json()["currency"] == "USD"
    anywhere = await _voucher(client, admin, code="PCTANY", kind="percentage", value=500)
    assert anywhere.status_code == 201, anywhere.text

    cart_id, token = await guest_cart(client, {"TEE-V1": 1})
    url = f"{API}/carts/{cart_id}/vouchers"
    refused = await client.post(url, json={"code": "PCTUSD"}, headers=token)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "code"
    assert "USD carts" in refused.json()["detail"]
    applied = await client.post(url, json={"code": "PCTANY"}, headers=token)
    assert applied.status_code == 200, applied.text
    assert applied.json()["totals"]["discount_total"] == 100


async def test_a_minimum_spend_needs_a_currency_and_is_counted_in_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-V2": 10})
    refused = await _voucher(
        client, admin, code="VIPANY", kind="percentage", value=2000, minimum_spend=10_000
    )
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["currency"]
    created = await _voucher(
        client,
        admin,
        code="VIPUSD",
        kind="percentage",
        value=2000,
        currency="USD",
        minimum_spend=1000,
    )
    assert created.status_code == 201, created.text

    # EUR 100.00 in the cart: far above USD 10.00 in number, but not in dollars.
    cart_id, token = await guest_cart(client, {"TEE-V2": 5})
    url = f"{API}/carts/{cart_id}/vouchers"
    wrong_currency = await client.post(url, json={"code": "VIPUSD"}, headers=token)
    assert wrong_currency.status_code == 422, wrong_currency.text
    assert "USD carts" in wrong_currency.json()["detail"]
    # The demo's VIP20 is "20 % from EUR 100": it now says so, and applies to this cart.
    vip = await client.get(f"{API}/vouchers/VIP20", headers=bearer(admin))
    assert (vip.json()["currency"], vip.json()["minimum_spend"]) == ("EUR", 10_000)
    applied = await client.post(url, json={"code": "VIP20"}, headers=token)
    assert applied.status_code == 200, applied.text
    assert applied.json()["totals"]["discount_total"] == 2000


async def test_bad_voucher_terms_name_the_field_at_fault(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    cases = [
        ({"code": "F1", "kind": "fixed", "value": 500}, ["currency"]),
        ({"code": "P1", "kind": "percentage", "value": 10_001}, ["value"]),
        (
            {
                "code": "W1",
                "kind": "percentage",
                "value": 1000,
                "starts_at": "2026-12-02T00:00:00Z",
                "ends_at": "2026-12-01T00:00:00Z",
            },
            ["ends_at"],
        ),
        ({"code": "X1", "kind": "percentage", "value": 1000, "currency": "XYZ"}, ["currency"]),
        ({"code": "N1", "kind": "percentage", "value": 1000, "currency": None}, []),
    ]
    for terms, fields in cases:
        response = await _voucher(client, admin, **terms)
        if not fields:
            assert response.status_code == 201, response.text
            continue
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == fields, response.text


async def test_a_flat_shipping_rate_with_a_weight_limit_names_the_bracket(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    method = {"code": "flatbad", "name": "Flat", "kind": "flat"}
    limited = await client.post(
        f"{API}/shipping-methods",
        json={**method, "rates": {"eur": [{"up_to_grams": 1000, "amount": 495}]}},
        headers=bearer(admin),
    )
    assert limited.status_code == 422, limited.text
    assert [e["field"] for e in limited.json()["errors"]] == ["rates.EUR.0.up_to_grams"]
    two = await client.post(
        f"{API}/shipping-methods",
        json={**method, "rates": {"EUR": [{"amount": 495}, {"amount": 595}]}},
        headers=bearer(admin),
    )
    assert two.status_code == 422, two.text
    assert [e["field"] for e in two.json()["errors"]] == ["rates.EUR"]
