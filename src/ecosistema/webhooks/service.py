"""Webhooks' use cases: subscriptions and their secrets, recording the deliveries an event
causes, listing, replaying and purging deliveries. Sending lives in ``delivery.py``."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import CursorResult, RowMapping, and_, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.auth import Principal
from ecosistema.platform.config import Settings
from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.errors import Conflict, NotFound, field_error, refuse_nulls
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.pagination import decode_cursor, encode_cursor
from ecosistema.platform.service import ServiceContext
from ecosistema.webhooks import domain, schemas
from ecosistema.webhooks.domain import DeliveryStatus, SubscriptionStatus, TargetError
from ecosistema.webhooks.models import attempts, deliveries, events, subscriptions

log = structlog.get_logger(__name__)

PAGE_LIMIT = 100
SUBSCRIPTION_NOT_FOUND = "No webhook subscription with this id."
DELIVERY_NOT_FOUND = "No webhook delivery with this id."
SECRET_COLUMN = "secret_encrypted"
PREVIOUS_SECRET_COLUMN = "previous_secret_encrypted"


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def private_targets_allowed(settings: Settings) -> bool:
    """Whether subscriptions may reach loopback and private networks (default: not in prod)."""
    if settings.webhooks_allow_private_targets is not None:
        return settings.webhooks_allow_private_targets
    return settings.environment != "production"


async def resolve_public_target(url: str) -> None:
    """Raise ``TargetError`` unless every address the URL's host resolves to is public."""
    host = domain.host_of(url)
    if domain.obviously_private_host(host):
        raise TargetError(f"{host} is a loopback or private address")
    if domain.literal_address(host) is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetError(f"{host} does not resolve") from exc
    addresses = {str(info[4][0]) for info in infos}
    private = sorted(a for a in addresses if not domain.is_public_address(a))
    if not addresses or private:
        raise TargetError(f"{host} resolves to a non-public address ({', '.join(private)})")


async def _check_target(ctx: ServiceContext, url: str) -> None:
    if private_targets_allowed(ctx.settings):
        return
    try:
        await resolve_public_target(url)
    except TargetError as exc:
        raise field_error("url", str(exc), code="target_not_allowed") from exc


# --- secrets --------------------------------------------------------------------------------------


def _seal(ctx: ServiceContext, secret: str, column: str, subscription_id: str) -> str:
    return ctx.cipher.encrypt(
        secret, table=subscriptions.name, column=column, row_id=subscription_id
    )


def _open(ctx: ServiceContext, token: str, column: str, subscription_id: str) -> str:
    return ctx.cipher.decrypt(
        token, table=subscriptions.name, column=column, row_id=subscription_id
    )


def signing_secrets(ctx: ServiceContext, row: Mapping[str, Any], now: datetime) -> list[str]:
    """The secrets deliveries are signed with now: the current one, and the previous one while
    its overlap lasts."""
    out = [_open(ctx, row["secret_encrypted"], SECRET_COLUMN, row["id"])]
    expires = row["previous_secret_expires_at"]
    if row["previous_secret_encrypted"] and expires is not None and expires > now:
        out.append(_open(ctx, row["previous_secret_encrypted"], PREVIOUS_SECRET_COLUMN, row["id"]))
    return out


# --- subscriptions ----------------------------------------------------------------------------


def _subscription(row: Mapping[str, Any] | RowMapping) -> schemas.Subscription:
    return schemas.Subscription(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        event_types=list(row["event_types"]),
        status=SubscriptionStatus(row["status"]),
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        failing_since=row["failing_since"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _subscription_row(
    session: AsyncSession, subscription_id: str, *, for_update: bool = False
) -> RowMapping:
    query = select(subscriptions).where(subscriptions.c.id == subscription_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.execute(query)).mappings().first()
    if row is None:
        raise NotFound(SUBSCRIPTION_NOT_FOUND)
    return row


async def create_subscription(
    ctx: ServiceContext, *, principal: Principal, data: schemas.SubscriptionCreate
) -> schemas.SubscriptionWithSecret:
    """Subscribe a URL to event types; the answer carries the signing secret, shown only here."""
    await _check_target(ctx, data.url)
    now = utcnow()
    subscription_id = new_id()
    secret = domain.new_secret()
    values = {
        "id": subscription_id,
        "url": data.url,
        "description": data.description,
        "event_types": data.event_types,
        "status": SubscriptionStatus.ENABLED.value,
        "secret_encrypted": _seal(ctx, secret, SECRET_COLUMN, subscription_id),
        "previous_secret_encrypted": None,
        "previous_secret_expires_at": None,
        "disabled_reason": None,
        "disabled_at": None,
        "failing_since": None,
        "created_by": principal.subject,
        "created_at": now,
        "updated_at": now,
    }
    async with ctx.db.transaction() as session:
        await session.execute(subscriptions.insert().values(**values))
    log.info("webhook_subscription_created", subscription_id=subscription_id, url=data.url)
    return schemas.SubscriptionWithSecret(**_subscription(values).model_dump(), secret=secret)


async def get_subscription(ctx: ServiceContext, *, subscription_id: str) -> schemas.Subscription:
    """One subscription (never its secret)."""
    async with ctx.db.read() as session:
        return _subscription(await _subscription_row(session, subscription_id))


async def list_subscriptions(
    ctx: ServiceContext,
    *,
    status: SubscriptionStatus | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> schemas.SubscriptionPage:
    """Subscriptions, newest first."""
    t = subscriptions
    query = select(t)
    if status is not None:
        query = query.where(t.c.status == status.value)
    if cursor:
        moment, last_id = decode_cursor(cursor, datetime, str)
        query = query.where(
            or_(t.c.created_at < moment, and_(t.c.created_at == moment, t.c.id < last_id))
        )
    limit = max(1, min(limit, PAGE_LIMIT))
    query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with ctx.db.read() as session:
        rows = list((await session.execute(query)).mappings())
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return schemas.SubscriptionPage(items=[_subscription(r) for r in page], next_cursor=next_cursor)


async def update_subscription(
    ctx: ServiceContext, *, subscription_id: str, data: schemas.SubscriptionUpdate
) -> schemas.Subscription:
    """Change a subscription; enabling it again clears its failure record."""
    refuse_nulls(data, ("url", "event_types", "description", "status"))
    if data.url is not None:
        await _check_target(ctx, data.url)
    now = utcnow()
    async with ctx.db.transaction() as session:
        row = await _subscription_row(session, subscription_id, for_update=True)
        values: dict[str, Any] = {"updated_at": now}
        if data.url is not None:
            values["url"] = data.url
        if data.event_types is not None:
            values["event_types"] = data.event_types
        if data.description is not None:
            values["description"] = data.description
        if data.status is not None and data.status.value != row["status"]:
            if data.status is SubscriptionStatus.ENABLED:
                values.update(
                    status=data.status.value,
                    disabled_reason=None,
                    disabled_at=None,
                    failing_since=None,
                )
            else:
                values.update(
                    status=data.status.value, disabled_reason="Disabled by staff.", disabled_at=now
                )
        await session.execute(
            update(subscriptions).where(subscriptions.c.id == subscription_id).values(**values)
        )
        return _subscription({**row, **values})


async def delete_subscription(ctx: ServiceContext, *, subscription_id: str) -> None:
    """Remove a subscription with its deliveries and their attempts."""
    async with ctx.db.transaction() as session:
        await _subscription_row(session, subscription_id, for_update=True)
        owned = select(deliveries.c.id).where(deliveries.c.subscription_id == subscription_id)
        await session.execute(delete(attempts).where(attempts.c.delivery_id.in_(owned)))
        await session.execute(
            delete(deliveries).where(deliveries.c.subscription_id == subscription_id)
        )
        await session.execute(delete(subscriptions).where(subscriptions.c.id == subscription_id))


async def rotate_secret(
    ctx: ServiceContext,
    *,
    subscription_id: str,
    data: schemas.SecretRotation,
) -> schemas.SubscriptionWithSecret:
    """A new signing secret; the current one keeps signing (as a second ``v1``) for the
    overlap, so receivers can switch without missing a delivery."""
    now = utcnow()
    overlap = (
        data.expire_previous_in_seconds
        if data.expire_previous_in_seconds is not None
        else ctx.settings.webhooks_secret_overlap_seconds
    )
    secret = domain.new_secret()
    async with ctx.db.transaction() as session:
        row = await _subscription_row(session, subscription_id, for_update=True)
        current = _open(ctx, row["secret_encrypted"], SECRET_COLUMN, subscription_id)
        values: dict[str, Any] = {
            "secret_encrypted": _seal(ctx, secret, SECRET_COLUMN, subscription_id),
            "previous_secret_encrypted": (
                _seal(ctx, current, PREVIOUS_SECRET_COLUMN, subscription_id) if overlap else None
            ),
            "previous_secret_expires_at": now + timedelta(seconds=overlap) if overlap else None,
            "updated_at": now,
        }
        await session.execute(
            update(subscriptions).where(subscriptions.c.id == subscription_id).values(**values)
        )
    log.info("webhook_secret_rotated", subscription_id=subscription_id, overlap_seconds=overlap)
    return schemas.SubscriptionWithSecret(
        **_subscription({**row, **values}).model_dump(), secret=secret
    )


# --- recording events -------------------------------------------------------------------------


_ENABLED_EVENT_TYPES = select(subscriptions.c.event_types).where(
    subscriptions.c.status == SubscriptionStatus.ENABLED.value
)


async def wants_event(ctx: ServiceContext, envelope: EventEnvelope) -> bool:
    """Whether any enabled subscription receives this bus event: one read on the driver, so the
    many events nobody subscribed to cost no write transaction."""
    public_type = domain.public_name(envelope.type)
    if public_type is None:
        return False
    rows = await ctx.db.fetch(ctx.db.compile_read(_ENABLED_EVENT_TYPES))
    for (event_types,) in rows:
        listed = json.loads(event_types) if isinstance(event_types, str | bytes) else event_types
        if domain.subscribed(list(listed or ()), public_type):
            return True
    return False


async def record_event(ctx: ServiceContext, session: AsyncSession, envelope: EventEnvelope) -> int:
    """Record one pending delivery per enabled subscription that wants this bus event, in the
    consumer's transaction; nothing is sent here. Returns how many deliveries were recorded."""
    public_type = domain.public_name(envelope.type)
    if public_type is None:
        return 0
    rows = (
        await session.execute(
            select(subscriptions.c.id, subscriptions.c.event_types).where(
                subscriptions.c.status == SubscriptionStatus.ENABLED.value
            )
        )
    ).all()
    targets = [r.id for r in rows if domain.subscribed(list(r.event_types), public_type)]
    if not targets:
        return 0
    now = utcnow()
    known = await session.scalar(select(events.c.id).where(events.c.id == envelope.id))
    if known is None:
        await session.execute(
            events.insert().values(
                id=envelope.id,
                type=public_type,
                created=envelope.occurred_at,
                data=envelope.model_dump(mode="json")["payload"],
                recorded_at=now,
            )
        )
    already = set(
        (
            await session.execute(
                select(deliveries.c.subscription_id).where(deliveries.c.event_id == envelope.id)
            )
        ).scalars()
    )
    fresh = [s for s in targets if s not in already]
    deadline = now + timedelta(seconds=ctx.settings.webhooks_retry_window_seconds)
    for subscription_id in fresh:
        await session.execute(
            deliveries.insert().values(
                **_new_delivery(subscription_id, envelope.id, public_type, now, deadline)
            )
        )
    return len(fresh)


def _new_delivery(
    subscription_id: str,
    event_id: str,
    event_type: str,
    now: datetime,
    deadline: datetime,
    *,
    retry: bool = True,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "subscription_id": subscription_id,
        "event_id": event_id,
        "event_type": event_type,
        "status": DeliveryStatus.PENDING.value,
        "attempt_count": 0,
        "failures": 0,
        "retry": retry,
        "next_attempt_at": now,
        "deadline": deadline,
        "claim_token": None,
        "claimed_until": None,
        "last_status_code": None,
        "last_error": None,
        "delivered_at": None,
        "created_at": now,
        "updated_at": now,
    }


# --- deliveries -------------------------------------------------------------------------------


def _delivery(row: Mapping[str, Any] | RowMapping) -> schemas.Delivery:
    return schemas.Delivery(
        id=row["id"],
        subscription_id=row["subscription_id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        status=DeliveryStatus(row["status"]),
        attempt_count=row["attempt_count"],
        next_attempt_at=row["next_attempt_at"],
        deadline=row["deadline"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def list_deliveries(
    ctx: ServiceContext,
    *,
    subscription_id: str | None = None,
    status: DeliveryStatus | None = None,
    event_type: str | None = None,
    event_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> schemas.DeliveryPage:
    """Deliveries newest first, filtered by subscription, status, event type or event."""
    t = deliveries
    query = select(t)
    if subscription_id is not None:
        query = query.where(t.c.subscription_id == subscription_id)
    if status is not None:
        query = query.where(t.c.status == status.value)
    if event_type is not None:
        query = query.where(t.c.event_type == event_type)
    if event_id is not None:
        query = query.where(t.c.event_id == event_id)
    if cursor:
        moment, last_id = decode_cursor(cursor, datetime, str)
        query = query.where(
            or_(t.c.created_at < moment, and_(t.c.created_at == moment, t.c.id < last_id))
        )
    limit = max(1, min(limit, PAGE_LIMIT))
    query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with ctx.db.read() as session:
        rows = list((await session.execute(query)).mappings())
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return schemas.DeliveryPage(items=[_delivery(r) for r in page], next_cursor=next_cursor)


async def _delivery_detail(session: AsyncSession, delivery_id: str) -> schemas.DeliveryDetail:
    row = (
        (await session.execute(select(deliveries).where(deliveries.c.id == delivery_id)))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(DELIVERY_NOT_FOUND)
    event = (
        (await session.execute(select(events).where(events.c.id == row["event_id"])))
        .mappings()
        .one()
    )
    found = await session.execute(
        select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.number)
    )
    return schemas.DeliveryDetail(
        **_delivery(row).model_dump(),
        payload=domain.event_document(event["id"], event["type"], event["created"], event["data"]),
        attempts=[
            schemas.Attempt(
                number=a["number"],
                started_at=a["started_at"],
                duration_ms=a["duration_ms"],
                succeeded=a["succeeded"],
                status_code=a["status_code"],
                response_headers=dict(a["response_headers"] or {}),
                response_body=a["response_body"],
                error=a["error"],
            )
            for a in found.mappings()
        ],
    )


async def get_delivery(ctx: ServiceContext, *, delivery_id: str) -> schemas.DeliveryDetail:
    """One delivery with its payload and every attempt."""
    async with ctx.db.read() as session:
        return await _delivery_detail(session, delivery_id)


async def replay_delivery(
    ctx: ServiceContext, *, delivery_id: str, now: datetime | None = None
) -> schemas.DeliveryDetail:
    """Send a delivery again soon: same event, same event id, a fresh retry window."""
    now = now or utcnow()
    deadline = now + timedelta(seconds=ctx.settings.webhooks_retry_window_seconds)
    async with ctx.db.transaction() as session:
        row = (
            (
                await session.execute(
                    select(deliveries, subscriptions.c.status.label("subscription_status"))
                    .join(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
                    .where(deliveries.c.id == delivery_id)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(DELIVERY_NOT_FOUND)
        if row["subscription_status"] != SubscriptionStatus.ENABLED.value:
            raise Conflict(
                "The subscription is disabled; enable it before replaying its deliveries.",
                type="webhook-subscription-disabled",
            )
        claimed_until = row["claimed_until"]
        if row["claim_token"] and claimed_until is not None and claimed_until > now:
            raise Conflict(
                "An attempt of this delivery is being sent; replay it once that ends.",
                type="webhook-delivery-in-flight",
            )
        await session.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(
                status=DeliveryStatus.PENDING.value,
                failures=0,
                retry=True,
                next_attempt_at=now,
                deadline=deadline,
                claim_token=None,
                claimed_until=None,
                updated_at=now,
            )
        )
        detail = await _delivery_detail(session, delivery_id)
    log.info("webhook_delivery_replayed", delivery_id=delivery_id)
    return detail


async def record_ping(
    ctx: ServiceContext, *, subscription_id: str, claim_token: str, now: datetime
) -> str:
    """A ``ping`` event and its one-attempt delivery, already held by the caller; its id."""
    event_id = new_id()
    lease = timedelta(seconds=ctx.settings.webhooks_timeout_seconds + 60)
    async with ctx.db.transaction() as session:
        await _subscription_row(session, subscription_id)
        await session.execute(
            events.insert().values(
                id=event_id,
                type=domain.PING,
                created=now,
                data={"subscription_id": subscription_id, "message": "Ecosistema webhook test"},
                recorded_at=now,
            )
        )
        values = _new_delivery(subscription_id, event_id, domain.PING, now, now, retry=False)
        values.update(claim_token=claim_token, claimed_until=now + lease, attempt_count=1)
        await session.execute(deliveries.insert().values(**values))
    return str(values["id"])


# --- retention --------------------------------------------------------------------------------


async def purge_finished(ctx: ServiceContext, *, now: datetime | None = None) -> int:
    """Delete finished deliveries (and their attempts and unreferenced events) older than the
    retention; returns how many deliveries went."""
    now = now or utcnow()
    cutoff = now - timedelta(days=ctx.settings.webhooks_retention_days)
    async with ctx.db.transaction() as session:
        old = select(deliveries.c.id).where(
            deliveries.c.status != DeliveryStatus.PENDING.value, deliveries.c.updated_at < cutoff
        )
        await session.execute(delete(attempts).where(attempts.c.delivery_id.in_(old)))
        result = await session.execute(
            delete(deliveries).where(
                deliveries.c.status != DeliveryStatus.PENDING.value,
                deliveries.c.updated_at < cutoff,
            )
        )
        await session.execute(
            delete(events).where(
                events.c.recorded_at < cutoff,
                ~exists().where(deliveries.c.event_id == events.c.id),
            )
        )
        processed = ctx.outbox.processed
        await session.execute(delete(processed).where(processed.c.processed_at < cutoff))
    return _rowcount(result)


async def purge_job(ctx: ServiceContext) -> None:
    """The periodic retention sweep."""
    purged = await purge_finished(ctx)
    if purged:
        log.info("webhook_deliveries_purged", count=purged)
