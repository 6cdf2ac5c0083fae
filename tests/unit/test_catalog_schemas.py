"""Catalog request models: unknown fields refused, money and currencies checked, sale windows
ordered, adjustments unambiguous."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ecosistema.catalog import schemas


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (schemas.ProductCreate, {"name": "Tee", "price": 10}),
        (schemas.ProductCreate, {"name": "Tee", "slug": "Bad Slug"}),
        (schemas.ProductCreate, {"name": ""}),
        (schemas.ProductCreate, {"name": "Tee", "status": "deleted"}),
        (schemas.VariantCreate, {"sku": "has space"}),
        (schemas.VariantCreate, {"sku": "A", "weight_grams": -1}),
        (schemas.VariantCreate, {"sku": "A", "prices": [{"currency": "EUR", "amount": 1.5}]}),
        (schemas.VariantCreate, {"sku": "A", "prices": [{"currency": "ZZZ", "amount": 1}]}),
        (
            schemas.VariantCreate,
            {
                "sku": "A",
                "prices": [{"currency": "EUR", "amount": 1}, {"currency": "EUR", "amount": 2}],
            },
        ),
        (
            schemas.SalePriceInput,
            {
                "currency": "EUR",
                "amount": 1,
                "starts_at": "2026-12-02T00:00:00Z",
                "ends_at": "2026-12-01T00:00:00Z",
            },
        ),
        (schemas.SalePriceInput, {"currency": "EUR", "amount": 1, "starts_at": "2026-12-02T00:00"}),
        (schemas.StockAdjustment, {"warehouse": "main", "reason": "count"}),
        (schemas.StockAdjustment, {"warehouse": "main", "delta": 1, "on_hand": 2, "reason": "x"}),
        (schemas.StockAdjustment, {"warehouse": "main", "delta": 0, "reason": "x"}),
        (schemas.WarehouseCreate, {"code": "main", "name": "Main", "city": "Madrid"}),
    ],
)
def test_invalid_input_is_refused(model: type[BaseModel], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


def test_a_product_with_variants_and_prices_is_accepted() -> None:
    product = schemas.ProductCreate.model_validate(
        {
            "name": "Tee",
            "variants": [
                {
                    "sku": "TEE-M",
                    "options": {"size": "M"},
                    "prices": [{"currency": "EUR", "amount": 1990}],
                    "sale_prices": [
                        {"currency": "EUR", "amount": 1490, "ends_at": "2026-12-31T00:00:00Z"}
                    ],
                }
            ],
        }
    )
    assert product.status == "draft"
    assert product.variants[0].sale_prices[0].starts_at is None
