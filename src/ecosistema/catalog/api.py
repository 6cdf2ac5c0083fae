"""Catalog's HTTP API: products, variants, categories, price lists, warehouses, inventory,
search, import and export. Staff write; anyone reads active products."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from pydantic_core import to_json

from ecosistema.catalog import inventory, service, transfer
from ecosistema.catalog.models import idempotency_keys
from ecosistema.catalog.reads import ProductDocument, etag_of
from ecosistema.catalog.schemas import (
    Availability,
    AvailabilityList,
    Category,
    CategoryCreate,
    CategoryUpdate,
    ImportMode,
    ImportReport,
    MovementPage,
    PriceList,
    PriceListCreate,
    PriceListCustomers,
    PriceListPrice,
    PriceListPrices,
    PriceListUpdate,
    Product,
    ProductCreate,
    ProductPage,
    ProductUpdate,
    QuoteRequest,
    ReleaseRequest,
    ReservationRequest,
    RestockRequest,
    SearchSort,
    SkuReference,
    StockAdjustment,
    TransferFormat,
    Variant,
    VariantCreate,
    VariantQuote,
    VariantUpdate,
    Warehouse,
    WarehouseCreate,
)
from ecosistema.catalog.search import SearchQuery, search_page
from ecosistema.platform.auth import (
    OptionalPrincipal,
    Principal,
    current_principal,
    document_optional_credentials,
    require,
)
from ecosistema.platform.edge import FastRequest, FastResponse, serve_fast
from ecosistema.platform.errors import (
    NotFound,
    field_error,
    refuse_inverted_range,
)
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.idempotency import (
    IdempotencyKeyHeader,
    idempotent_response,
    run_idempotent,
)
from ecosistema.platform.money import UnknownCurrency, iso_currency
from ecosistema.platform.policy import Role, ensure
from ecosistema.platform.service import ServiceContext, context_of
from ecosistema.platform.timestamps import instant_parameter

Context = Annotated[ServiceContext, Depends(context_of("catalog"))]
# Lost-update protection for a product's writes: the ETag a GET of the product gave.
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=1000)]
CatalogWriter = Annotated[Principal, Depends(require("catalog:write"))]
InventoryReader = Annotated[Principal, Depends(require("inventory:read"))]
InventoryWriter = Annotated[Principal, Depends(require("inventory:write"))]

STAFF_PERMISSION = "catalog:write"


def _is_staff(principal: Principal | None) -> bool:
    return principal is not None and STAFF_PERMISSION in principal.permissions


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (weak comparison, as RFC 9110 says)."""
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


def _cache_control(public: bool, fresh_until: float | None = None) -> str:
    value = ("public" if public else "private") + ", no-cache"
    if public and fresh_until is not None:
        # A shared cache (the gateway's) keeps it no longer than until its prices change.
        value += f", s-maxage={max(0, int(fresh_until - time.time()))}"
    return value


def _json_with_etag(
    request: Request, body: bytes, etag: str, *, public: bool, fresh_until: float | None = None
) -> Response:
    headers = {"ETag": etag, "Cache-Control": _cache_control(public, fresh_until)}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _fast_json_with_etag(
    request: FastRequest, body: bytes, etag: str, fresh_until: float | None = None
) -> FastResponse:
    """``_json_with_etag`` for a fast handler, for public documents."""
    headers = [
        (b"etag", etag.encode()),
        (b"cache-control", _cache_control(True, fresh_until).encode()),
    ]
    if _matches(request.header(b"if-none-match"), etag):
        return FastResponse(status.HTTP_304_NOT_MODIFIED, b"", headers)
    return FastResponse(
        status.HTTP_200_OK, body, [(b"content-type", b"application/json"), *headers]
    )


def _etagged(request: Request, value: Any, *, public: bool) -> Response:
    """Serialize a response model (or a list of them) with an ETag, honouring If-None-Match."""
    body = to_json(value)
    return _json_with_etag(request, body, etag_of(body), public=public)


router = APIRouter(tags=["catalog"])

_CACHED_READ: dict[int | str, dict[str, Any]] = {
    200: {"description": "The resource; carries an ETag"},
    304: {"description": "Not modified since the ETag sent in If-None-Match"},
}


# --- products -----------------------------------------------------------------------------------


def _options(raw: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name or not value or len(name) > 50 or len(value) > 100:
            raise field_error("option", "use name:value, e.g. colour:red")
        pairs.append((name, value))
    return tuple(sorted(pairs))


@router.get(
    "/products",
    response_model=ProductPage,
    summary="List and search products: ranked text search, filters, sorting, cursor pages",
    responses={**_CACHED_READ, 200: {"model": ProductPage}, **_errors(401, 422)},
)
async def list_products(
    request: Request,
    ctx: Context,
    principal: OptionalPrincipal,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Words to search for (every word, as a prefix). Quotes, operators and "
            "other punctuation are not search syntax; a query without any letter or digit "
            "matches nothing.",
        ),
    ] = None,
    category_id: Annotated[
        str | None, Query(max_length=64, description="Within this category or below it.")
    ] = None,
    currency: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=3,
            description="ISO 4217 currency of the shown prices and of `min_price`/`max_price`; "
            "when absent, the catalogue's default currency "
            "(`ECOSISTEMA_CATALOG_DEFAULT_CURRENCY`).",
        ),
    ] = None,
    min_price: Annotated[
        int | None,
        Query(
            ge=0,
            le=10**12,
            description="Lowest regular price, in minor units of `currency` (or of the "
            "default currency when `currency` is absent).",
        ),
    ] = None,
    max_price: Annotated[
        int | None,
        Query(
            ge=0,
            le=10**12,
            description="Highest regular price, in minor units of `currency` (or of the "
            "default currency when `currency` is absent).",
        ),
    ] = None,
    in_stock: Annotated[bool, Query(description="Only products with stock available.")] = False,
    option: Annotated[
        list[str], Query(max_length=10, description="name:value, e.g. colour:red")
    ] = [],  # noqa: B006 - FastAPI reads the default, it is never mutated
    status_: Annotated[
        list[str] | None,
        Query(alias="status", max_length=3, description="Staff only: draft, active, archived."),
    ] = None,
    updated_since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only products changed at or after this instant: an RFC 3339 "
            "date-time with its offset (`2026-11-29T10:00:00Z`; send a `+` offset as `%2B`). "
            "A product changes when it, one of its variants or their prices are written. "
            "Without `q`, the default sort is then `updated_at`.",
            examples=["2026-11-29T10:00:00Z"],
        ),
    ] = None,
    sort: Annotated[
        SearchSort | None,
        Query(
            description="Default: `relevance` with `q`, else `updated_at` with "
            "`updated_since`, else `newest`. `updated_at` is oldest change first, ties by id."
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    staff = _is_staff(principal)
    refuse_inverted_range("min_price", min_price, "max_price", max_price, relation="above")
    since = instant_parameter("updated_since", updated_since)
    try:
        chosen = iso_currency(currency or ctx.settings.catalog_default_currency)
    except UnknownCurrency as exc:
        raise field_error("currency", str(exc)) from None
    statuses: tuple[str, ...] = ("active",)
    if status_:
        if not staff:
            raise field_error("status", "only staff may list drafts or archived products")
        if any(s not in ("draft", "active", "archived") for s in status_):
            raise field_error("status", "one of draft, active, archived")
        statuses = tuple(sorted(set(status_)))
    query = SearchQuery(
        text=q,
        category_id=category_id,
        currency=chosen,
        min_price=min_price,
        max_price=max_price,
        in_stock=in_stock,
        options=_options(option),
        statuses=statuses,
        updated_since=since,
        sort=sort or ("updated_at" if since is not None and not q else "relevance"),
        limit=limit,
        cursor=cursor,
    )
    body, fresh_until = await _cached_search(ctx, query)
    return _json_with_etag(request, body, etag_of(body), public=not staff, fresh_until=fresh_until)


async def _cached_search(ctx: ServiceContext, query: SearchQuery) -> tuple[bytes, float | None]:
    """A search page's JSON, and until when its prices hold (a sale starting or ending)."""
    generation = await service.cache_generation(ctx)
    fresh_until = await service.next_price_change(ctx, generation)
    ttl = ctx.settings.catalog_cache_seconds
    if fresh_until is not None:
        ttl = min(ttl, fresh_until - time.time())
    key = ""
    if ttl > 0:
        digest = hashlib.blake2b(
            f"{query.fingerprint()}|{query.cursor}".encode(), digest_size=16
        ).hexdigest()
        key = f"catalog:search:{generation}:{digest}"
        cached = await ctx.cache.get(key)
        if cached is not None:
            return cached, fresh_until
    body = to_json(await search_page(ctx.db, query))
    if key:
        await ctx.cache.set(key, body, ttl=ttl)
    return body, fresh_until


@router.post(
    "/products",
    response_model=Product,
    status_code=status.HTTP_201_CREATED,
    summary="Create a product with its variants and prices (staff)",
    responses=_errors(401, 403, 409, 422),
)
async def create_product(
    request: Request,
    body: ProductCreate,
    ctx: Context,
    staff: CatalogWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    answer = await _once(
        request, ctx, staff, idempotency_key, body, lambda: service.create_product(ctx, body)
    )
    if answer.status_code == status.HTTP_201_CREATED:
        created = json.loads(bytes(answer.body))
        answer.headers["Location"] = f"/api/v1/products/{created['id']}"
    return answer


@router.get(
    "/products/export",
    summary="Export every product as CSV or JSON Lines, streamed (staff)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, **_errors(401, 403)},
)
async def export_products(
    ctx: Context,
    _staff: CatalogWriter,
    format: Annotated[TransferFormat, Query()] = "jsonl",
) -> StreamingResponse:
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    filename = f"products.{format}"
    return StreamingResponse(
        transfer.export_chunks(ctx, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post(
    "/products/import",
    response_model=ImportReport,
    summary="Import products from a CSV or JSON Lines body, streamed (staff)",
    description="The body is read as it arrives and spooled to disk, never held whole in "
    "memory. `all-or-nothing` validates every row first and applies nothing if any is bad; "
    "`skip-invalid` applies the good rows and reports each skipped one by line number "
    "(200). When `all-or-nothing` applied nothing because of bad rows the answer is a 422 "
    "problem of type `import-rejected` whose `errors` have one entry per problem of each "
    "refused row (`line`, `field`, `message`, `code`, and the row's `reason`, `sku`, `slug` "
    "and `problems`) and whose `report` holds the counts.",
    responses=_errors(400, 401, 403, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        }
    },
)
async def import_products(
    request: Request,
    ctx: Context,
    _staff: CatalogWriter,
    format: Annotated[TransferFormat | None, Query(description="Default: by Content-Type.")] = None,
    mode: Annotated[ImportMode, Query()] = "all-or-nothing",
) -> ImportReport:
    chosen = format or transfer.format_for_content_type(request.headers.get("content-type"))
    report = await transfer.import_stream(ctx, request.stream(), format=chosen, mode=mode)
    if not report.applied:
        raise transfer.ImportRejected(report)
    return report


def _product_answer(
    request: Request,
    document: ProductDocument,
    principal: Principal | None,
    not_found: str,
) -> Response:
    """A product's cached document, ETagged; drafts and archived ones for staff only."""
    if not service.visible(document.status, staff=_is_staff(principal)):
        raise NotFound(not_found)
    return _json_with_etag(
        request,
        document.body,
        document.etag,
        public=document.status == "active",
        fresh_until=document.changes_at,
    )


def _fast_product_answer(
    request: FastRequest, document: ProductDocument, not_found: str
) -> FastResponse:
    """``_product_answer`` for callers without credentials: active products only."""
    if not service.visible(document.status, staff=False):
        raise NotFound(not_found)
    return _fast_json_with_etag(request, document.body, document.etag, document.changes_at)


@router.get(
    "/products/by-slug/{slug}",
    response_model=None,
    summary="A product by its slug, with its variants and prices (drafts for staff only)",
    description="What a storefront with slug URLs reads: the same document, ETag and caching "
    "as `GET /products/{product_id}`. A slug no product has, or a draft or archived product's "
    "asked without `catalog:write`, is a 404.",
    responses={**_CACHED_READ, 200: {"model": Product}, **_errors(401, 404)},
)
async def get_product_by_slug(
    slug: str, request: Request, ctx: Context, principal: OptionalPrincipal
) -> Response:
    document = await service.product_document_by_slug(ctx, slug)
    return _product_answer(request, document, principal, service.PRODUCT_SLUG_NOT_FOUND)


async def _get_product_by_slug_anonymously(request: FastRequest) -> FastResponse | None:
    """``get_product_by_slug`` for callers without credentials: active products only."""
    ctx: ServiceContext = request.app.state.runtime.contexts["catalog"]
    document = await service.product_document_by_slug(ctx, request.path_params["slug"])
    return _fast_product_answer(request, document, service.PRODUCT_SLUG_NOT_FOUND)


serve_fast(get_product_by_slug, _get_product_by_slug_anonymously)


@router.get(
    "/products/{product_id}",
    response_model=None,
    summary="A product with its variants and prices (drafts for staff only)",
    responses={**_CACHED_READ, 200: {"model": Product}, **_errors(401, 404)},
)
async def get_product(
    product_id: str, request: Request, ctx: Context, principal: OptionalPrincipal
) -> Response:
    document = await service.product_document(ctx, product_id)
    return _product_answer(request, document, principal, service.PRODUCT_NOT_FOUND)


async def _get_product_anonymously(request: FastRequest) -> FastResponse | None:
    """``get_product`` for callers without credentials (shoppers): active products only."""
    ctx: ServiceContext = request.app.state.runtime.contexts["catalog"]
    document = await service.product_document(ctx, request.path_params["product_id"])
    return _fast_product_answer(request, document, service.PRODUCT_NOT_FOUND)


# The storefront's hottest read skips the framework's routing and dependency resolution; signed-in
# callers (staff may see drafts) take the route above.
serve_fast(get_product, _get_product_anonymously)


@router.patch(
    "/products/{product_id}",
    response_model=Product,
    summary="Change a product (staff)",
    description="With `If-Match` (the ETag of a `GET` of the product), only while the product "
    "is still as read: else 412, nothing changed. The answer carries the product's new ETag.",
    responses=_errors(401, 403, 404, 409, 412, 422),
)
async def update_product(
    product_id: str,
    body: ProductUpdate,
    ctx: Context,
    _staff: CatalogWriter,
    response: Response,
    if_match: IfMatch = None,
) -> Product:
    product = await service.update_product(ctx, product_id, body, if_match=if_match)
    response.headers["ETag"] = (await service.product_document(ctx, product_id)).etag
    return product


@router.delete(
    "/products/{product_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Archive a product (staff); orders that refer to it keep working",
    responses=_errors(401, 403, 404),
)
async def archive_product(product_id: str, ctx: Context, _staff: CatalogWriter) -> Response:
    await service.archive_product(ctx, product_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/products/{product_id}/variants",
    response_model=list[Variant],
    summary="A product's variants with their prices",
    responses={**_CACHED_READ, **_errors(401, 404)},
)
async def list_variants(
    product_id: str, request: Request, ctx: Context, principal: OptionalPrincipal
) -> Response:
    staff = _is_staff(principal)
    found = await service.list_variants(ctx, product_id, staff=staff)
    return _etagged(request, found, public=not staff)


@router.post(
    "/products/{product_id}/variants",
    response_model=Variant,
    status_code=status.HTTP_201_CREATED,
    summary="Add a variant (staff)",
    responses=_errors(401, 403, 404, 409, 422),
)
async def add_variant(
    request: Request,
    product_id: str,
    body: VariantCreate,
    ctx: Context,
    staff: CatalogWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request,
        ctx,
        staff,
        idempotency_key,
        body,
        lambda: service.add_variant(ctx, product_id, body),
    )


@router.patch(
    "/products/{product_id}/variants/{variant_id}",
    response_model=Variant,
    summary="Change a variant; given prices replace the current ones (staff)",
    description="With `If-Match` (the ETag of a `GET` of the product), only while the product "
    "is still as read: else 412, nothing changed. The answer carries the product's new ETag.",
    responses=_errors(401, 403, 404, 412, 422),
)
async def update_variant(
    product_id: str,
    variant_id: str,
    body: VariantUpdate,
    ctx: Context,
    _staff: CatalogWriter,
    response: Response,
    if_match: IfMatch = None,
) -> Variant:
    variant = await service.update_variant(ctx, product_id, variant_id, body, if_match=if_match)
    response.headers["ETag"] = (await service.product_document(ctx, product_id)).etag
    return variant


@router.delete(
    "/products/{product_id}/variants/{variant_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a variant that holds no stock (staff)",
    responses=_errors(401, 403, 404, 409),
)
async def delete_variant(
    product_id: str, variant_id: str, ctx: Context, _staff: CatalogWriter
) -> Response:
    await service.delete_variant(ctx, product_id, variant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- categories ---------------------------------------------------------------------------------


@router.get(
    "/categories",
    response_model=None,
    summary="The category tree, parents before children",
    description="The whole tree as one JSON array, sorted by `path` (each parent before its "
    "children), not paginated: a tree is small, and a storefront draws its navigation from "
    "one read.",
    responses={**_CACHED_READ, 200: {"model": list[Category]}},
)
async def list_categories(request: Request, ctx: Context) -> Response:
    return _etagged(request, await service.list_categories(ctx), public=True)


@router.post(
    "/categories",
    response_model=Category,
    status_code=status.HTTP_201_CREATED,
    summary="Add a category (staff)",
    responses=_errors(401, 403, 409, 422),
)
async def create_category(
    request: Request,
    body: CategoryCreate,
    ctx: Context,
    staff: CatalogWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request, ctx, staff, idempotency_key, body, lambda: service.create_category(ctx, body)
    )


@router.get(
    "/categories/{category_id}",
    response_model=Category,
    summary="One category",
    responses={**_CACHED_READ, **_errors(404)},
)
async def get_category(category_id: str, request: Request, ctx: Context) -> Response:
    return _etagged(request, await service.get_category(ctx, category_id), public=True)


@router.patch(
    "/categories/{category_id}",
    response_model=Category,
    summary="Rename, re-describe, re-slug or move a category (staff)",
    description="Only the fields given change. `parent_id` moves the category, with every "
    "category below it, under another one (`null`: to the root); moving it under itself or "
    "one of its descendants is a 422 on `parent_id`. A new `slug` must be free (409 "
    "`slug-taken`, `errors` at `slug`). A move or a new slug rewrites the `path` of the "
    "category and of every category below it.",
    responses=_errors(401, 403, 404, 409, 422),
)
async def update_category(
    category_id: str, body: CategoryUpdate, ctx: Context, _staff: CatalogWriter
) -> Category:
    return await service.update_category(ctx, category_id, body)


@router.delete(
    "/categories/{category_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an empty category (staff)",
    responses=_errors(401, 403, 404, 409),
)
async def delete_category(category_id: str, ctx: Context, _staff: CatalogWriter) -> Response:
    await service.delete_category(ctx, category_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- price lists --------------------------------------------------------------------------------


@router.get(
    "/price-lists",
    response_model=list[PriceList],
    summary="Every price list (staff)",
    responses={**_CACHED_READ, **_errors(401, 403)},
)
async def list_price_lists(request: Request, ctx: Context, _staff: CatalogWriter) -> Response:
    return _etagged(request, await service.list_price_lists(ctx), public=False)


@router.post(
    "/price-lists",
    response_model=PriceList,
    status_code=status.HTTP_201_CREATED,
    summary="Add a price list, e.g. wholesale (staff)",
    responses=_errors(401, 403, 409, 422),
)
async def create_price_list(
    request: Request,
    body: PriceListCreate,
    ctx: Context,
    staff: CatalogWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request, ctx, staff, idempotency_key, body, lambda: service.create_price_list(ctx, body)
    )


@router.get(
    "/price-lists/{price_list_id}",
    response_model=PriceList,
    summary="One price list (staff)",
    responses={**_CACHED_READ, **_errors(401, 403, 404)},
)
async def get_price_list(
    price_list_id: str, request: Request, ctx: Context, _staff: CatalogWriter
) -> Response:
    return _etagged(request, await service.get_price_list(ctx, price_list_id), public=False)


@router.patch(
    "/price-lists/{price_list_id}",
    response_model=PriceList,
    summary="Rename a price list (staff)",
    responses=_errors(401, 403, 404, 422),
)
async def update_price_list(
    price_list_id: str, body: PriceListUpdate, ctx: Context, _staff: CatalogWriter
) -> PriceList:
    return await service.update_price_list(ctx, price_list_id, body)


@router.delete(
    "/price-lists/{price_list_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a price list, its prices and its customer assignments (staff)",
    responses=_errors(401, 403, 404),
)
async def delete_price_list(price_list_id: str, ctx: Context, _staff: CatalogWriter) -> Response:
    await service.delete_price_list(ctx, price_list_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/price-lists/{price_list_id}/prices",
    response_model=list[PriceListPrice],
    summary="A price list's prices by SKU and currency (staff)",
    responses={**_CACHED_READ, **_errors(401, 403, 404)},
)
async def get_price_list_prices(
    price_list_id: str, request: Request, ctx: Context, _staff: CatalogWriter
) -> Response:
    found = await service.get_price_list_prices(ctx, price_list_id)
    return _etagged(request, found, public=False)


@router.put(
    "/price-lists/{price_list_id}/prices",
    response_model=list[PriceListPrice],
    summary="Replace a price list's prices (staff)",
    responses=_errors(401, 403, 404, 422),
)
async def set_price_list_prices(
    price_list_id: str, body: PriceListPrices, ctx: Context, _staff: CatalogWriter
) -> list[PriceListPrice]:
    return await service.set_price_list_prices(ctx, price_list_id, body.prices)


@router.get(
    "/price-lists/{price_list_id}/customers",
    response_model=PriceListCustomers,
    summary="The customers a price list applies to (staff)",
    responses={**_CACHED_READ, **_errors(401, 403, 404)},
)
async def get_price_list_customers(
    price_list_id: str, request: Request, ctx: Context, _staff: CatalogWriter
) -> Response:
    ids = await service.get_price_list_customers(ctx, price_list_id)
    return _etagged(request, PriceListCustomers(customer_ids=ids), public=False)


@router.put(
    "/price-lists/{price_list_id}/customers",
    response_model=PriceListCustomers,
    summary="Replace the customers a price list applies to (staff)",
    responses=_errors(401, 403, 404, 422),
)
async def set_price_list_customers(
    price_list_id: str, body: PriceListCustomers, ctx: Context, _staff: CatalogWriter
) -> PriceListCustomers:
    ids = await service.set_price_list_customers(ctx, price_list_id, body.customer_ids)
    return PriceListCustomers(customer_ids=ids)


# --- warehouses and inventory -------------------------------------------------------------------


@router.get(
    "/warehouses",
    response_model=list[Warehouse],
    summary="Every warehouse, in shipping order",
    responses={**_CACHED_READ, **_errors(401, 403)},
)
async def list_warehouses(request: Request, ctx: Context, _reader: InventoryReader) -> Response:
    return _etagged(request, await service.list_warehouses(ctx), public=False)


@router.post(
    "/warehouses",
    response_model=Warehouse,
    status_code=status.HTTP_201_CREATED,
    summary="Add a warehouse (staff)",
    responses=_errors(401, 403, 409, 422),
)
async def create_warehouse(
    request: Request,
    body: WarehouseCreate,
    ctx: Context,
    writer: InventoryWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request, ctx, writer, idempotency_key, body, lambda: service.create_warehouse(ctx, body)
    )


@router.get(
    "/availability",
    response_model=AvailabilityList,
    summary="How many units of each SKU can be bought now (anyone; active products only)",
    responses=_errors(422),
)
async def get_shopper_availability(
    response: Response,
    ctx: Context,
    sku: Annotated[
        list[SkuReference],
        Query(
            min_length=1,
            max_length=100,
            description="A SKU; repeat for several (up to 100): ?sku=A&sku=B.",
        ),
    ],
) -> AvailabilityList:
    # Stock moves with every order: a browser or proxy asks again rather than reuse an answer.
    response.headers["Cache-Control"] = "no-store"
    return await inventory.shopper_availability(ctx, sku)


@router.get(
    "/inventory/{sku}",
    response_model=Availability,
    summary="A SKU's stock per warehouse: on hand, reserved, available",
    responses={**_CACHED_READ, **_errors(401, 403, 404)},
)
async def get_availability(
    sku: str, request: Request, ctx: Context, _reader: InventoryReader
) -> Response:
    return _etagged(request, await inventory.availability(ctx, sku), public=False)


@router.post(
    "/inventory/{sku}/adjustments",
    response_model=Availability,
    status_code=status.HTTP_201_CREATED,
    summary="Receive, count or write off stock (staff); recorded as a movement",
    responses=_errors(401, 403, 404, 409, 422),
)
async def adjust_stock(
    request: Request,
    sku: str,
    body: StockAdjustment,
    ctx: Context,
    writer: InventoryWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _once(
        request,
        ctx,
        writer,
        idempotency_key,
        body,
        lambda: inventory.adjust_stock(ctx, sku, body, actor=writer.actor),
    )


@router.get(
    "/inventory/{sku}/movements",
    response_model=MovementPage,
    summary="A SKU's stock movements, newest first: who, why, by how much",
    responses={**_CACHED_READ, **_errors(401, 403, 404, 422)},
)
async def list_movements(
    sku: str,
    request: Request,
    ctx: Context,
    _reader: InventoryReader,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    page = await inventory.movements(ctx, sku, cursor=cursor, limit=limit)
    return _etagged(request, page, public=False)


# --- service to service: quotes and reservations ------------------------------------------------


@router.post(
    "/quotes",
    response_model=dict[str, VariantQuote],
    summary="Price and availability of SKUs for a customer (unknown SKUs are absent)",
    description="Without `catalog:write`, a draft product's SKUs are absent too, as unknown "
    "ones are. A caller may quote for itself; quoting for another customer needs "
    "`catalog:write` (services use an API key with it). A customer who leaves out "
    "`customer_id` is quoted their own prices (their price list's, as their cart is); staff "
    "and services who leave it out are quoted the regular prices.",
    responses=_errors(401, 403, 422),
)
async def quote(
    body: QuoteRequest, ctx: Context, principal: Annotated[Principal, Depends(current_principal)]
) -> dict[str, VariantQuote]:
    customer_id = body.customer_id
    if customer_id is None and principal.role == Role.CUSTOMER:
        customer_id = principal.subject
    if customer_id not in (None, principal.subject):
        ensure(principal, STAFF_PERMISSION)
    return await service.quote(
        ctx,
        body.skus,
        currency=body.currency,
        customer_id=customer_id,
        at=body.at,
        staff=_is_staff(principal),
    )


@router.post(
    "/reservations",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Hold stock for an order, all lines or none; idempotent per order",
    responses=_errors(401, 403, 409, 422),
)
async def reserve(body: ReservationRequest, ctx: Context, writer: InventoryWriter) -> Response:
    lines = [(line.sku, line.quantity) for line in body.lines]
    # A service reserving at checkout names the buyer it holds the stock for.
    actor = body.actor or writer.actor
    await inventory.reserve(ctx, body.order_id, lines, body.ttl_seconds, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/reservations/{order_id}/commit",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="The order was paid: reserved stock leaves for good (idempotent)",
    responses=_errors(401, 403),
)
async def commit_reservation(order_id: str, ctx: Context, _writer: InventoryWriter) -> Response:
    await inventory.commit_reservation(ctx, order_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/reservations/{order_id}/release",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="The order will not be paid: reserved stock is free again (idempotent)",
    responses=_errors(401, 403, 422),
)
async def release_reservation(
    order_id: str, body: ReleaseRequest, ctx: Context, _writer: InventoryWriter
) -> Response:
    await inventory.release_reservation(ctx, order_id, body.reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/restocks",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Units of an order come back on hand (a refund with restock)",
    responses=_errors(401, 403, 404, 409, 422),
)
async def restock(
    request: Request,
    body: RestockRequest,
    ctx: Context,
    writer: InventoryWriter,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    lines = [(line.sku, line.quantity) for line in body.lines]

    async def _restock() -> tuple[int, dict[str, Any]]:
        await inventory.restock(ctx, body.order_id, lines, body.reason, actor=writer.actor)
        return status.HTTP_204_NO_CONTENT, {}

    return await _idempotently(request, ctx, writer, idempotency_key, body, _restock)


async def _once(
    request: Request,
    ctx: ServiceContext,
    principal: Principal,
    key: str | None,
    body: BaseModel,
    create: Callable[[], Awaitable[BaseModel]],
) -> Response:
    """A creating POST, run at most once per ``Idempotency-Key``, answering 201 with what it
    made."""

    async def _create() -> tuple[int, dict[str, Any]]:
        made = await create()
        return status.HTTP_201_CREATED, made.model_dump(mode="json")

    return await _idempotently(request, ctx, principal, key, body, _create)


async def _idempotently(
    request: Request,
    ctx: ServiceContext,
    principal: Principal,
    key: str | None,
    body: BaseModel,
    handler: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> Response:
    """Run ``handler`` at most once per ``Idempotency-Key`` (Stripe's rules: the same key and
    body replay the first answer, another body is a 422)."""
    result = await run_idempotent(
        ctx,
        idempotency_keys,
        key=key,
        principal_id=principal.subject,
        method=request.method,
        path=request.url.path,
        body=body.model_dump(mode="json"),
        handler=handler,
    )
    return idempotent_response(result)


document_optional_credentials(router)
