"""Instants taken as input: a timezone where one is needed, UTC, and a 422 naming the field for
values UTC cannot hold; the database column refuses them too, and the API answers 422."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ecosistema.platform.db import UTCDateTime
from ecosistema.platform.errors import install_error_handlers
from ecosistema.platform.timestamps import (
    QueryTimestamp,
    Timestamp,
    TimestampOutOfRange,
    parse_instant,
)

LATE = "9999-12-31T23:00:00-05:00"
EARLY = "0001-01-01T00:00:00+05:00"


class Body(BaseModel):
    starts_at: Timestamp | None = None


def test_timestamp_needs_a_timezone_and_is_given_in_utc() -> None:
    assert Body(starts_at="2026-12-01T01:00:00+01:00").starts_at == datetime(  # type: ignore[arg-type]
        2026, 12, 1, tzinfo=UTC
    )
    assert Body(starts_at="2026-12-01T00:00:00Z").starts_at.tzinfo is UTC  # type: ignore[arg-type,union-attr]
    with pytest.raises(ValidationError, match="give a timezone"):
        Body(starts_at="2026-12-01T00:00:00")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [LATE, EARLY])
def test_timestamp_outside_what_utc_holds_is_a_field_error(value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Body(starts_at=value)  # type: ignore[arg-type]
    [error] = raised.value.errors()
    assert error["loc"] == ("starts_at",)
    assert "outside the supported range" in error["msg"]


def test_the_last_instants_utc_holds_are_accepted() -> None:
    assert Body(starts_at="9999-12-31T23:59:59Z").starts_at == datetime(  # type: ignore[arg-type]
        9999, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert Body(starts_at="0001-01-01T05:00:00+05:00").starts_at == datetime(  # type: ignore[arg-type]
        1, 1, 1, tzinfo=UTC
    )


def test_utc_datetime_column_refuses_an_instant_utc_cannot_hold() -> None:
    column = UTCDateTime()
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(TimestampOutOfRange):
        column.process_bind_param(late, None)  # type: ignore[arg-type]
    assert isinstance(TimestampOutOfRange(), ValueError)


_metadata = MetaData()
_events = Table(
    "events", _metadata, Column("id", Integer, primary_key=True), Column("at", UTCDateTime())
)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/unchecked")
    async def unchecked(at: datetime) -> dict[str, str]:
        # A field that does not use Timestamp: only the column stands in the way.
        async with engine.begin() as conn:
            await conn.execute(insert(_events).values(at=at))
        return {"ok": "yes"}

    @app.get("/checked")
    async def checked(since: QueryTimestamp | None = Query(default=None)) -> dict[str, str]:
        return {"since": since.isoformat() if since else ""}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_an_unchecked_instant_the_database_cannot_hold_answers_422(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/unchecked", params={"at": LATE})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "outside the supported range" in response.json()["detail"]


async def test_query_instant_is_read_as_utc_without_offset_and_named_when_out_of_range(
    client: httpx.AsyncClient,
) -> None:
    naive = await client.get("/checked", params={"since": "2026-11-28T10:00:00"})
    assert naive.json() == {"since": "2026-11-28T10:00:00+00:00"}
    response = await client.get("/checked", params={"since": EARLY})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "since" and error["in"] == "query"


# --- updated_since: one rule for every service's incremental sync ---


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-29T10:00:00Z", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29t10:00:00z", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29 11:30:00+01:30", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29T05:00:00-05:00", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29T10:00:00-00:00", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        # Past microseconds, digits are dropped: "at or after" then includes the instant.
        ("2026-11-29T10:00:00.123456789Z", datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-29T10:00:00.5Z", datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-01-01T00:30:00+01:00", datetime(2025, 12, 31, 23, 30, tzinfo=UTC)),
    ],
)
def test_an_rfc_3339_instant_with_an_offset_is_read_in_utc(text: str, instant: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == instant and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-11-29T10:00:00", "give a timezone offset"),
        ("2026-11-29T10:00", "give a timezone offset"),
        ("2026-11-29T10:00:00 01:00", "write it as %2B"),
        ("2026-11-29", "RFC 3339"),
        ("1764410400", "RFC 3339"),
        ("yesterday", "RFC 3339"),
        ("", "RFC 3339"),
        ("\uff12\uff10\uff12\uff16-11-29T10:00:00Z", "RFC 3339"),  # full-width digits
        ("2026-11-29T10:00:00+0100", "RFC 3339"),
        ("2026-11-29T10:00:00Z ", "RFC 3339"),
        ("2026-02-30T10:00:00Z", "not a real date"),
        ("2026-11-29T24:00:00Z", "not a real date"),
        ("2026-11-29T10:00:60Z", "leap seconds"),
        ("2026-11-29T10:00:00+24:00", "offset must be"),
        ("0001-01-01T00:00:00+01:00", "outside the supported range"),
        ("9999-12-31T23:00:00-05:00", "outside the supported range"),
    ],
)
def test_anything_else_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_instant(text)
