"""The envelope every event travels in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ecosistema.platform.db import new_id, utcnow


class EventEnvelope(BaseModel):
    """What a service publishes: a typed, versioned fact with its origin and correlation id."""

    id: str = Field(default_factory=new_id)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)
    source: str
    correlation_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EventEnvelope:
        return cls.model_validate_json(data)
