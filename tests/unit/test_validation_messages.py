"""A 422's messages: a validator's own words as it wrote them, pydantic's as pydantic wrote them."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator

from ecosistema.platform.errors import Conflict, validation_errors
from ecosistema.platform.sku import SKU_PATTERN


class Thing(BaseModel):
    name: str
    size: int

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


def _errors(body: object) -> list[dict[str, object]]:
    with pytest.raises(ValidationError) as caught:
        Thing.model_validate(body)
    located = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    return validation_errors(RequestValidationError(located))


def test_a_validators_message_comes_without_pydantics_prefix() -> None:
    [error] = _errors({"name": "  ", "size": 1})
    assert error == {
        "field": "name",
        "in": "body",
        "message": "must not be blank",
        "code": "value_error",
    }


def test_pydantics_own_messages_are_kept_whole() -> None:
    [error] = _errors({"name": "x", "size": "big"})
    assert error["field"] == "size"
    assert (
        error["message"] == "Input should be a valid integer, unable to parse string as an integer"
    )


class Coded(BaseModel):
    sku: str = Field(pattern=SKU_PATTERN)
    code: str = Field(pattern=r"^[a-z]+$")


def test_a_declared_pattern_is_told_in_words_not_as_its_regular_expression() -> None:
    with pytest.raises(ValidationError) as caught:
        Coded.model_validate({"sku": "QA/SL 1", "code": "ok"})
    located = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    [error] = validation_errors(RequestValidationError(located))
    assert error["field"] == "sku"
    assert error["message"] == (
        "must be a SKU: a letter or digit, then letters, digits, `.`, `_` or `-`"
    )


def test_a_pattern_without_words_keeps_pydantics_message() -> None:
    with pytest.raises(ValidationError) as caught:
        Coded.model_validate({"sku": "A-1", "code": "NOT"})
    located = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    [error] = validation_errors(RequestValidationError(located))
    assert error["message"] == "String should match pattern '^[a-z]+$'"


def test_a_problem_type_raised_without_a_title_takes_its_own_title() -> None:
    assert Conflict("taken", type="sku-taken").title == "SKU already in use"
    assert Conflict("taken", type="email-taken").title == "Email address already registered"
    assert Conflict("x", type="something-new").title == "Conflict"
    assert Conflict("x", type="sku-taken", title="Mine").title == "Mine"
