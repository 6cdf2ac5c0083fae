"""Sending deliveries: claim the due ones, POST them signed, record every attempt.

Claiming is what keeps two senders (two replicas, or two runs of the job) from sending the same
attempt: a sender takes due deliveries by a guarded update that bumps ``attempt_count`` and sets
its own claim token and a lease, only where nobody else holds a live lease, and sends only the
rows that update gave it. On PostgreSQL the candidates are first locked with ``FOR UPDATE SKIP
LOCKED`` so concurrent senders take different rows instead of queueing on the same ones; on
SQLite write transactions are serialised (``BEGIN IMMEDIATE``) and the guard alone suffices.
A sender that dies mid-send leaves a lease that expires, and the delivery is sent again: at
least once, which receivers handle by deduplicating on the event id.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import CursorResult, and_, or_, select, update

from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.service import ServiceContext
from ecosistema.platform.signatures import signature_header
from ecosistema.webhooks import domain, schemas, service
from ecosistema.webhooks.domain import DeliveryStatus, SubscriptionStatus, TargetError
from ecosistema.webhooks.models import attempts, deliveries, events, subscriptions

log = structlog.get_logger(__name__)

# A lease outlives the attempt's timeout by this much, so it never expires under a live sender.
LEASE_MARGIN_SECONDS = 60.0


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender holds, with everything needed to send it."""

    delivery_id: str
    subscription_id: str
    event_id: str
    event_type: str
    number: int
    failures: int
    retry: bool
    deadline: datetime
    claim_token: str
    url: str
    body: bytes
    secrets: list[str]


@dataclass
class AttemptResult:
    """What one POST to a receiver produced."""

    succeeded: bool
    duration_ms: int
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str | None = None


async def dispatch_due(
    ctx: ServiceContext,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_claims: int = 10_000,
) -> int:
    """Send every delivery due at ``now`` (default: the current time), at most
    ``webhooks_max_concurrency`` at once; returns how many attempts were made. ``now`` is a
    parameter so retries can be driven without waiting.

    A slot freed by a finished attempt is refilled at once, so one slow receiver holds one slot,
    not the whole batch. At most ``max_claims`` attempts are made per call.
    """
    concurrency = ctx.settings.webhooks_max_concurrency
    first = await claim_due(ctx, now=now or utcnow(), limit=min(concurrency, max_claims))
    if not first:
        return 0
    sent = 0
    in_flight: set[asyncio.Task[None]] = set()
    async with _client(ctx, transport) as client:
        try:
            batch = first
            while True:
                for claimed in batch:
                    moment = now or utcnow()
                    in_flight.add(asyncio.create_task(_deliver(ctx, client, claimed, moment, rng)))
                sent += len(batch)
                if not in_flight:
                    break
                done, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight = set(pending)
                for task in done:
                    if task.exception() is not None:
                        # Recording failed (the database is in trouble): the claim's lease
                        # expires and the delivery is sent again.
                        log.warning("webhook_attempt_unrecorded", error=repr(task.exception()))
                room = min(concurrency - len(in_flight), max_claims - sent)
                batch = await claim_due(ctx, now=now or utcnow(), limit=room) if room > 0 else []
                if not batch and not in_flight:
                    break
        finally:
            # Cancelled (the process is stopping): attempts cut short keep their claim until the
            # lease ends, and are then sent again.
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
    return sent


async def dispatch_job(ctx: ServiceContext) -> None:
    """The periodic sender."""
    await dispatch_due(ctx)


def _client(ctx: ServiceContext, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    timeout = ctx.settings.webhooks_timeout_seconds
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        # Receivers are reached directly; a process-wide proxy must not see signed payloads.
        trust_env=False,
        transport=transport,
        limits=httpx.Limits(max_connections=ctx.settings.webhooks_max_concurrency),
        headers={"User-Agent": domain.USER_AGENT},
    )


async def claim_due(ctx: ServiceContext, *, now: datetime, limit: int) -> list[Claimed]:
    """Take up to ``limit`` due deliveries of enabled subscriptions for this sender."""
    token = new_id()
    lease_until = now + timedelta(
        seconds=ctx.settings.webhooks_timeout_seconds + LEASE_MARGIN_SECONDS
    )
    d = deliveries
    free = or_(d.c.claimed_until.is_(None), d.c.claimed_until < now)
    async with ctx.db.transaction() as session:
        candidates = (
            select(d.c.id)
            .join(subscriptions, subscriptions.c.id == d.c.subscription_id)
            .where(
                d.c.status == DeliveryStatus.PENDING.value,
                d.c.next_attempt_at <= now,
                free,
                subscriptions.c.status == SubscriptionStatus.ENABLED.value,
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(limit)
        )
        if ctx.db.is_postgres:
            candidates = candidates.with_for_update(of=d, skip_locked=True)
        ids = list((await session.execute(candidates)).scalars())
        if not ids:
            return []
        await session.execute(
            update(d)
            .where(d.c.id.in_(ids), d.c.status == DeliveryStatus.PENDING.value, free)
            .values(
                claim_token=token,
                claimed_until=lease_until,
                attempt_count=d.c.attempt_count + 1,
            )
        )
        return await _load_claimed(ctx, session, token, now)


async def _load_claimed(
    ctx: ServiceContext, session: Any, token: str, now: datetime
) -> list[Claimed]:
    d = deliveries
    rows = (
        await session.execute(
            select(
                d,
                subscriptions.c.url,
                subscriptions.c.secret_encrypted,
                subscriptions.c.previous_secret_encrypted,
                subscriptions.c.previous_secret_expires_at,
                events.c.type.label("event_type_stored"),
                events.c.created.label("event_created"),
                events.c.data.label("event_data"),
            )
            .join(subscriptions, subscriptions.c.id == d.c.subscription_id)
            .join(events, events.c.id == d.c.event_id)
            .where(d.c.claim_token == token)
        )
    ).mappings()
    out: list[Claimed] = []
    for row in rows:
        secrets = service.signing_secrets(
            ctx,
            {
                "id": row["subscription_id"],
                "secret_encrypted": row["secret_encrypted"],
                "previous_secret_encrypted": row["previous_secret_encrypted"],
                "previous_secret_expires_at": row["previous_secret_expires_at"],
            },
            now,
        )
        out.append(
            Claimed(
                delivery_id=row["id"],
                subscription_id=row["subscription_id"],
                event_id=row["event_id"],
                event_type=row["event_type"],
                number=int(row["attempt_count"]),
                failures=int(row["failures"]),
                retry=bool(row["retry"]),
                deadline=row["deadline"],
                claim_token=token,
                url=row["url"],
                body=domain.event_body(
                    row["event_id"],
                    row["event_type_stored"],
                    row["event_created"],
                    row["event_data"],
                ),
                secrets=secrets,
            )
        )
    return out


async def _deliver(
    ctx: ServiceContext,
    client: httpx.AsyncClient,
    claimed: Claimed,
    now: datetime,
    rng: random.Random | None,
) -> None:
    try:
        result = await send(ctx, client, claimed, now)
    except Exception as exc:  # never lose the claim's outcome to an unexpected error
        log.exception("webhook_send_crashed", delivery_id=claimed.delivery_id)
        result = AttemptResult(
            succeeded=False, duration_ms=0, error=f"internal error: {exc!r}"[:500]
        )
    await record_attempt(ctx, claimed, result, now=now, rng=rng)


async def send(
    ctx: ServiceContext, client: httpx.AsyncClient, claimed: Claimed, now: datetime
) -> AttemptResult:
    """POST one signed delivery; any 2xx answer is a success, anything else a failure."""
    timeout = ctx.settings.webhooks_timeout_seconds
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    if not service.private_targets_allowed(ctx.settings):
        try:
            await service.resolve_public_target(claimed.url)
        except TargetError as exc:
            return AttemptResult(succeeded=False, duration_ms=elapsed(), error=str(exc)[:500])
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        domain.SIGNATURE_HEADER: signature_header(claimed.secrets, timestamp, claimed.body),
        domain.EVENT_ID_HEADER: claimed.event_id,
        domain.EVENT_TYPE_HEADER: claimed.event_type,
        domain.DELIVERY_ID_HEADER: claimed.delivery_id,
        domain.ATTEMPT_HEADER: str(claimed.number),
    }
    try:
        async with asyncio.timeout(timeout):
            async with client.stream(
                "POST", claimed.url, content=claimed.body, headers=headers
            ) as response:
                body = await _read_bounded(response)
    except TimeoutError:
        return AttemptResult(
            succeeded=False, duration_ms=elapsed(), error=f"timed out after {timeout:g} s"
        )
    except httpx.HTTPError as exc:
        return AttemptResult(
            succeeded=False,
            duration_ms=elapsed(),
            error=f"{type(exc).__name__}: {exc}"[:500],
        )
    ok = 200 <= response.status_code < 300
    return AttemptResult(
        succeeded=ok,
        duration_ms=elapsed(),
        status_code=response.status_code,
        headers=domain.kept_headers(response.headers.items()),
        body=domain.excerpt(body),
        error=None if ok else f"the receiver answered {response.status_code}",
    )


async def _read_bounded(response: httpx.Response) -> bytes:
    """The start of the body, enough for the excerpt; the rest is not read."""
    limit = domain.RESPONSE_BODY_EXCERPT_BYTES + 1
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)


async def record_attempt(
    ctx: ServiceContext,
    claimed: Claimed,
    result: AttemptResult,
    *,
    now: datetime,
    rng: random.Random | None = None,
) -> DeliveryStatus:
    """Store the attempt and move the delivery on (done, retry later, or failed for good)."""
    failures = claimed.failures + (0 if result.succeeded else 1)
    outcome = domain.after_attempt(
        succeeded=result.succeeded,
        failures=failures,
        now=now,
        deadline=claimed.deadline,
        retry=claimed.retry,
        rng=rng,
    )
    async with ctx.db.transaction() as session:
        await session.execute(
            attempts.insert().values(
                id=new_id(),
                delivery_id=claimed.delivery_id,
                number=claimed.number,
                started_at=now,
                duration_ms=result.duration_ms,
                succeeded=result.succeeded,
                status_code=result.status_code,
                response_headers=result.headers,
                response_body=result.body,
                error=result.error,
            )
        )
        moved = await session.execute(
            update(deliveries)
            .where(
                deliveries.c.id == claimed.delivery_id,
                deliveries.c.claim_token == claimed.claim_token,
            )
            .values(
                status=outcome.status.value,
                next_attempt_at=outcome.next_attempt_at,
                failures=failures,
                claim_token=None,
                claimed_until=None,
                last_status_code=result.status_code,
                last_error=result.error,
                delivered_at=now if result.succeeded else None,
                updated_at=now,
            )
        )
        if _rowcount(moved) != 1:
            # The lease ran out and the delivery was replayed or claimed again meanwhile: the
            # attempt stays on record, the delivery's state belongs to its new holder.
            log.warning("webhook_claim_lost", delivery_id=claimed.delivery_id)
            return outcome.status
        if claimed.retry:
            await _track_health(ctx, session, claimed.subscription_id, result.succeeded, now)
    if outcome.status is DeliveryStatus.FAILED:
        log.warning(
            "webhook_delivery_failed",
            delivery_id=claimed.delivery_id,
            subscription_id=claimed.subscription_id,
            attempts=claimed.number,
        )
    return outcome.status


async def _track_health(
    ctx: ServiceContext, session: Any, subscription_id: str, succeeded: bool, now: datetime
) -> None:
    s = subscriptions
    if succeeded:
        await session.execute(
            update(s)
            .where(s.c.id == subscription_id, s.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
        return
    await session.execute(
        update(s)
        .where(s.c.id == subscription_id, s.c.failing_since.is_(None))
        .values(failing_since=now)
    )
    row = (
        (
            await session.execute(
                select(s.c.status, s.c.failing_since).where(s.c.id == subscription_id)
            )
        )
        .mappings()
        .first()
    )
    window = timedelta(seconds=ctx.settings.webhooks_retry_window_seconds)
    if row is None or row["status"] != SubscriptionStatus.ENABLED.value:
        return
    if not domain.should_disable(row["failing_since"], now, window):
        return
    reason = (
        f"Every delivery failed since {row['failing_since'].isoformat()}; "
        "fix the endpoint, then enable the subscription again."
    )
    await session.execute(
        update(s)
        .where(s.c.id == subscription_id)
        .values(
            status=SubscriptionStatus.DISABLED.value,
            disabled_reason=reason,
            disabled_at=now,
            updated_at=now,
        )
    )
    d = deliveries
    await session.execute(
        update(d)
        .where(
            d.c.subscription_id == subscription_id,
            d.c.status == DeliveryStatus.PENDING.value,
            and_(or_(d.c.claimed_until.is_(None), d.c.claimed_until < now)),
        )
        .values(
            status=DeliveryStatus.FAILED.value,
            next_attempt_at=None,
            last_error="the subscription was disabled after failing for too long",
            updated_at=now,
        )
    )
    log.warning("webhook_subscription_disabled", subscription_id=subscription_id, reason=reason)


async def send_test(
    ctx: ServiceContext,
    *,
    subscription_id: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> schemas.DeliveryDetail:
    """Send a ``ping`` event to a subscription now and answer with the attempt's outcome."""
    now = utcnow()
    token = new_id()
    delivery_id = await service.record_ping(
        ctx, subscription_id=subscription_id, claim_token=token, now=now
    )
    async with ctx.db.read() as session:
        [claimed] = await _load_claimed(ctx, session, token, now)
    async with _client(ctx, transport) as client:
        await _deliver(ctx, client, claimed, now, None)
    return await service.get_delivery(ctx, delivery_id=delivery_id)
