"""Orders' HTTP API: carts, checkout, orders and their life cycle, tax rates, shipping methods
and vouchers. Anonymous carts are reached with the token given at creation (``X-Cart-Token``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from ecosistema.orders import service
from ecosistema.orders.domain import FulfillmentStatus, OrderAction, OrderStatus, PaymentStatus
from ecosistema.orders.models import idempotency_keys
from ecosistema.orders.schemas import (
    Cart,
    CartCreate,
    CartItemAdd,
    CartItemUpdate,
    CartUpdate,
    CheckoutRequest,
    FulfillmentCreate,
    HistoryEntry,
    NoteCreate,
    Order,
    OrderPage,
    OrderSort,
    ReturnCreate,
    ShippingMethod,
    ShippingMethodCreate,
    ShippingMethodUpdate,
    StatusChange,
    TaxRate,
    TaxRateSet,
    Voucher,
    VoucherApply,
    VoucherCreate,
    VoucherUpdate,
)
from ecosistema.platform.auth import (
    OptionalPrincipal,
    Principal,
    document_optional_credentials,
    require,
)
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.idempotency import (
    IdempotencyKeyHeader,
    idempotent_response,
    run_idempotent,
)
from ecosistema.platform.service import ServiceContext, context_of
from ecosistema.platform.timestamps import QueryTimestamp, instant_parameter

CART_TOKEN_HEADER = "X-Cart-Token"

Context = Annotated[ServiceContext, Depends(context_of("orders"))]
CartToken = Annotated[
    str | None,
    Header(
        alias=CART_TOKEN_HEADER,
        max_length=200,
        description="The token an anonymous cart was created with.",
    ),
]
Customer = Annotated[Principal, Depends(require("orders:write_own"))]
Reader = Annotated[Principal, Depends(require("orders:read_own", "orders:read_all"))]
Staff = Annotated[Principal, Depends(require("orders:write_all"))]
Manager = Annotated[Principal, Depends(require("orders:manage"))]
Id = Annotated[str, Path(min_length=1, max_length=32)]
Sku = Annotated[str, Path(min_length=1, max_length=64)]
Code = Annotated[str, Path(min_length=1, max_length=64)]


router = APIRouter(tags=["orders"])


async def _refuse_json_null(request: Request) -> None:
    """A body that may be left out, when there is one, is an object, as every other body:
    FastAPI reads JSON ``null`` as no body at all."""
    if (await request.body()).strip():
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": None,
                }
            ]
        )


# --- carts --------------------------------------------------------------------------------------


@router.post(
    "/carts",
    response_model=Cart,
    status_code=status.HTTP_201_CREATED,
    summary="Create a cart (anonymous: keep the token; a customer's active cart is returned)",
    responses={200: {"model": Cart, "description": "The customer's active cart"}, **_errors(422)},
)
async def create_cart(
    request: Request,
    ctx: Context,
    principal: OptionalPrincipal,
    response: Response,
    data: CartCreate | None = None,
) -> Cart:
    # Every field has a default, so no body at all is an empty one.
    if data is None:
        await _refuse_json_null(request)
        data = CartCreate()
    cart, created = await service.create_cart(ctx, principal=principal, data=data)
    if not created:
        response.status_code = status.HTTP_200_OK
    if cart.token:
        response.headers[CART_TOKEN_HEADER] = cart.token
    return cart


@router.get("/carts/{cart_id}", response_model=Cart, responses=_errors(404))
async def get_cart(
    cart_id: Id, ctx: Context, principal: OptionalPrincipal, token: CartToken = None
) -> Cart:
    return await service.get_cart(ctx, cart_id=cart_id, principal=principal, token=token)


@router.patch(
    "/carts/{cart_id}",
    response_model=Cart,
    summary="Set the cart's country, shipping method, email or addresses",
    responses=_errors(404, 409, 422),
)
async def update_cart(
    cart_id: Id,
    data: CartUpdate,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
) -> Cart:
    """A field left out keeps its value; null clears it. A shipping address sets the cart's
    country (taxes follow delivery) and prices the cart again; while the cart has one, a
    different `country` alone is refused (422 on `country`)."""
    return await service.update_cart(
        ctx, cart_id=cart_id, principal=principal, token=token, data=data
    )


@router.post("/carts/{cart_id}/items", response_model=Cart, responses=_errors(404, 409, 422))
async def add_cart_item(
    cart_id: Id,
    data: CartItemAdd,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
) -> Cart:
    return await service.add_cart_item(
        ctx, cart_id=cart_id, principal=principal, token=token, data=data
    )


@router.patch("/carts/{cart_id}/items/{sku}", response_model=Cart, responses=_errors(404, 409, 422))
async def set_cart_item(
    cart_id: Id,
    sku: Sku,
    data: CartItemUpdate,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
) -> Cart:
    return await service.set_cart_item(
        ctx, cart_id=cart_id, sku=sku, principal=principal, token=token, quantity=data.quantity
    )


@router.delete("/carts/{cart_id}/items/{sku}", response_model=Cart, responses=_errors(404, 409))
async def remove_cart_item(
    cart_id: Id, sku: Sku, ctx: Context, principal: OptionalPrincipal, token: CartToken = None
) -> Cart:
    return await service.set_cart_item(
        ctx, cart_id=cart_id, sku=sku, principal=principal, token=token, quantity=0
    )


@router.post("/carts/{cart_id}/vouchers", response_model=Cart, responses=_errors(404, 409, 422))
async def apply_voucher(
    cart_id: Id,
    data: VoucherApply,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
) -> Cart:
    return await service.apply_voucher(
        ctx, cart_id=cart_id, principal=principal, token=token, code=data.code
    )


@router.delete("/carts/{cart_id}/vouchers/{code}", response_model=Cart, responses=_errors(404, 409))
async def remove_voucher(
    cart_id: Id, code: Code, ctx: Context, principal: OptionalPrincipal, token: CartToken = None
) -> Cart:
    return await service.remove_voucher(
        ctx, cart_id=cart_id, principal=principal, token=token, code=code
    )


@router.post(
    "/carts/{cart_id}/merge",
    response_model=Cart,
    summary="At sign-in: merge the anonymous cart (X-Cart-Token) into the customer's cart",
    responses=_errors(401, 403, 404, 409, 422),
)
async def merge_cart(
    cart_id: Id, ctx: Context, principal: Customer, token: CartToken = None
) -> Cart:
    """Lines are added up; the voucher, country and shipping method fill what the customer's
    cart lacks. The addresses go as a pair: a customer's cart with either keeps its own, one
    with none takes the anonymous cart's (and its country). The anonymous cart's email is
    dropped: the customer's orders go to their account's email unless they set another on
    their own cart or at checkout."""
    return await service.merge_cart(ctx, cart_id=cart_id, principal=principal, token=token)


# --- checkout and orders ------------------------------------------------------------------------


@router.post(
    "/orders",
    response_model=Order,
    status_code=status.HTTP_201_CREATED,
    summary="Check out a cart: stock is reserved and the order awaits payment",
    responses=_errors(404, 409, 422),
)
async def place_order(
    request: Request,
    data: CheckoutRequest,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """What the body leaves out comes from the cart (email, country, shipping method,
    addresses). An order with a shipping method needs a shipping address (422 on
    `shipping_address`); its country is the order's."""

    async def _place() -> tuple[int, dict[str, Any]]:
        order = await service.place_order(ctx, principal=principal, token=token, data=data)
        # The answer is kept for replays; the buyer's email is kept in it encrypted.
        return status.HTTP_201_CREATED, service.seal_order_body(ctx, order.model_dump(mode="json"))

    result = await run_idempotent(
        ctx,
        idempotency_keys,
        key=idempotency_key,
        principal_id=service.idempotency_principal(principal, token),
        method=request.method,
        path=request.url.path,
        body=data.model_dump(mode="json"),
        handler=_place,
    )
    return idempotent_response(replace(result, body=service.open_order_body(ctx, result.body)))


@router.get("/orders", response_model=OrderPage, responses=_errors(400, 401, 403, 422))
async def list_orders(
    ctx: Context,
    principal: Reader,
    status_is: Annotated[OrderStatus | None, Query(alias="status")] = None,
    fulfillment_status: Annotated[
        FulfillmentStatus | None, Query(description="Only orders whose goods are this far.")
    ] = None,
    payment_status: Annotated[
        PaymentStatus | None, Query(description="Only orders whose money is in this state.")
    ] = None,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    email: Annotated[
        str | None,
        Query(max_length=320, description="The buyer's exact email (case-insensitive)."),
    ] = None,
    created_from: Annotated[
        QueryTimestamp | None,
        Query(description="From this instant (ISO 8601; without an offset, UTC)."),
    ] = None,
    created_to: Annotated[
        QueryTimestamp | None,
        Query(description="Before this instant (ISO 8601; without an offset, UTC)."),
    ] = None,
    updated_since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Orders changed at or after this instant: an RFC 3339 date-time with "
            "its offset (`2026-11-29T10:00:00Z`; send a `+` offset as `%2B`), as products take "
            "it. With sort=updated_at, an incremental sync.",
            examples=["2026-11-29T10:00:00Z"],
        ),
    ] = None,
    sort: Annotated[
        OrderSort,
        Query(
            description="-created_at: newest first (the default); updated_at: least recently "
            "changed first, ties by id."
        ),
    ] = "-created_at",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> OrderPage:
    since = instant_parameter("updated_since", updated_since)
    return await service.list_orders(
        ctx,
        principal=principal,
        status=status_is,
        fulfillment_status=fulfillment_status,
        payment_status=payment_status,
        customer_id=customer_id,
        email=email,
        created_from=created_from,
        created_to=created_to,
        updated_since=since,
        sort=sort,
        cursor=cursor,
        limit=limit,
    )


@router.get("/orders/{order_id}", response_model=Order, responses=_errors(404))
async def get_order(
    order_id: Id, ctx: Context, principal: OptionalPrincipal, token: CartToken = None
) -> Order:
    return await service.get_order(
        ctx, order_id=order_id, principal=principal, token=token, check_access=True
    )


@router.get("/orders/{order_id}/history", response_model=list[HistoryEntry], responses=_errors(404))
async def order_history(
    order_id: Id, ctx: Context, principal: OptionalPrincipal, token: CartToken = None
) -> list[HistoryEntry]:
    return await service.order_history_of(ctx, order_id=order_id, principal=principal, token=token)


@router.post(
    "/orders/{order_id}/cancel", response_model=Order, responses=_errors(401, 403, 404, 409)
)
async def cancel_order(
    request: Request,
    order_id: Id,
    ctx: Context,
    principal: OptionalPrincipal,
    token: CartToken = None,
    data: StatusChange | None = None,
) -> Order:
    """Cancel an unpaid order: its customer, staff, or the guest who placed it, with the token
    of the cart it came from.

    The reason is shown to the buyer word for word in the cancellation mail, whoever gives it;
    staff keep an internal reason for a note (`POST /orders/{id}/notes`), which the buyer never
    sees."""
    if data is None:
        await _refuse_json_null(request)
    return await service.cancel_order(
        ctx,
        order_id=order_id,
        principal=principal,
        token=token,
        reason=data.reason if data else None,
    )


@router.post(
    "/orders/{order_id}/notes",
    response_model=HistoryEntry,
    status_code=status.HTTP_201_CREATED,
    responses=_errors(401, 403, 404, 422),
)
async def add_note(order_id: Id, data: NoteCreate, ctx: Context, principal: Staff) -> HistoryEntry:
    return await service.add_note(ctx, order_id=order_id, principal=principal, text=data.text)


@router.post(
    "/orders/{order_id}/fulfillments",
    response_model=Order,
    status_code=status.HTTP_201_CREATED,
    responses=_errors(401, 403, 404, 409, 422),
)
async def fulfil_lines(
    order_id: Id, data: FulfillmentCreate, ctx: Context, principal: Staff
) -> Order:
    return await service.fulfil_lines(ctx, order_id=order_id, principal=principal, data=data)


@router.post("/orders/{order_id}/ship", response_model=Order, responses=_errors(401, 403, 404, 409))
async def mark_shipped(
    request: Request, order_id: Id, ctx: Context, principal: Staff, data: StatusChange | None = None
) -> Order:
    if data is None:
        await _refuse_json_null(request)
    return await service.change_status(
        ctx,
        order_id=order_id,
        principal=principal,
        action=OrderAction.SHIP,
        reason=data.reason if data else None,
    )


@router.post(
    "/orders/{order_id}/deliver", response_model=Order, responses=_errors(401, 403, 404, 409)
)
async def mark_delivered(
    request: Request, order_id: Id, ctx: Context, principal: Staff, data: StatusChange | None = None
) -> Order:
    if data is None:
        await _refuse_json_null(request)
    return await service.change_status(
        ctx,
        order_id=order_id,
        principal=principal,
        action=OrderAction.DELIVER,
        reason=data.reason if data else None,
    )


@router.post(
    "/orders/{order_id}/returns",
    response_model=Order,
    status_code=status.HTTP_201_CREATED,
    responses=_errors(401, 403, 404, 409, 422),
)
async def return_lines(order_id: Id, data: ReturnCreate, ctx: Context, principal: Staff) -> Order:
    return await service.return_lines(ctx, order_id=order_id, principal=principal, data=data)


# --- shop configuration -------------------------------------------------------------------------


@router.get("/tax-rates", response_model=list[TaxRate], tags=["orders: configuration"])
async def list_tax_rates(ctx: Context) -> list[TaxRate]:
    return await service.list_tax_rates(ctx)


@router.put(
    "/tax-rates/{country}",
    response_model=TaxRate,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 422),
)
async def set_tax_rate(
    country: Annotated[str, Path(min_length=2, max_length=2)],
    data: TaxRateSet,
    ctx: Context,
    principal: Manager,
) -> TaxRate:
    return await service.set_tax_rate(ctx, country=country, data=data)


@router.delete(
    "/tax-rates/{country}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["orders: configuration"],
    summary="Stop selling to a country (its carts then cannot be checked out)",
    responses=_errors(401, 403, 404, 422),
)
async def delete_tax_rate(
    country: Annotated[str, Path(min_length=2, max_length=2)],
    ctx: Context,
    principal: Manager,
) -> Response:
    await service.delete_tax_rate(ctx, country=country)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/shipping-methods",
    response_model=list[ShippingMethod],
    tags=["orders: configuration"],
    responses=_errors(401, 403),
)
async def list_shipping_methods(
    ctx: Context,
    principal: OptionalPrincipal,
    include_inactive: Annotated[
        bool,
        Query(description="Inactive methods too (`orders:manage` only: 401 anonymous, 403 else)."),
    ] = False,
) -> list[ShippingMethod]:
    return await service.list_shipping_methods(
        ctx, principal=principal, include_inactive=include_inactive
    )


@router.post(
    "/shipping-methods",
    response_model=ShippingMethod,
    status_code=status.HTTP_201_CREATED,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 409, 422),
)
async def create_shipping_method(
    data: ShippingMethodCreate, ctx: Context, principal: Manager
) -> ShippingMethod:
    return await service.create_shipping_method(ctx, data)


@router.patch(
    "/shipping-methods/{code}",
    response_model=ShippingMethod,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 404, 422),
)
async def update_shipping_method(
    code: Code, data: ShippingMethodUpdate, ctx: Context, principal: Manager
) -> ShippingMethod:
    return await service.update_shipping_method(ctx, code=code, data=data)


@router.get(
    "/vouchers",
    response_model=list[Voucher],
    tags=["orders: configuration"],
    responses=_errors(401, 403),
)
async def list_vouchers(ctx: Context, principal: Manager) -> list[Voucher]:
    return await service.list_vouchers(ctx)


@router.post(
    "/vouchers",
    response_model=Voucher,
    status_code=status.HTTP_201_CREATED,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 409, 422),
)
async def create_voucher(data: VoucherCreate, ctx: Context, principal: Manager) -> Voucher:
    return await service.create_voucher(ctx, data)


@router.get(
    "/vouchers/{code}",
    response_model=Voucher,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 404),
)
async def get_voucher(code: Code, ctx: Context, principal: Manager) -> Voucher:
    return await service.get_voucher(ctx, code=code)


@router.patch(
    "/vouchers/{code}",
    response_model=Voucher,
    tags=["orders: configuration"],
    responses=_errors(401, 403, 404, 422),
)
async def update_voucher(
    code: Code, data: VoucherUpdate, ctx: Context, principal: Manager
) -> Voucher:
    return await service.update_voucher(ctx, code=code, data=data)


document_optional_credentials(router)
