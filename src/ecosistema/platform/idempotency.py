"""Idempotent POSTs with Stripe's semantics: an ``Idempotency-Key`` makes a request safe to retry.

The same key with the same request (method, path and canonical body) from the same principal
replays the first response; the same key with a different request is refused (422,
``idempotency-key-reuse``). Two identical requests at the same moment run the handler once: the
first claims the key in a short transaction, the others wait for it to finish and replay its
response, or answer 409 ``idempotency-request-in-progress`` after a bounded wait. A handler that
fails with an unexpected exception releases the key so the client can retry; a handler that
raises a ``ProblemError`` below 500 has given an answer, and that answer is replayed. Keys are
kept 24 hours (``purge_idempotency_keys``, or the ``idempotency_purge_job`` of a service).

Each service owns its table (``idempotency_table(metadata)``), like its outbox, and includes it
in its migrations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import (
    JSON,
    Column,
    CursorResult,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse, Response

from ecosistema.platform.db import UTCDateTime, new_id, utcnow
from ecosistema.platform.errors import Conflict, ProblemError, Unprocessable, field_error
from ecosistema.platform.service import Job, ServiceContext

KEY_TTL = timedelta(hours=24)
# A claim older than this belongs to a process that died mid-request; another request may take
# the key over. It must exceed the longest handler.
CLAIM_TTL = timedelta(minutes=2)
DEFAULT_WAIT_SECONDS = 10.0
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"

IN_PROGRESS = "in_progress"
COMPLETED = "completed"

Handler = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the POST safe to retry: the same key and body replay the first answer "
        "for 24 hours.",
    ),
]


def idempotency_table(metadata: MetaData) -> Table:
    """The table a service keeps its idempotency keys in (one per service, like the outbox)."""
    return Table(
        "idempotency_keys",
        metadata,
        Column("principal_id", String(64), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("method", String(10), nullable=False),
        Column("path", String(512), nullable=False),
        Column("state", String(16), nullable=False),
        Column("claim_id", String(32), nullable=False),
        Column("claimed_until", UTCDateTime(), nullable=False),
        Column("response_status", Integer),
        Column("response_body", JSON),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("completed_at", UTCDateTime()),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    """A handler's answer, and whether it was replayed from an earlier request."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class IdempotencyKeyReuse(Unprocessable):
    """The key was already used for a different request."""

    type, title = "idempotency-key-reuse", "Idempotency key reused"


class IdempotencyRequestInProgress(Conflict):
    """Another request with the same key is still running."""

    type, title = "idempotency-request-in-progress", "Request in progress"


def request_fingerprint(method: str, path: str, body: bytes | Mapping[str, Any] | None) -> str:
    """SHA-256 of method, path and the body in canonical JSON (keys sorted, no spaces)."""
    if body is None:
        canonical = b""
    elif isinstance(body, bytes | bytearray):
        try:
            canonical = _canonical(json.loads(body)) if body.strip() else b""
        except (ValueError, UnicodeDecodeError):
            canonical = bytes(body)
    else:
        canonical = _canonical(body)
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b"\n")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical)
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def check_key(key: str | None) -> str | None:
    """Validate an ``Idempotency-Key`` header value: printable ASCII, 1 to 255 characters."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise field_error(
            "Idempotency-Key",
            f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


async def run_idempotent(
    ctx: ServiceContext,
    table: Table,
    *,
    key: str | None,
    principal_id: str,
    method: str,
    path: str,
    body: bytes | Mapping[str, Any] | None,
    handler: Handler,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> IdempotentResult:
    """Run ``handler`` at most once per (principal, key) and replay its answer afterwards."""
    key = check_key(key)
    if key is None:
        status, response = await handler()
        return IdempotentResult(status, response)
    fingerprint = request_fingerprint(method, path, body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    delay = 0.005
    while True:
        claim_id, existing = await _claim(
            ctx,
            table,
            principal_id=principal_id,
            key=key,
            fingerprint=fingerprint,
            method=method,
            path=path,
        )
        if claim_id is not None:
            return await _run_claimed(ctx, table, principal_id, key, claim_id, handler)
        if existing is None:
            continue  # released between our insert and our read: claim again
        if existing["request_hash"] != fingerprint:
            message = "was already used with a different request; use a new key for a new request"
            raise IdempotencyKeyReuse(
                f"This Idempotency-Key {message}.",
                errors=[
                    {
                        "field": "Idempotency-Key",
                        "in": "header",
                        "message": message,
                        "code": "key_reused",
                    }
                ],
            )
        if existing["state"] == COMPLETED:
            return _replay(existing)
        if loop.time() >= deadline:
            raise IdempotencyRequestInProgress(
                "A request with this Idempotency-Key is still being processed; retry shortly. "
                "A request cut off by a crash holds its key until its claim runs out "
                f"(at most {int(CLAIM_TTL.total_seconds())} s).",
                headers={"Retry-After": str(_seconds_left(existing["claimed_until"]))},
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.1)


def _seconds_left(claimed_until: datetime) -> int:
    """Retry-After for a key still claimed after the wait: when its claim runs out, the moment
    by which a retry is sure to be answered (the holder has finished, or died and the key is
    taken over). A retry before then is answered as soon as the holder finishes."""
    left = (claimed_until - utcnow()).total_seconds()
    return max(1, min(int(left) + 1, int(CLAIM_TTL.total_seconds())))


async def _claim(
    ctx: ServiceContext,
    table: Table,
    *,
    principal_id: str,
    key: str,
    fingerprint: str,
    method: str,
    path: str,
) -> tuple[str | None, dict[str, Any] | None]:
    """Claim the key for this request, or return the row that holds it."""
    now = utcnow()
    claim_id = new_id()
    values = {
        "principal_id": principal_id,
        "key": key,
        "request_hash": fingerprint,
        "method": method.upper()[:10],
        "path": path[:512],
        "state": IN_PROGRESS,
        "claim_id": claim_id,
        "claimed_until": now + CLAIM_TTL,
        "created_at": now,
    }
    claim = _statements(table, postgres=ctx.db.is_postgres).claim
    async with ctx.db.driver_write() as tx:
        if await tx.execute(claim, **values) == 1:
            return claim_id, None
    # The key is taken (or was, a moment ago): read its row, and take it over if it is spent.
    async with ctx.db.write() as session:
        where = and_(table.c.principal_id == principal_id, table.c.key == key)
        row = (await session.execute(select(table).where(where))).mappings().one_or_none()
        if row is None:
            return None, None
        existing = dict(row)
        expired = existing["created_at"] <= now - KEY_TTL
        abandoned = existing["state"] == IN_PROGRESS and existing["claimed_until"] <= now
        if expired or (abandoned and existing["request_hash"] == fingerprint):
            # The key outlived its 24 hours, or its holder died: this request takes it over.
            taken = await session.execute(
                update(table)
                .where(where, table.c.claim_id == existing["claim_id"])
                .values(**{k: v for k, v in values.items() if k not in ("principal_id", "key")})
                .values(response_status=None, response_body=None, completed_at=None)
            )
            if _rowcount(taken) == 1:
                return claim_id, None
        return None, existing


@dataclass(frozen=True, slots=True)
class _Statements:
    """The two statements every idempotent request runs, built once per table and dialect and
    run in driver transactions (``Database.driver_write``)."""

    claim: Any
    complete: Any


_STATEMENTS: dict[tuple[int, bool], tuple[Table, _Statements]] = {}


def _statements(table: Table, *, postgres: bool) -> _Statements:
    found = _STATEMENTS.get((id(table), postgres))
    if found is not None and found[0] is table:
        return found[1]
    insert = pg_insert if postgres else sqlite_insert
    c = table.c
    claim = (
        insert(table)
        .values(
            {
                name: bindparam(name, type_=c[name].type)
                for name in (
                    *("principal_id", "key", "request_hash", "method", "path", "state"),
                    *("claim_id", "claimed_until", "created_at"),
                )
            }
        )
        .on_conflict_do_nothing()
    )
    complete = (
        update(table)
        .where(
            c.principal_id == bindparam("principal_id"),
            c.key == bindparam("key"),
            c.claim_id == bindparam("claim_id"),
        )
        .values(
            state=COMPLETED,
            response_status=bindparam("status", type_=c.response_status.type),
            response_body=bindparam("body", type_=c.response_body.type),
            completed_at=bindparam("at", type_=c.completed_at.type),
        )
    )
    statements = _Statements(claim, complete)
    _STATEMENTS[(id(table), postgres)] = (table, statements)
    return statements


async def _run_claimed(
    ctx: ServiceContext,
    table: Table,
    principal_id: str,
    key: str,
    claim_id: str,
    handler: Handler,
) -> IdempotentResult:
    ids = {"principal_id": principal_id, "key": key, "claim_id": claim_id}

    def mine() -> Any:
        # Built only when a claim is released: most requests complete theirs.
        return and_(
            table.c.principal_id == principal_id, table.c.key == key, table.c.claim_id == claim_id
        )

    try:
        status, response = await handler()
    except ProblemError as problem:
        if problem.status >= 500 or problem.status == 429:
            await _release(ctx, table, mine())
            raise
        await _complete(ctx, table, ids, problem.status, {"problem": _problem_record(problem)})
        raise
    except BaseException:
        await _release(ctx, table, mine())
        raise
    await _complete(ctx, table, ids, status, response)
    return IdempotentResult(status, response)


async def _complete(
    ctx: ServiceContext,
    table: Table,
    ids: Mapping[str, str],
    status: int,
    response: dict[str, Any],
) -> None:
    complete = _statements(table, postgres=ctx.db.is_postgres).complete
    values = {
        **ids,
        "status": status,
        # Through JSON and back, so what is stored is what a replay will read.
        "body": json.loads(json.dumps(response, default=str)),
        "at": utcnow(),
    }
    async with ctx.db.driver_write() as tx:
        await tx.execute(complete, **values)


async def _release(ctx: ServiceContext, table: Table, mine: Any) -> None:
    async with ctx.db.write() as session:
        await session.execute(delete(table).where(mine))


def _problem_record(problem: ProblemError) -> dict[str, Any]:
    return {
        "type": problem.type,
        "title": problem.title,
        "detail": problem.detail,
        "extra": json.loads(json.dumps(problem.extra, default=str)),
    }


def _replay(row: Mapping[str, Any]) -> IdempotentResult:
    status = int(row["response_status"])
    body: dict[str, Any] = row["response_body"] or {}
    problem = body.get("problem") if status >= 400 else None
    if isinstance(problem, dict):
        raise ProblemError(
            str(problem.get("detail") or ""),
            type=str(problem.get("type") or "bad-request"),
            title=str(problem.get("title") or "Bad request"),
            status=status,
            headers={REPLAYED_HEADER: "true"},
            **dict(problem.get("extra") or {}),
        )
    return IdempotentResult(status, body, replayed=True)


def idempotent_response(
    result: IdempotentResult, *, headers: Mapping[str, str] | None = None
) -> Response:
    """The HTTP response for a result, marked ``Idempotent-Replayed: true`` when replayed; a
    204 has no body."""
    out = dict(headers or {})
    if result.replayed:
        out[REPLAYED_HEADER] = "true"
    if result.status == 204:
        return Response(status_code=204, headers=out)
    return JSONResponse(result.body, status_code=result.status, headers=out)


async def purge_idempotency_keys(
    ctx: ServiceContext, table: Table, *, now: datetime | None = None
) -> int:
    """Forget keys older than 24 hours; returns how many were removed."""
    cutoff = (now or utcnow()) - KEY_TTL
    async with ctx.db.write() as session:
        result = await session.execute(delete(table).where(table.c.created_at <= cutoff))
    return _rowcount(result)


def idempotency_purge_job(table: Table, *, interval_seconds: float = 3600.0) -> Job:
    """A service job that purges the service's expired idempotency keys every hour."""

    async def _run(ctx: ServiceContext) -> None:
        await purge_idempotency_keys(ctx, table)

    return Job("purge-idempotency-keys", interval_seconds, _run)


async def count_keys(session: AsyncSession, table: Table) -> int:
    """How many keys a service currently holds (operations and tests)."""
    from sqlalchemy import func

    return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0
