"""Webhooks' public contract: subscriptions, deliveries and their attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecosistema.webhooks.domain import (
    EVENT_TYPES,
    DeliveryStatus,
    SubscriptionStatus,
    TargetError,
    check_url_shape,
    unknown_event_types,
)


class Input(BaseModel):
    """Base for request bodies: unknown fields are an error (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


def _event_types(value: list[str]) -> list[str]:
    unknown = unknown_event_types(value)
    if unknown:
        raise ValueError(
            f"unknown event types {', '.join(repr(u) for u in unknown)}; "
            f"use '*' or any of {', '.join(EVENT_TYPES)}"
        )
    # Order kept, duplicates dropped: the stored list is what the caller asked for.
    return list(dict.fromkeys(value))


def _url(value: str) -> str:
    try:
        return check_url_shape(value)
    except TargetError as exc:
        raise ValueError(str(exc)) from exc


def _description(value: str) -> str:
    if any((ord(ch) < 0x20 and ch not in "\t\n\r") or ord(ch) == 0x7F for ch in value):
        raise ValueError("control characters are not allowed")
    return value


EventTypeList = list[str]


class SubscriptionCreate(Input):
    url: str = Field(min_length=1, max_length=2048, description="An http or https URL.")
    event_types: EventTypeList = Field(
        min_length=1,
        max_length=64,
        description="Public event types (e.g. order.paid), or '*' for every event.",
    )
    description: str = Field(default="", max_length=500)

    _check_url = field_validator("url")(_url)
    _check_types = field_validator("event_types")(_event_types)
    _check_description = field_validator("description")(_description)


class SubscriptionUpdate(Input):
    """PATCH: change the target, the events, the description, or enable/disable it."""

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: EventTypeList | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=500)
    status: SubscriptionStatus | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _url(value)

    @field_validator("event_types")
    @classmethod
    def _check_types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _event_types(value)

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str | None) -> str | None:
        return None if value is None else _description(value)


class SecretRotation(Input):
    expire_previous_in_seconds: int | None = Field(
        default=None,
        ge=0,
        le=7 * 86_400,
        description="How long the previous secret still signs deliveries (0: not at all). "
        "Default: the platform's configured overlap.",
    )


class Subscription(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    status: SubscriptionStatus
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SubscriptionWithSecret(Subscription):
    """Answer to create and rotate-secret: the only times the secret is shown."""

    secret: str


class SubscriptionPage(BaseModel):
    items: list[Subscription]
    next_cursor: str | None


class Attempt(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    succeeded: bool
    status_code: int | None
    response_headers: dict[str, str]
    response_body: str
    error: str | None


class Delivery(BaseModel):
    id: str
    subscription_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    deadline: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryDetail(Delivery):
    """A delivery with the event it carries and every attempt, oldest first."""

    payload: dict[str, Any]
    attempts: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


class EventTypes(BaseModel):
    event_types: list[str]
