"""A 422's messages: a validator's own words as it wrote them, pydantic's as pydantic wrote them."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError, field_validator

from ecosistema.platform.errors import validation_errors


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
