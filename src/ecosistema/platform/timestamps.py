"""Instants taken as input: timezone-aware, in UTC, and within what every database stores.

An API field typed ``Timestamp`` (request bodies) needs an offset; one typed ``QueryTimestamp``
(query parameters such as ``created_from``) reads a value without an offset as UTC. Both are
converted to UTC, and a value whose UTC form falls outside years 1 to 9999
(``9999-12-31T23:00:00-05:00``, ``0001-01-01T00:00:00+05:00``) is refused with a 422 that names
the field, instead of failing when it reaches the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

OUT_OF_RANGE = "is outside the supported range (years 0001 to 9999 in UTC)"
NEEDS_TIMEZONE = "give a timezone (e.g. 2026-12-01T00:00:00Z)"


class TimestampOutOfRange(ValueError):
    """An instant that has no UTC form within years 1 to 9999."""

    def __init__(self, message: str = OUT_OF_RANGE) -> None:
        super().__init__(message)


def to_utc(value: datetime) -> datetime:
    """An aware instant in UTC; ``TimestampOutOfRange`` when UTC cannot hold it."""
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise TimestampOutOfRange() from exc


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(NEEDS_TIMEZONE)
    return to_utc(value)


def _utc_if_naive(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return to_utc(value)


Timestamp = Annotated[datetime, AfterValidator(_aware_utc)]
"""An instant with a timezone, converted to UTC (request bodies)."""

QueryTimestamp = Annotated[datetime, AfterValidator(_utc_if_naive)]
"""An instant, read as UTC when it has no offset, converted to UTC (query parameters)."""
