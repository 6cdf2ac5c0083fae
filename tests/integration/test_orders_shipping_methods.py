"""PATCH /shipping-methods/{code} on both shapes: every field creation takes, checked by the same
rules against the method as it would be after the change; null is no value for any of them.
Carts are priced with the rates of now, orders keep the rates they were placed with."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    customer,
    guest_cart,
    place_guest_order,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def _patch(
    client: httpx.AsyncClient, admin: dict[str, Any], code: str, body: Any
) -> httpx.Response:
    return await client.patch(f"{API}/shipping-methods/{code}", json=body, headers=bearer(admin))


def _fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


async def _method(client: httpx.AsyncClient, code: str) -> dict[str, Any]:
    listed = await client.get(f"{API}/shipping-methods")
    [method] = [m for m in listed.json() if m["code"] == code]
    return method


async def test_a_shipping_method_takes_new_rates_countries_kind_and_name(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})

    cheaper = await _patch(client, admin, "standard", {"rates": {"eur": [{"amount": 100}]}})
    assert cheaper.status_code == 200, cheaper.text
    assert cheaper.json()["rates"] == {"EUR": [{"up_to_grams": None, "amount": 100}]}
    assert cheaper.json()["kind"] == "flat" and cheaper.json()["name"] == "Standard (3-5 days)"

    everything = await _patch(
        client,
        admin,
        "standard",
        {
            "name": "Standard by weight",
            "kind": "weight",
            "rates": {
                "EUR": [{"up_to_grams": 2000, "amount": 300}, {"amount": 900}],
                "USD": [{"amount": 700}],
            },
            "countries": ["es", "PT"],
            "active": True,
        },
    )
    assert everything.status_code == 200, everything.text
    assert everything.json() == {
        "code": "standard",
        "name": "Standard by weight",
        "kind": "weight",
        "rates": {
            "EUR": [{"up_to_grams": 2000, "amount": 300}, {"up_to_grams": None, "amount": 900}],
            "USD": [{"up_to_grams": None, "amount": 700}],
        },
        "countries": ["ES", "PT"],
        "active": True,
    }
    assert await _method(client, "standard") == everything.json()

    anywhere = await _patch(client, admin, "standard", {"countries": []})
    assert anywhere.status_code == 200 and anywhere.json()["countries"] == []
    missing = await _patch(client, admin, "nowhere", {"rates": {"EUR": [{"amount": 1}]}})
    assert missing.status_code == 404, missing.text


async def test_patched_rates_are_checked_as_creation_checks_them(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    before = await _method(client, "express")

    cases: list[tuple[dict[str, Any], str]] = [
        ({"rates": {"XYZ": [{"amount": 1}]}}, "rates"),
        ({"rates": {}}, "rates"),
        ({"rates": {"EUR": []}}, "rates.EUR"),
        ({"rates": {"EUR": [{"amount": 1}] * 51}}, "rates.EUR"),
        ({"rates": {"EUR": [{"amount": -1}]}}, "rates.EUR.0.amount"),
        ({"rates": {"EUR": [{"up_to_grams": 0, "amount": 1}]}}, "rates.EUR.0.up_to_grams"),
        ({"rates": {"EUR": [{"amount": 1, "price": 1}]}}, "rates.EUR.0.price"),
        ({"countries": ["ES", "QQ"]}, "countries"),
        ({"kind": "parcel"}, "kind"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "Express\u202e"}, "name"),
        ({"rates": {"EUR": [{"amount": 1}, {"amount": 2}]}}, "rates.EUR"),
        (
            {"rates": {"EUR": [{"up_to_grams": 500, "amount": 1}] * 2 + [{"amount": 3}]}},
            "rates.EUR",
        ),
        ({"code": "renamed"}, "code"),
    ]
    for body, field in cases:
        assert _fields(await _patch(client, admin, "express", body)) == [field], body
    assert await _method(client, "express") == before


async def test_a_currency_without_brackets_is_named_at_creation(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    for rates in ({"EUR": []}, {"EUR": [{"amount": 1}] * 51}):
        method = {"code": "bare", "name": "Bare", "kind": "weight", "rates": rates}
        refused = await client.post(f"{API}/shipping-methods", json=method, headers=bearer(admin))
        assert refused.status_code == 422
        assert [(e["field"], e["message"]) for e in refused.json()["errors"]] == [
            ("rates.EUR", "give between 1 and 50 brackets")
        ]


async def test_a_flat_rate_stays_one_open_bracket_whichever_field_changes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    express, standard = await _method(client, "express"), await _method(client, "standard")

    # express has three brackets per currency: it cannot become flat as it is.
    flat = await _patch(client, admin, "express", {"kind": "flat"})
    assert _fields(flat) == ["kind"]
    assert "one bracket with no weight limit" in flat.json()["errors"][0]["message"]
    assert "EUR" in flat.json()["errors"][0]["message"]
    # standard is flat: more brackets, or a weight limit, are refused where they are given.
    several = {"rates": {"EUR": [{"up_to_grams": 500, "amount": 1}, {"amount": 2}]}}
    assert _fields(await _patch(client, admin, "standard", several)) == ["rates.EUR"]
    limited = {"rates": {"EUR": [{"up_to_grams": 500, "amount": 1}]}}
    assert _fields(await _patch(client, admin, "standard", limited)) == ["rates.EUR.0.up_to_grams"]
    both = await _patch(client, admin, "express", {"kind": "flat", **several})
    assert _fields(both) == ["rates.EUR"]
    assert await _method(client, "express") == express
    assert await _method(client, "standard") == standard

    # Kind and rates changed together, consistently, are taken.
    made_flat = await _patch(
        client, admin, "express", {"kind": "flat", "rates": {"EUR": [{"amount": 800}]}}
    )
    assert made_flat.status_code == 200, made_flat.text
    assert made_flat.json()["kind"] == "flat"
    assert made_flat.json()["rates"] == {"EUR": [{"up_to_grams": None, "amount": 800}]}
    by_weight = await _patch(client, admin, "standard", {"kind": "weight"})
    assert by_weight.status_code == 200 and by_weight.json()["kind"] == "weight"


@pytest.mark.parametrize("field", ["name", "kind", "rates", "countries", "active"])
async def test_null_is_refused_for_every_shipping_method_field(
    app: FastAPI, client: httpx.AsyncClient, field: str
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    before = await _method(client, "standard")
    refused = await _patch(client, admin, "standard", {field: None})
    assert _fields(refused) == [field]
    assert refused.json()["errors"][0]["message"] == "must not be null"
    assert await _method(client, "standard") == before


async def test_carts_take_new_rates_and_orders_keep_theirs(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-SM": 10})
    order = await place_guest_order(client, {"TEE-SM": 1})
    assert order["shipping_method"] == "standard" and order["shipping_total"] == 495
    cart_id, headers = await guest_cart(client, {"TEE-SM": 1})
    cart = await client.patch(
        f"{API}/carts/{cart_id}", json={"shipping_method": "standard"}, headers=headers
    )
    assert cart.status_code == 200, cart.text
    assert cart.json()["totals"]["shipping_total"] == 495

    changed = await _patch(client, admin, "standard", {"rates": {"EUR": [{"amount": 100}]}})
    assert changed.status_code == 200, changed.text

    repriced = await client.get(f"{API}/carts/{cart_id}", headers=headers)
    assert repriced.json()["totals"]["shipping_total"] == 100
    kept = await client.get(f"{API}/orders/{order['id']}", headers=bearer(admin))
    assert kept.json()["shipping_total"] == 495 and kept.json()["total"] == order["total"]
    later = await place_guest_order(client, {"TEE-SM": 1})
    assert later["shipping_total"] == 100
    assert later["total"] == order["total"] - 395


async def test_countries_are_kept_once_each_in_the_order_first_given(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})

    patched = await _patch(client, admin, "express", {"countries": ["pt", "es", "ES", "PT", "fr"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["countries"] == ["PT", "ES", "FR"]
    assert (await _method(client, "express"))["countries"] == ["PT", "ES", "FR"]

    created = await client.post(
        f"{API}/shipping-methods",
        json={
            "code": "pickup",
            "name": "Pickup",
            "kind": "flat",
            "rates": {"EUR": [{"amount": 0}]},
            "countries": ["es", "ES", "es"],
        },
        headers=bearer(admin),
    )
    assert created.status_code == 201, created.text
    assert created.json()["countries"] == ["ES"]


async def test_staff_list_inactive_shipping_methods_and_no_one_else_may(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    off = await _patch(client, admin, "express", {"active": False})
    assert off.status_code == 200, off.text

    listed = await client.get(f"{API}/shipping-methods")
    assert listed.status_code == 200, listed.text
    assert "express" not in [m["code"] for m in listed.json()]
    everything = await client.get(
        f"{API}/shipping-methods", params={"include_inactive": "true"}, headers=bearer(admin)
    )
    assert everything.status_code == 200, everything.text
    assert {m["code"]: m["active"] for m in everything.json()}["express"] is False
    assert len(everything.json()) == len(listed.json()) + 1
    explicit_false = await client.get(
        f"{API}/shipping-methods", params={"include_inactive": "false"}, headers=bearer(admin)
    )
    assert explicit_false.json() == listed.json()

    buyer = await customer(client, "ship")
    refused = await client.get(
        f"{API}/shipping-methods", params={"include_inactive": "true"}, headers=bearer(buyer)
    )
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    [error] = refused.json()["errors"]
    assert (error["field"], error["in"], error["code"]) == (
        "include_inactive",
        "query",
        "staff_only",
    )
    anonymous = await client.get(f"{API}/shipping-methods", params={"include_inactive": "true"})
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    nonsense = await client.get(
        f"{API}/shipping-methods", params={"include_inactive": "maybe"}, headers=bearer(admin)
    )
    assert nonsense.status_code == 422, nonsense.text
    assert [e["field"] for e in nonsense.json()["errors"]] == ["include_inactive"]


async def test_a_cart_says_why_its_chosen_method_no_longer_ships_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-WHY": 10})
    cart_id, headers = await guest_cart(client, {"TEE-WHY": 1})
    chosen = await client.patch(
        f"{API}/carts/{cart_id}", json={"shipping_method": "standard"}, headers=headers
    )
    assert chosen.status_code == 200, chosen.text

    async def why() -> list[str]:
        cart = await client.get(f"{API}/carts/{cart_id}", headers=headers)
        return [p for p in cart.json()["problems"] if "standard" in p]

    assert await why() == []
    assert (await _patch(client, admin, "standard", {"countries": ["PT"]})).status_code == 200
    assert await why() == ["The shipping method 'standard' does not ship to ES."]
    assert (await _patch(client, admin, "standard", {"active": False})).status_code == 200
    assert await why() == ["The shipping method 'standard' is no longer offered."]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rates": {"EUR": [{"amount": "500"}]}}, "rates.EUR.0.amount"),
        ({"rates": {"EUR": [{"amount": 500.0}]}}, "rates.EUR.0.amount"),
        ({"kind": "weight", "rates": {"EUR": [{"up_to_grams": "1000", "amount": 5}]}}, None),
        ({"active": "false"}, "active"),
        ({"active": 0}, "active"),
    ],
)
async def test_shipping_method_numbers_and_flags_are_taken_only_as_json_numbers_and_booleans(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {})
    before = await _method(client, "standard")
    fields = _fields(await _patch(client, admin, "standard", body))
    assert fields == [field] if field else fields[0].endswith("up_to_grams")
    assert await _method(client, "standard") == before


async def test_a_tax_rate_is_taken_only_as_a_json_integer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    for given in ("2100", 2100.0, True):
        refused = await client.put(
            f"{API}/tax-rates/ES", json={"name": "IVA", "rate_bp": given}, headers=bearer(admin)
        )
        assert _fields(refused) == ["rate_bp"], given
