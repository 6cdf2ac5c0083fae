"""Catalog request models: unknown fields refused, money and currencies checked, sale windows
ordered, adjustments unambiguous."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from ecosistema.catalog import schemas
from ecosistema.orders.schemas import CartItemAdd


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


@pytest.mark.parametrize(
    "sku",
    ["TEE-M", "mug_2.0", "9", "A" * 64, "QA/SL-fe24a", "has space", "-LEAD", ".dot", "", "A" * 65],
)
def test_a_sku_catalog_creates_is_one_orders_takes_in_a_cart(sku: str) -> None:
    def accepted(model: type[BaseModel], data: dict[str, Any]) -> bool:
        try:
            model.model_validate(data)
        except ValidationError:
            return False
        return True

    in_catalog = accepted(schemas.VariantCreate, {"sku": sku})
    in_cart = accepted(CartItemAdd, {"sku": sku, "quantity": 1})
    assert in_catalog == in_cart, sku
    assert in_catalog == (sku in ("TEE-M", "mug_2.0", "9", "A" * 64)), sku


def test_a_description_keeps_line_breaks_and_tabs_but_not_invisible_characters() -> None:
    kept = schemas.ProductCreate.model_validate({"name": "Tee", "description": "a\n\tb\r\nc"})
    assert kept.description == "a\n\tb\r\nc"
    for char in ("\u202e", "\u200b", "\u00ad", "\x00", "\u2028"):
        with pytest.raises(ValidationError) as refused:
            schemas.ProductCreate.model_validate({"name": "Tee", "description": f"a{char}b"})
        assert [e["loc"] for e in refused.value.errors()] == [("description",)], repr(char)


def _request_models() -> list[type[BaseModel]]:
    """Every catalog request model: what a caller's JSON is read into."""
    found = [
        m
        for m in vars(schemas).values()
        if isinstance(m, type) and issubclass(m, schemas._Input) and m is not schemas._Input
    ]
    from ecosistema.catalog.transfer import ImportProduct, ImportVariant

    return [*found, ImportProduct, ImportVariant]


def _is_integer(annotation: Any) -> bool:
    """``int``, or ``int`` or None, however annotated."""
    if get_origin(annotation) is Annotated:
        return _is_integer(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_integer(members[0])
    return annotation is int


def _integer_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if _is_integer(field.annotation)]


@pytest.mark.parametrize(
    ("model", "field"),
    [(m, f) for m in _request_models() for f in _integer_fields(m)],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_every_integer_field_refuses_a_number_in_a_string(
    model: type[BaseModel], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({field: "500"})
    assert any(e["loc"] == (field,) and e["type"] == "int_type" for e in caught.value.errors())


def test_the_integer_fields_that_took_strings_are_among_those_checked() -> None:
    checked = {(m.__name__, f) for m in _request_models() for f in _integer_fields(m)}
    assert {
        ("WarehouseCreate", "priority"),
        ("VariantCreate", "position"),
        ("VariantUpdate", "position"),
        ("ReservationRequest", "ttl_seconds"),
        ("OrderLine", "quantity"),
        ("StockAdjustment", "delta"),
    } <= checked
