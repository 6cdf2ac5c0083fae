"""Instants taken as input: timezone-aware, in UTC, and within what every database stores.

An API field typed ``Timestamp`` (request bodies) needs an offset; one typed ``QueryTimestamp``
(query parameters such as ``created_from``) reads a value without an offset as UTC. The
incremental sync of every service (``updated_since`` on products and orders) takes one rule,
:func:`parse_instant`: an RFC 3339 date-time with its offset, and a message saying exactly
what is wrong otherwise (a ``+`` that a query string turned into a space among them). Both are
converted to UTC, and a value whose UTC form falls outside years 1 to 9999
(``9999-12-31T23:00:00-05:00``, ``0001-01-01T00:00:00+05:00``) is refused with a 422 that names
the field, instead of failing when it reaches the database.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
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


# RFC 3339's date-time (section 5.6): a full date, "T" (or a space, or "t"), a full time with
# optional fractional seconds, and an offset that is required ("Z" or +/-hh:mm).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
# The same, with the offset's "+" turned into a space, as a query string decodes an unescaped +.
_PLUS_AS_SPACE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)? \d{2}:\d{2}", re.ASCII
)
_WITHOUT_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?", re.ASCII)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 date-time with its offset (``2026-11-29T10:00:00Z``,
    ``2026-11-29T11:00:00.5+01:00``) as an aware UTC datetime; ``ValueError`` saying what is
    wrong otherwise. Strict on purpose: a time without an offset would be read in a timezone
    the caller did not state, so it is refused rather than guessed."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        if _PLUS_AS_SPACE.fullmatch(text):
            raise ValueError(
                "the offset's '+' arrived as a space: write it as %2B in a query string, "
                "or give the time in UTC with Z"
            )
        if _WITHOUT_OFFSET.fullmatch(text):
            raise ValueError("give a timezone offset (e.g. 2026-11-29T10:00:00Z)")
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-29T10:00:00Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = found.groups()
    if int(off_h or 0) > 23 or int(off_m or 0) > 59:
        raise ValueError("the offset must be between -23:59 and +23:59")
    if second == "60":
        raise ValueError("leap seconds (:60) are not supported; use :59")
    offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=UTC if zulu else timezone(-offset if sign == "-" else offset),
        )
    except ValueError as exc:
        raise ValueError(f"is not a real date and time: {exc}") from None
    return to_utc(moment)


def instant_parameter(field: str, text: str | None) -> datetime | None:
    """A query parameter's instant (``parse_instant``), or None when it was not given; a 422 at
    ``field`` when it is not one."""
    if text is None:
        return None
    # errors.py reads this module's TimestampOutOfRange: imported here, not at the top.
    from ecosistema.platform.errors import field_error

    try:
        return parse_instant(text)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None
