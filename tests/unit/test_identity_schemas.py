"""Identity's input schemas accept only their own fields (no mass assignment)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ecosistema.identity import schemas


@pytest.mark.parametrize(
    ("model", "body", "smuggled"),
    [
        (schemas.RegisterRequest, {"email": "a@example.com", "password": "x" * 12}, "role"),
        (schemas.RegisterRequest, {"email": "a@example.com", "password": "x" * 12}, "status"),
        (schemas.ProfileUpdate, {"name": "Ana"}, "role"),
        (schemas.ProfileUpdate, {"name": "Ana"}, "email_verified"),
        (schemas.ProfileUpdate, {"name": "Ana"}, "id"),
        (schemas.AdminUserUpdate, {"role": "staff"}, "email"),
        (schemas.AdminUserUpdate, {"role": "staff"}, "password_hash"),
        (schemas.ApiKeyCreate, {"name": "ci", "scopes": ["catalog:read"]}, "user_id"),
        (schemas.LoginRequest, {"email": "a@example.com", "password": "p"}, "role"),
        (schemas.ChangePasswordRequest, {"current_password": "a", "new_password": "b"}, "user_id"),
    ],
)
def test_input_schemas_reject_fields_they_do_not_declare(
    model: type[BaseModel], body: dict[str, Any], smuggled: str
) -> None:
    model.model_validate(body)
    with pytest.raises(ValidationError) as exc:
        model.model_validate({**body, smuggled: "admin"})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_every_request_schema_forbids_extra_fields() -> None:
    inputs = [
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type) and issubclass(obj, schemas.Input) and obj is not schemas.Input
    ] + [schemas.ProfileAddress]
    assert len(inputs) >= 14
    assert all(m.model_config.get("extra") == "forbid" for m in inputs)


def test_admin_update_accepts_only_known_roles() -> None:
    with pytest.raises(ValidationError):
        schemas.AdminUserUpdate.model_validate({"role": "superuser"})
    assert schemas.AdminUserUpdate.model_validate({"role": "sales"}).role == "sales"


def test_address_country_is_an_uppercased_alpha2_code() -> None:
    address = schemas.ProfileAddress(line1="Calle Mayor 1", city="Madrid", country="es")
    assert address.country == "ES"
    with pytest.raises(ValidationError):
        schemas.ProfileAddress(line1="Calle Mayor 1", city="Madrid", country="E1")


def test_token_response_is_oauth2_shaped() -> None:
    body = schemas.TokenResponse(
        access_token="a", refresh_token="r", expires_in=900, refresh_expires_in=60
    ).model_dump()
    assert body["token_type"] == "Bearer"
    assert {"access_token", "refresh_token", "expires_in"} <= set(body)


def test_profile_update_remembers_which_fields_were_sent() -> None:
    update = schemas.ProfileUpdate.model_validate({"phone": None})
    assert update.model_fields_set == {"phone"}


@pytest.mark.parametrize("name", ["a\u0000b", "", "   ", "\u202eevil\u0007", "x\u200by"])
def test_names_refuse_control_characters_and_blanks(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        schemas.ProfileUpdate.model_validate({"name": name})
    assert caught.value.errors()[0]["loc"] == ("name",)
    with pytest.raises(ValidationError):
        schemas.RegisterRequest.model_validate(
            {"email": "a@example.com", "password": "x" * 12, "name": name}
        )


def test_names_keep_letters_accents_and_joiners() -> None:
    for name in ("José Ñúñez", "李小龍", "\u0928\u094d\u200d\u0928"):
        assert schemas.ProfileUpdate.model_validate({"name": name}).name == name


@pytest.mark.parametrize("country", ["zz", "ZZ", "XX", "E1", "eu"])
def test_address_country_must_be_an_assigned_iso_3166_code(country: str) -> None:
    with pytest.raises(ValidationError):
        schemas.ProfileAddress(line1="Calle Mayor 1", city="Madrid", country=country)


def test_address_lines_refuse_control_characters() -> None:
    with pytest.raises(ValidationError):
        schemas.ProfileAddress(line1="Calle\u0000Mayor", city="Madrid", country="ES")
    with pytest.raises(ValidationError):
        schemas.ProfileAddress(line1="Calle Mayor 1", city="  ", country="ES")


@pytest.mark.parametrize("locale", ["xx-YY", "xx", "en-ZZ", "e", "english", "en-US-x-private"])
def test_locale_must_be_a_language_tag_with_a_real_language(locale: str) -> None:
    with pytest.raises(ValidationError):
        schemas.ProfileUpdate.model_validate({"locale": locale})


@pytest.mark.parametrize(
    ("given", "stored"),
    [("es", "es"), ("pt_br", "pt-BR"), ("zh-hant-TW", "zh-Hant-TW"), ("es-419", "es-419")],
)
def test_locale_is_stored_in_canonical_case(given: str, stored: str) -> None:
    assert schemas.ProfileUpdate.model_validate({"locale": given}).locale == stored
