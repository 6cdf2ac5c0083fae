"""HTTP for payments: intents, capture, void, refunds, invoices, provider webhooks, reports.

Every POST takes an ``Idempotency-Key``: the same key and body replay the first answer. A guest
(no account) creates, reads, confirms and cancels the payment of their order with the token of
the cart the order came from (``X-Cart-Token``), as they read the order itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from pydantic import BaseModel
from starlette.responses import Response

from ecosistema.payments import service
from ecosistema.payments.domain import PaymentStatus, Period
from ecosistema.payments.models import idempotency
from ecosistema.payments.schemas import (
    Invoice,
    InvoicePage,
    Payment,
    PaymentCancel,
    PaymentCapture,
    PaymentConfirm,
    PaymentCreate,
    PaymentPage,
    Refund,
    RefundCreate,
    RefundList,
    SalesReport,
    WebhookAck,
)
from ecosistema.platform.auth import (
    CurrentPrincipal,
    OptionalPrincipal,
    Principal,
    document_optional_credentials,
)
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.errors import field_error
from ecosistema.platform.idempotency import (
    IdempotencyKeyHeader,
    idempotent_response,
    run_idempotent,
)
from ecosistema.platform.money import UnknownCurrency, iso_currency
from ecosistema.platform.service import ServiceContext, context_of

router = APIRouter(tags=["payments"])
Context = Annotated[ServiceContext, Depends(context_of("payments"))]
PaymentId = Annotated[str, Path(min_length=1, max_length=64)]
CART_TOKEN_HEADER = "X-Cart-Token"
CartToken = Annotated[
    str | None,
    Header(
        alias=CART_TOKEN_HEADER,
        max_length=200,
        description="A guest's cart token: the cart the order was placed from.",
    ),
]


def _caller_id(principal: Principal | None, cart_token: str | None) -> str | None:
    """Whose idempotency keys a request shares: the signed-in caller, or the guest's cart
    token (hashed), so one guest's keys never meet another's; ``None`` for neither."""
    if principal is not None:
        return principal.subject
    if cart_token:
        return "guest:" + hashlib.sha256(cart_token.encode()).hexdigest()[:32]
    return None


async def _idempotent(
    ctx: ServiceContext,
    request: Request,
    principal: Principal | None,
    key: str | None,
    body: BaseModel | None,
    status_code: int,
    use_case: Callable[[], Awaitable[BaseModel]],
    cart_token: str | None = None,
) -> Response:
    async def handler() -> tuple[int, dict[str, Any]]:
        return status_code, (await use_case()).model_dump(mode="json")

    caller = _caller_id(principal, cart_token)
    result = await run_idempotent(
        ctx,
        idempotency,
        # Without credentials or a cart token the use case answers 404: nothing to keep.
        key=key if caller is not None else None,
        principal_id=caller or "",
        method=request.method,
        path=request.url.path,
        body=body.model_dump(mode="json") if body is not None else None,
        handler=handler,
    )
    return idempotent_response(result)


@router.post(
    "/payments",
    response_model=Payment,
    status_code=status.HTTP_201_CREATED,
    summary="Create a payment intent for an order (confirmed at once with a payment method); "
    "a guest sends their cart token",
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def create_payment(
    body: PaymentCreate,
    request: Request,
    ctx: Context,
    principal: OptionalPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
    cart_token: CartToken = None,
) -> Response:
    return await _idempotent(
        ctx,
        request,
        principal,
        idempotency_key,
        body,
        201,
        lambda: service.create_payment(ctx, principal=principal, data=body, cart_token=cart_token),
        cart_token,
    )


@router.get(
    "/payments",
    response_model=PaymentPage,
    summary="Payments, newest first (customers see their own)",
    responses=_errors(401, 403, 422),
)
async def list_payments(
    ctx: Context,
    principal: CurrentPrincipal,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[PaymentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PaymentPage:
    return await service.list_payments(
        ctx, principal=principal, order_id=order_id, status=status_, limit=limit, cursor=cursor
    )


@router.get(
    "/payments/{payment_id}",
    response_model=Payment,
    summary="One payment (a guest sends their cart token)",
    responses=_errors(401, 403, 404),
)
async def get_payment(
    payment_id: PaymentId,
    ctx: Context,
    principal: OptionalPrincipal,
    cart_token: CartToken = None,
) -> Payment:
    return await service.get_payment(
        ctx, principal=principal, payment_id=payment_id, cart_token=cart_token
    )


@router.post(
    "/payments/{payment_id}/confirm",
    response_model=Payment,
    summary="Confirm with a payment method, or finish a required action (3-D Secure)",
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def confirm_payment(
    payment_id: PaymentId,
    request: Request,
    ctx: Context,
    principal: OptionalPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
    cart_token: CartToken = None,
    body: PaymentConfirm | None = None,
) -> Response:
    data = body or PaymentConfirm()
    return await _idempotent(
        ctx,
        request,
        principal,
        idempotency_key,
        data,
        200,
        lambda: service.confirm_payment(
            ctx,
            principal=principal,
            payment_id=payment_id,
            payment_method=data.payment_method,
            cart_token=cart_token,
        ),
        cart_token,
    )


@router.post(
    "/payments/{payment_id}/capture",
    response_model=Payment,
    summary="Capture all or part of an authorization (staff)",
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def capture_payment(
    payment_id: PaymentId,
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
    body: PaymentCapture | None = None,
) -> Response:
    data = body or PaymentCapture()
    return await _idempotent(
        ctx,
        request,
        principal,
        idempotency_key,
        data,
        200,
        lambda: service.capture_payment(
            ctx, principal=principal, payment_id=payment_id, amount=data.amount_to_capture
        ),
    )


@router.post(
    "/payments/{payment_id}/cancel",
    response_model=Payment,
    summary="Cancel a payment that took no money (voids an authorization)",
    responses=_errors(401, 403, 404, 409, 503),
)
async def cancel_payment(
    payment_id: PaymentId,
    request: Request,
    ctx: Context,
    principal: OptionalPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
    cart_token: CartToken = None,
    body: PaymentCancel | None = None,
) -> Response:
    return await _idempotent(
        ctx,
        request,
        principal,
        idempotency_key,
        body or PaymentCancel(),
        200,
        lambda: service.cancel_payment(
            ctx,
            principal=principal,
            payment_id=payment_id,
            reason=body.reason if body is not None else None,
            cart_token=cart_token,
        ),
        cart_token,
    )


@router.post(
    "/payments/{payment_id}/refunds",
    response_model=Refund,
    status_code=status.HTTP_201_CREATED,
    summary="Refund an amount, some lines, or the rest (staff)",
    responses=_errors(401, 403, 404, 409, 422, 503),
)
async def create_refund(
    payment_id: PaymentId,
    body: RefundCreate,
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _idempotent(
        ctx,
        request,
        principal,
        idempotency_key,
        body,
        201,
        lambda: service.create_refund(ctx, principal=principal, payment_id=payment_id, data=body),
    )


@router.get(
    "/payments/{payment_id}/refunds",
    response_model=RefundList,
    summary="A payment's refunds",
    responses=_errors(401, 403, 404),
)
async def list_refunds(
    payment_id: PaymentId, ctx: Context, principal: CurrentPrincipal
) -> RefundList:
    return await service.list_refunds(ctx, principal=principal, payment_id=payment_id)


@router.get(
    "/invoices",
    response_model=InvoicePage,
    summary="Invoices and credit notes, newest first (customers their own, a guest their order's)",
    responses=_errors(401, 403, 404, 422),
)
async def list_invoices(
    ctx: Context,
    principal: OptionalPrincipal,
    cart_token: CartToken = None,
    order_id: Annotated[
        str | None, Query(max_length=64, description="Required of a guest (cart token).")
    ] = None,
    kind: Annotated[Literal["invoice", "credit_note"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> InvoicePage:
    return await service.list_invoices(
        ctx,
        principal=principal,
        cart_token=cart_token,
        order_id=order_id,
        kind=kind,
        limit=limit,
        cursor=cursor,
    )


@router.get(
    "/invoices/{invoice_id}",
    response_model=Invoice,
    summary="One invoice or credit note, as JSON",
    responses=_errors(401, 403, 404),
)
async def get_invoice(
    invoice_id: Annotated[str, Path(min_length=1, max_length=64)],
    ctx: Context,
    principal: OptionalPrincipal,
    cart_token: CartToken = None,
) -> Invoice:
    return await service.get_invoice(
        ctx, principal=principal, invoice_id=invoice_id, cart_token=cart_token
    )


@router.post(
    "/webhooks/providers/{provider}",
    response_model=WebhookAck,
    summary="Signed events from a payment provider (Stripe-Signature header)",
    responses=_errors(401, 404, 422),
)
async def provider_webhook(
    provider: Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")],
    request: Request,
    ctx: Context,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAck:
    payload = await request.body()
    return await service.receive_provider_event(
        ctx, provider=provider, payload=payload, signature=stripe_signature
    )


@router.get(
    "/reports/sales",
    response_model=SalesReport,
    summary="Revenue, refunds, net, orders and average order value by period; top products",
    responses={
        **_errors(401, 403, 422),
        200: {"content": {"application/json": {}, "text/csv": {}}},
    },
)
async def sales_report(
    ctx: Context,
    principal: CurrentPrincipal,
    group_by: Period = Period.DAY,
    currency: Annotated[
        str | None, Query(pattern=r"^[A-Za-z]{3}$", description="ISO 4217 code, any case.")
    ] = None,
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    top: Annotated[int, Query(ge=0, le=1000, description="How many top products.")] = 10,
    table: Annotated[
        Literal["periods", "products"],
        Query(description="With format=csv: the period rows or the top products."),
    ] = "periods",
) -> Any:
    if currency is not None:
        try:
            currency = iso_currency(currency)
        except UnknownCurrency as exc:
            raise field_error("currency", str(exc)) from None
    report = await service.sales_report(
        ctx,
        principal=principal,
        group_by=group_by,
        currency=currency,
        start=from_,
        end=to,
        top=top,
    )
    if format == "csv":
        products = table == "products"
        return Response(
            service.top_products_csv(report) if products else service.sales_report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="%s.csv"'
                % ("top-products" if products else "sales")
            },
        )
    return report


document_optional_credentials(router)
