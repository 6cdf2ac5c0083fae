"""Opaque cursors for keyset pagination, decoded strictly: a tampered cursor is a 422, never
a database error."""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime
from typing import Any

from ecosistema.platform.errors import Unprocessable

CursorValue = str | int | float | datetime | None

# Cursor values end up as bound parameters; anything outside a signed 64-bit integer would make
# the driver (or SQLite) raise instead of matching nothing.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_MAX_CURSOR_LENGTH = 2048


class InvalidCursor(Unprocessable):
    type, title = "invalid-cursor", "Invalid cursor"

    def __init__(self, detail: str = "The cursor is not one this listing gave out.") -> None:
        super().__init__(
            detail,
            errors=[
                {"field": "cursor", "in": "query", "message": detail, "code": "invalid_cursor"}
            ],
        )


def encode_cursor(*values: CursorValue) -> str:
    """Where a page ended, as a URL-safe string; datetimes keep their time zone."""
    encoded = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    raw = json.dumps(encoded, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: type | tuple[type, ...]) -> tuple[Any, ...]:
    """The values of a cursor, each checked against its expected kind(s); InvalidCursor else."""
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise InvalidCursor()
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode())
        items = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(items, list) or len(items) != len(kinds):
        raise InvalidCursor()
    return tuple(_checked(item, kind) for item, kind in zip(items, kinds, strict=True))


def _checked(item: Any, kind: type | tuple[type, ...]) -> Any:
    allowed = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(item, dict) and datetime in allowed:
        try:
            moment = datetime.fromisoformat(str(item["t"]))
            if moment.tzinfo is None:
                raise InvalidCursor()
            # Normalised here: some aware datetimes (year 1 at +14:00) cannot become UTC at all.
            return moment.astimezone(UTC)
        except (KeyError, ValueError, OverflowError) as exc:
            raise InvalidCursor() from exc
    if item is None and type(None) in allowed:
        return None
    if isinstance(item, bool):
        raise InvalidCursor()
    if isinstance(item, int) and int in allowed:
        if not _INT_MIN <= item <= _INT_MAX:
            raise InvalidCursor()
        return item
    if isinstance(item, int | float) and float in allowed:
        if not math.isfinite(item):
            raise InvalidCursor()
        return float(item)
    if isinstance(item, str) and str in allowed and len(item) <= 256:
        return item
    raise InvalidCursor()
