"""A voucher's numbers (its value, minimum spend and limits) must be JSON integers, as cart
quantities and amounts are: a string, a boolean or a float is a 422 at the field, never coerced."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import app, settings, staff_tokens

__all__ = ["app", "settings"]

TERMS: dict[str, Any] = {
    "code": "STRICT1",
    "kind": "percentage",
    "value": 500,
    "currency": "EUR",
    "minimum_spend": 1000,
    "usage_limit": 10,
    "per_customer_limit": 1,
}


@pytest.mark.parametrize("field", ["value", "minimum_spend", "usage_limit", "per_customer_limit"])
async def test_voucher_numbers_given_as_strings_or_booleans_are_refused(
    app: FastAPI, client: httpx.AsyncClient, field: str
) -> None:
    admin = await staff_tokens(app, client)
    for given in (str(TERMS[field]), True, float(TERMS[field])):
        refused = await client.post(
            f"{API}/vouchers", json={**TERMS, field: given}, headers=bearer(admin)
        )
        assert refused.status_code == 422, (given, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in refused.json()["errors"]] == [field], refused.text
    found = await client.get(f"{API}/vouchers/STRICT1", headers=bearer(admin))
    assert found.status_code == 404, found.text

    created = await client.post(f"{API}/vouchers", json=TERMS, headers=bearer(admin))
    assert created.status_code == 201, created.text
    assert {name: created.json()[name] for name in TERMS if name != "code"} == {
        name: value for name, value in TERMS.items() if name != "code"
    }


async def test_a_voucher_change_takes_only_an_integer_usage_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    created = await client.post(f"{API}/vouchers", json=TERMS, headers=bearer(admin))
    assert created.status_code == 201, created.text
    url = f"{API}/vouchers/STRICT1"
    for given in ("50", True, 50.0):
        refused = await client.patch(url, json={"usage_limit": given}, headers=bearer(admin))
        assert refused.status_code == 422, (given, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == ["usage_limit"]
    assert (await client.get(url, headers=bearer(admin))).json()["usage_limit"] == 10
    changed = await client.patch(url, json={"usage_limit": 50}, headers=bearer(admin))
    assert changed.status_code == 200, changed.text
    assert changed.json()["usage_limit"] == 50
