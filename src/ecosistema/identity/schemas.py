"""The identity service's public contract. Every input schema forbids unknown fields, so a body
that sets ``role``, ``status`` or an owner where the schema does not allow it is a 422."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, TypeAdapter, field_validator

from ecosistema.identity import domain
from ecosistema.identity.domain import UserStatus
from ecosistema.platform import addresses as postal
from ecosistema.platform.errors import pattern_rule
from ecosistema.platform.text import check_display_text

RoleName = Literal["admin", "staff", "sales", "customer"]

# Generous bounds: the password policy (12..128 characters) is checked by the service so that its
# message names the rule; these only stop absurd payloads before hashing.
_PASSWORD = Field(min_length=1, max_length=1024)


def _person_name(value: str | None) -> str | None:
    return None if value is None else check_display_text(value)


def _language_tag(value: str | None) -> str | None:
    return None if value is None else domain.check_locale(value)


_EMAIL: TypeAdapter[str] = TypeAdapter(EmailStr)


def valid_email(value: str) -> str:
    """An email address checked exactly as registration checks it; ValidationError otherwise."""
    return _EMAIL.validate_python(value)


class Input(BaseModel):
    """Base for request bodies: unknown fields are an error (no mass assignment)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(Input):
    email: EmailStr
    password: str = _PASSWORD
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)

    _name = field_validator("name")(_person_name)
    _locale = field_validator("locale")(_language_tag)


class VerifyEmailRequest(Input):
    token: str = Field(min_length=1, max_length=200)


class ResendVerificationRequest(Input):
    email: EmailStr


class LoginRequest(Input):
    email: EmailStr
    password: str = _PASSWORD
    mfa_code: str | None = Field(default=None, max_length=16)
    recovery_code: str | None = Field(default=None, max_length=64)


class TokenResponse(BaseModel):
    """An OAuth2-style token response (RFC 6749 §5.1)."""

    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires.")


class RefreshRequest(Input):
    refresh_token: str = Field(min_length=1, max_length=200)


class TotpEnrollResponse(BaseModel):
    secret: str = Field(description="Base32 TOTP secret, for manual entry.")
    otpauth_uri: str = Field(description="otpauth:// URI, to show as a QR code.")


class TotpConfirmRequest(Input):
    code: str = Field(min_length=6, max_length=16)


class RecoveryCodesResponse(BaseModel):
    recovery_codes: list[str] = Field(description="One-time codes, shown only now.")


class TotpDisableRequest(Input):
    password: str = _PASSWORD
    code: str | None = Field(default=None, max_length=16)
    recovery_code: str | None = Field(default=None, max_length=64)


class ForgotPasswordRequest(Input):
    email: EmailStr


class ResetPasswordRequest(Input):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = _PASSWORD


class ChangePasswordRequest(Input):
    current_password: str = _PASSWORD
    new_password: str = _PASSWORD


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str


class ProfileAddress(postal.Address):
    """An address saved to a profile: the postal address checkout takes, same fields and rules,
    so that one is copied between a profile and a cart or an order as it is; only ``name`` may
    be left out (addresses saved before profiles took one have none)."""

    # Optional here only: a profile address is never passed where a checkout address is needed.
    name: str | None = Field(  # type: ignore[assignment]
        default=None,
        min_length=1,
        max_length=200,
        description="Recipient or company name; checkout requires one.",
    )


class SavedAddress(postal.PostalAddress):
    """An address as stored; rules tightened later must not make older ones unreadable (those
    saved before addresses had a name, a company or a phone have none)."""

    name: str | None = None  # type: ignore[assignment]


class Profile(BaseModel):
    name: str | None = None
    phone: str | None = None
    addresses: list[SavedAddress] = Field(default_factory=list)
    locale: str = "en"
    preferences: dict[str, Any] = Field(default_factory=dict)


class ProfileUpdate(Input):
    """PATCH users/me: only the fields a user may change about themselves."""

    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(
        default=None,
        max_length=32,
        pattern=pattern_rule(
            r"^\+?[0-9 ()./-]{4,32}$",
            "a phone number: an optional `+`, then 4 to 32 digits, spaces or `( ) . / -`",
        ),
    )
    addresses: list[ProfileAddress] | None = Field(default=None, max_length=20)
    locale: str | None = Field(default=None, max_length=35)
    preferences: dict[str, Any] | None = Field(
        default=None,
        description=(
            f"At most 50 entries, {domain.PREFERENCES_MAX_DEPTH} levels deep and "
            f"{domain.PREFERENCES_MAX_BYTES} bytes as JSON; keys of at most "
            f"{domain.PREFERENCE_KEY_MAX_LENGTH} characters."
        ),
    )

    _name = field_validator("name")(_person_name)
    _locale = field_validator("locale")(_language_tag)

    @field_validator("preferences")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > 50:
            raise ValueError("at most 50 preferences")
        return value


class User(BaseModel):
    id: str
    email: str
    role: RoleName
    status: UserStatus
    email_verified: bool
    mfa_enabled: bool
    created_at: datetime
    profile: Profile


class AdminUserUpdate(Input):
    """PATCH users/{id} (admin): role and status only."""

    role: RoleName | None = None
    status: UserStatus | None = None


class UserPage(BaseModel):
    items: list[User]
    total: int
    limit: int
    offset: int


class ApiKeyCreate(Input):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=100)


class ApiKey(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The secret API key; shown only in this response.")


class AuditEvent(BaseModel):
    id: str
    type: str
    occurred_at: datetime
    actor_id: str | None
    user_id: str | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEvent]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class Jwks(BaseModel):
    keys: list[dict[str, str]]


class ApiKeyIdentity(BaseModel):
    """Who an API key acts for and what it was granted."""

    key_id: str
    user_id: str
    role: RoleName
    scopes: list[str]


class WhoAmI(BaseModel):
    """The authenticated caller as the platform sees it."""

    subject: str
    kind: Literal["user", "api_key"]
    role: RoleName
    permissions: list[str]
    session_id: str | None
    api_key_id: str | None
    scopes: list[str]
