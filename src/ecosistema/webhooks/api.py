"""Webhooks' HTTP API: subscriptions (with their secret shown on create and rotation), a test
ping, and the deliveries with their attempts, which can be replayed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from ecosistema.platform.auth import CurrentPrincipal, Principal
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.policy import check_permission, ensure
from ecosistema.platform.service import ServiceContext, context_of
from ecosistema.webhooks import delivery, service
from ecosistema.webhooks.domain import EVENT_TYPES, PING, DeliveryStatus, SubscriptionStatus
from ecosistema.webhooks.schemas import (
    DeliveryDetail,
    DeliveryPage,
    EventTypes,
    SecretRotation,
    Subscription,
    SubscriptionCreate,
    SubscriptionPage,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)

# A subscription receives orders, payments, invoices and stock movements of every customer;
# staff and admins hold the permission.
MANAGE_WEBHOOKS: tuple[str, ...] = (check_permission("webhooks:manage"),)


async def _webhook_manager(principal: CurrentPrincipal) -> Principal:
    for permission in MANAGE_WEBHOOKS:
        ensure(principal, permission)
    return principal


Context = Annotated[ServiceContext, Depends(context_of("webhooks"))]
Manager = Annotated[Principal, Depends(_webhook_manager)]
# Ids are hex; anything else cannot name a row, and must never reach the database as text it
# refuses (a NUL byte, say).
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Id = Annotated[str, Path(min_length=1, max_length=32, pattern=ID_PATTERN)]
Cursor = Annotated[str | None, Query(max_length=2048)]
Limit = Annotated[int, Query(ge=1, le=100)]

router = APIRouter(tags=["webhooks"])


@router.get(
    "/webhook-event-types",
    response_model=EventTypes,
    summary="The event types a subscription can ask for ('*' takes them all)",
    responses=_errors(401, 403),
)
async def list_event_types(_manager: Manager) -> EventTypes:
    return EventTypes(event_types=list(EVENT_TYPES))


@router.post(
    "/webhook-subscriptions",
    response_model=SubscriptionWithSecret,
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe a URL to event types; the signing secret is shown only in this answer",
    responses=_errors(401, 403, 422),
)
async def create_subscription(
    data: SubscriptionCreate, ctx: Context, principal: Manager
) -> SubscriptionWithSecret:
    return await service.create_subscription(ctx, principal=principal, data=data)


@router.get(
    "/webhook-subscriptions",
    response_model=SubscriptionPage,
    summary="List subscriptions, newest first",
    responses=_errors(401, 403, 422),
)
async def list_subscriptions(
    ctx: Context,
    _manager: Manager,
    status_is: Annotated[SubscriptionStatus | None, Query(alias="status")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> SubscriptionPage:
    return await service.list_subscriptions(ctx, status=status_is, cursor=cursor, limit=limit)


@router.get(
    "/webhook-subscriptions/{subscription_id}",
    response_model=Subscription,
    responses=_errors(401, 403, 404),
)
async def get_subscription(subscription_id: Id, ctx: Context, _manager: Manager) -> Subscription:
    return await service.get_subscription(ctx, subscription_id=subscription_id)


@router.patch(
    "/webhook-subscriptions/{subscription_id}",
    response_model=Subscription,
    summary="Change the URL, event types or description, or disable / enable again",
    responses=_errors(401, 403, 404, 422),
)
async def update_subscription(
    subscription_id: Id, data: SubscriptionUpdate, ctx: Context, _manager: Manager
) -> Subscription:
    return await service.update_subscription(ctx, subscription_id=subscription_id, data=data)


@router.delete(
    "/webhook-subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a subscription with its deliveries",
    responses=_errors(401, 403, 404),
)
async def delete_subscription(subscription_id: Id, ctx: Context, _manager: Manager) -> Response:
    await service.delete_subscription(ctx, subscription_id=subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/webhook-subscriptions/{subscription_id}/rotate-secret",
    response_model=SubscriptionWithSecret,
    summary="Replace the signing secret; the old one also signs during the overlap",
    responses=_errors(401, 403, 404, 422),
)
async def rotate_secret(
    subscription_id: Id,
    ctx: Context,
    _manager: Manager,
    data: SecretRotation | None = None,
) -> SubscriptionWithSecret:
    return await service.rotate_secret(
        ctx, subscription_id=subscription_id, data=data or SecretRotation()
    )


@router.post(
    "/webhook-subscriptions/{subscription_id}/test",
    response_model=DeliveryDetail,
    summary=f"Send a '{PING}' event now and answer with the attempt (not retried)",
    responses=_errors(401, 403, 404),
)
async def send_test(subscription_id: Id, ctx: Context, _manager: Manager) -> DeliveryDetail:
    return await delivery.send_test(ctx, subscription_id=subscription_id)


@router.get(
    "/webhook-deliveries",
    response_model=DeliveryPage,
    summary="List deliveries, newest first, by subscription, status, event type or event",
    responses=_errors(401, 403, 422),
)
async def list_deliveries(
    ctx: Context,
    _manager: Manager,
    subscription_id: Annotated[
        str | None, Query(min_length=1, max_length=32, pattern=ID_PATTERN)
    ] = None,
    status_is: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    event_type: Annotated[
        str | None, Query(min_length=1, max_length=100, pattern=r"^[a-z0-9_.]+$")
    ] = None,
    event_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> DeliveryPage:
    return await service.list_deliveries(
        ctx,
        subscription_id=subscription_id,
        status=status_is,
        event_type=event_type,
        event_id=event_id,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/webhook-deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    summary="A delivery with its payload and every attempt",
    responses=_errors(401, 403, 404),
)
async def get_delivery(delivery_id: Id, ctx: Context, _manager: Manager) -> DeliveryDetail:
    return await service.get_delivery(ctx, delivery_id=delivery_id)


@router.post(
    "/webhook-deliveries/{delivery_id}/replay",
    response_model=DeliveryDetail,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a delivery again (same event id) with a fresh retry window",
    responses=_errors(401, 403, 404, 409),
)
async def replay_delivery(delivery_id: Id, ctx: Context, _manager: Manager) -> DeliveryDetail:
    return await service.replay_delivery(ctx, delivery_id=delivery_id)
