"""Catalog use cases: categories, products and variants, prices and price lists, warehouses,
and quotes. Inventory and reservations live in ``inventory.py``, search in ``search.py``,
import and export in ``transfer.py``.

Reads go through SQLAlchemy Core. The product-by-id read is the hot path: it runs on the driver
(``reads.py``), its JSON is built once with its ETag and, when the read cache is on, cached in
``ctx.cache``; every write that touches a product deletes its cached copy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import Row, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.schema import Table

from ecosistema.catalog import domain, reads, search
from ecosistema.catalog.domain import ProductStatus, SalePrice
from ecosistema.catalog.models import (
    categories,
    price_list_customers,
    price_list_prices,
    price_lists,
    prices,
    products,
    sale_prices,
    stock,
    variants,
    warehouses,
)
from ecosistema.catalog.reads import ProductDocument
from ecosistema.catalog.schemas import (
    Category,
    CategoryCreate,
    CategoryUpdate,
    PriceInput,
    PriceList,
    PriceListCreate,
    PriceListPrice,
    PriceListUpdate,
    Product,
    ProductCreate,
    ProductUpdate,
    SalePriceInput,
    Variant,
    VariantCreate,
    VariantQuote,
    VariantUpdate,
    Warehouse,
    WarehouseCreate,
)
from ecosistema.platform.db import (
    DriverTransaction,
    Statements,
    as_utc_datetime,
    new_id,
    statements,
    utcnow,
)
from ecosistema.platform.errors import (
    Conflict,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    field_error,
    refuse_nulls,
)
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

PRODUCT_NOT_FOUND = "No product with this id."
PRODUCT_SLUG_NOT_FOUND = "No product with this slug."
CATEGORY_NOT_FOUND = "No category with this id."
VARIANT_NOT_FOUND = "No variant with this id on this product."
PRICE_LIST_NOT_FOUND = "No price list with this id."
GENERATION_KEY = "catalog:generation"
NEXT_PRICE_CHANGE_KEY = "catalog:next-price-change"

PRODUCT_CREATED = "ProductCreated"
PRODUCT_UPDATED = "ProductUpdated"
PRODUCT_ARCHIVED = "ProductArchived"
CATEGORY_CREATED = "CategoryCreated"
CATEGORY_UPDATED = "CategoryUpdated"
CATEGORY_DELETED = "CategoryDeleted"


# --- shared helpers -----------------------------------------------------------------------------


_inserts_ignoring_conflicts: dict[tuple[Table, tuple[str, ...], tuple[str, ...], bool], Any] = {}


def _insert_ignoring_conflicts(
    table: Table, columns: tuple[str, ...], keys: tuple[str, ...], postgres: bool
) -> Any:
    """The statement for these columns, built once (a driver transaction compiles it once)."""
    found = _inserts_ignoring_conflicts.get((table, columns, keys, postgres))
    if found is None:
        builder = postgresql.insert if postgres else sqlite.insert
        found = _inserts_ignoring_conflicts[(table, columns, keys, postgres)] = (
            builder(table)
            .values({table.c[name]: bindparam(name, type_=table.c[name].type) for name in columns})
            .on_conflict_do_nothing(index_elements=list(keys))
        )
    return found


async def insert_ignoring_conflicts(
    session: AsyncSession | Statements,
    table: Table,
    values: dict[str, Any],
    keys: Sequence[str],
) -> bool:
    """Insert a row unless one with the same ``keys`` exists; True when this call inserted it.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    does nothing, so the caller never sees a unique violation abort its transaction."""
    tx = statements(session)
    statement = _insert_ignoring_conflicts(table, tuple(values), tuple(keys), tx.is_postgres)
    return await tx.execute(statement, **values) > 0


def product_cache_key(product_id: str) -> str:
    """Where a product's serialized JSON and ETag are cached."""
    return f"catalog:product:{product_id}"


# Cached documents deleted per call (an import may have changed a great many products).
_KEYS_AT_ONCE = 1000


async def invalidate(ctx: ServiceContext, product_ids: Iterable[str] = ()) -> None:
    """Forget cached reads after a write: the named products, and every cached list."""
    keys = [product_cache_key(pid) for pid in dict.fromkeys(product_ids)]
    for start in range(0, len(keys), _KEYS_AT_ONCE):
        await ctx.cache.delete(*keys[start : start + _KEYS_AT_ONCE])
    await ctx.cache.incr(GENERATION_KEY)


_pending_invalidations: set[asyncio.Task[None]] = set()


def invalidate_after_commit(
    ctx: ServiceContext, tx: DriverTransaction, product_ids: Iterable[str] = ()
) -> None:
    """Invalidate once the caller's transaction commits (for writes made inside a transaction
    the catalog does not own, such as an event consumer's)."""
    ids = list(product_ids)

    def _after_commit() -> None:
        task = asyncio.get_running_loop().create_task(invalidate(ctx, ids))
        _pending_invalidations.add(task)
        task.add_done_callback(_pending_invalidations.discard)

    tx.after_commit(_after_commit)


async def cache_generation(ctx: ServiceContext) -> int:
    """The catalog's write generation; cached lists carry it in their key."""
    raw = await ctx.cache.get(GENERATION_KEY)
    return int(raw) if raw else 0


async def next_price_change(ctx: ServiceContext, generation: int | None = None) -> float | None:
    """When a sale price next starts or ends anywhere in the catalog (Unix time), if one is
    scheduled: lists and search pages, cached or not, are fresh until then at most.
    ``generation``: the cache generation, when the caller has read it already."""
    ttl = ctx.settings.catalog_cache_seconds
    now = utcnow()
    if generation is None:
        generation = await cache_generation(ctx)
    key = f"{NEXT_PRICE_CHANGE_KEY}:{generation}"
    if ttl > 0:
        raw = await ctx.cache.get(key)
        if raw is not None:
            cached = None if raw == b"-" else float(raw)
            if cached is None or cached > now.timestamp():
                return cached
    starts = sale_prices.c.starts_at
    ends = sale_prices.c.ends_at
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                select(
                    select(func.min(starts)).where(starts > now).scalar_subquery(),
                    select(func.min(ends)).where(ends > now).scalar_subquery(),
                )
            )
        ).one()
    moments = [as_utc_datetime(value) for value in row if value is not None]
    found = min(m.timestamp() for m in moments if m is not None) if moments else None
    if ttl > 0:
        await ctx.cache.set(key, b"-" if found is None else repr(found).encode(), ttl=ttl)
    return found


def _changed(given: dict[str, Any], stored: Any) -> dict[str, Any]:
    """The given fields whose values differ from the stored ones: what a PATCH changes."""
    return {name: value for name, value in given.items() if stored[name] != value}


def _currency_ok(currency: str, field: str) -> str:
    from ecosistema.platform.money import UnknownCurrency, iso_currency

    try:
        return iso_currency(currency)
    except UnknownCurrency as exc:
        raise field_error(field, str(exc)) from None


# --- categories ---------------------------------------------------------------------------------


def _category(row: Row[Any]) -> Category:
    return Category.model_validate(row._mapping)


def _category_event(row: Row[Any]) -> dict[str, Any]:
    """The payload of a category's events: what names its cached reads."""
    return {"category_id": row.id, "id": row.id, "slug": row.slug, "parent_id": row.parent_id}


async def create_category(ctx: ServiceContext, data: CategoryCreate) -> Category:
    """Add a category under ``parent_id`` (or at the root); slugs are unique catalog-wide."""
    slug = data.slug or domain.slugify(data.name)
    if not slug:
        # The caller sent only a name: both fields are named, the name as the cause.
        raise Unprocessable(
            "name: has no letter or digit to make a slug from; pass a slug",
            errors=[
                {
                    "field": "name",
                    "message": "has no letter or digit to make a slug from; pass a slug",
                    "code": "no_slug",
                },
                {
                    "field": "slug",
                    "message": "required when the name has no letter or digit",
                    "code": "missing",
                },
            ],
        )
    now = utcnow()
    try:
        async with ctx.db.transaction() as session:
            parent_path = None
            if data.parent_id is not None:
                await _lock_tree(session)
                parent_path = await session.scalar(
                    select(categories.c.path).where(categories.c.id == data.parent_id)
                )
                if parent_path is None:
                    raise field_error("parent_id", "no category with this id", "not_found")
            if await session.scalar(select(categories.c.id).where(categories.c.slug == slug)):
                raise _slug_conflict(slug)
            path = domain.category_path(parent_path, slug)
            if len(path) > domain.CATEGORY_PATH_MAX_LENGTH:
                raise _too_deep("parent_id")
            category_id = new_id()
            await session.execute(
                insert(categories).values(
                    id=category_id,
                    parent_id=data.parent_id,
                    name=data.name,
                    slug=slug,
                    path=path,
                    description=data.description,
                    created_at=now,
                    updated_at=now,
                )
            )
            row = (
                await session.execute(select(categories).where(categories.c.id == category_id))
            ).one()
            await ctx.outbox.add(session, CATEGORY_CREATED, _category_event(row))
    except IntegrityError as exc:
        raise Conflict(f"A category with slug {slug!r} exists.", type="slug-taken") from exc
    await invalidate(ctx)
    return _category(row)


# Writes that read a category's path and write paths from it (a child added, a category moved
# or re-slugged, one deleted) take turns on PostgreSQL, so two concurrent moves can never make a
# cycle, nor a child keep a path its parent just left; SQLite's writers take turns anyway.
_TREE_LOCK_KEY = int.from_bytes(b"cat-tree", "big", signed=True)


async def _lock_tree(session: AsyncSession) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_TREE_LOCK_KEY)))


def _too_deep(field: str) -> Unprocessable:
    return field_error(
        field,
        f"the category's path would pass {domain.CATEGORY_PATH_MAX_LENGTH} characters; "
        "nest it less deeply or use shorter slugs",
        "too_deep",
    )


async def _place_category(
    session: AsyncSession, row: Row[Any], placement: dict[str, Any]
) -> list[Row[Any]]:
    """Give the category ``row`` the slug and parent in ``placement`` (``parent_id`` None: the
    root), rewriting the materialised paths of it and every category below it; the caller
    holds the tree's lock. Returns the rows whose path changed, the category first; none when
    it stays where it is."""
    category_id = row.id
    slug = placement.get("slug", row.slug)
    parent_id = placement.get("parent_id", row.parent_id)
    if slug != row.slug and await session.scalar(
        select(categories.c.id).where(categories.c.slug == slug)
    ):
        raise _slug_conflict(slug)
    parent_path = None
    if parent_id is not None:
        parent_path = await session.scalar(
            select(categories.c.path).where(categories.c.id == parent_id)
        )
        if parent_path is None:
            raise field_error("parent_id", "no category with this id", "not_found")
        if domain.is_within(parent_path, row.path):
            raise field_error(
                "parent_id",
                "a category cannot move under itself or one of its descendants",
                "cycle",
            )
    path = domain.category_path(parent_path, slug)
    if path == row.path and parent_id == row.parent_id:
        return []
    below = (
        await session.execute(
            select(categories.c.id, categories.c.path).where(
                categories.c.path.like(row.path + "/%")
            )
        )
    ).all()
    moved = {r.id: path + r.path[len(row.path) :] for r in below}
    if len(max([path, *moved.values()], key=len)) > domain.CATEGORY_PATH_MAX_LENGTH:
        raise _too_deep("parent_id" if "parent_id" in placement else "slug")
    now = utcnow()
    await session.execute(
        update(categories)
        .where(categories.c.id == category_id)
        .values(slug=slug, parent_id=parent_id, path=path, updated_at=now)
    )
    for descendant_id, descendant_path in moved.items():
        await session.execute(
            update(categories)
            .where(categories.c.id == descendant_id)
            .values(path=descendant_path, updated_at=now)
        )
    changed = [category_id, *moved]
    rows = {
        r.id: r
        for r in (
            await session.execute(select(categories).where(categories.c.id.in_(changed)))
        ).all()
    }
    return [rows[i] for i in changed]


async def list_categories(ctx: ServiceContext) -> list[Category]:
    """Every category, in tree order (each parent before its children)."""
    async with ctx.db.read() as session:
        rows = (await session.execute(select(categories).order_by(categories.c.path))).all()
    return [_category(r) for r in rows]


async def get_category(ctx: ServiceContext, category_id: str) -> Category:
    """One category."""
    async with ctx.db.read() as session:
        row = (
            await session.execute(select(categories).where(categories.c.id == category_id))
        ).first()
    if row is None:
        raise NotFound(CATEGORY_NOT_FOUND)
    return _category(row)


async def update_category(ctx: ServiceContext, category_id: str, data: CategoryUpdate) -> Category:
    """Rename, re-describe, re-slug or move a category; a new slug or parent rewrites the paths
    of the category and of every category below it, each of which publishes CategoryUpdated.
    A change that leaves every field as stored writes nothing and emits nothing."""
    refuse_nulls(data, ("name", "description", "slug"))
    given: dict[str, Any] = data.model_dump(exclude_unset=True)
    try:
        return await _update_category(ctx, category_id, given)
    except IntegrityError as exc:
        if "slug" not in given:
            raise
        # Another request took the slug between the check and the write.
        raise _slug_conflict(given["slug"]) from exc


async def _update_category(
    ctx: ServiceContext, category_id: str, given: dict[str, Any]
) -> Category:
    async with ctx.db.transaction() as session:
        if "slug" in given or "parent_id" in given:
            # Before the row's lock, in the order every tree write takes them.
            await _lock_tree(session)
        row = (
            await session.execute(
                select(categories).where(categories.c.id == category_id).with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(CATEGORY_NOT_FOUND)
        values = _changed(given, row._mapping)
        placement: dict[str, Any] = {k: values.pop(k) for k in ("slug", "parent_id") if k in values}
        if not values and not placement:
            # Nothing to change: no write, no event, no purge of cached reads.
            return _category(row)
        moved = await _place_category(session, row, placement) if placement else []
        if values:
            values["updated_at"] = utcnow()
            await session.execute(
                update(categories).where(categories.c.id == category_id).values(**values)
            )
        row = (
            await session.execute(select(categories).where(categories.c.id == category_id))
        ).one()
        ids = (
            await session.scalars(
                select(products.c.id).where(products.c.category_id == category_id)
            )
        ).all()
        if "name" in values:
            await search.refresh(session, ids)
        await ctx.outbox.add(session, CATEGORY_UPDATED, _category_event(row))
        for below in moved[1:]:
            await ctx.outbox.add(session, CATEGORY_UPDATED, _category_event(below))
    await invalidate(ctx, ids)
    return _category(row)


async def delete_category(ctx: ServiceContext, category_id: str) -> None:
    """Remove an empty leaf category; one with children or products is kept (409)."""
    async with ctx.db.transaction() as session:
        await _lock_tree(session)
        row = (
            await session.execute(select(categories).where(categories.c.id == category_id))
        ).first()
        if row is None:
            raise NotFound(CATEGORY_NOT_FOUND)
        if await session.scalar(
            select(categories.c.id).where(categories.c.parent_id == category_id).limit(1)
        ):
            raise Conflict("The category has subcategories.", type="category-not-empty")
        if await session.scalar(
            select(products.c.id).where(products.c.category_id == category_id).limit(1)
        ):
            raise Conflict("The category has products.", type="category-not-empty")
        await session.execute(delete(categories).where(categories.c.id == category_id))
        await ctx.outbox.add(session, CATEGORY_DELETED, _category_event(row))
    await invalidate(ctx)


# --- products -----------------------------------------------------------------------------------


async def product_document(ctx: ServiceContext, product_id: str) -> ProductDocument:
    """A product's JSON and ETag, from the cache when there, else built and cached."""
    ttl = ctx.settings.catalog_cache_seconds
    key = product_cache_key(product_id)
    if ttl > 0:
        raw = await ctx.cache.get(key)
        if raw is not None:
            return ProductDocument.from_cache(raw)
    now = utcnow()
    loaded = await reads.load_product(ctx.db, product_id, now)
    if loaded is None:
        raise NotFound(PRODUCT_NOT_FOUND)
    document, changes_at = loaded
    if ttl > 0:
        if changes_at is not None:
            ttl = min(ttl, max(0.001, (changes_at - now).total_seconds()))
        await ctx.cache.set(key, document.to_cache(), ttl=ttl)
    return document


async def product_document_by_slug(ctx: ServiceContext, slug: str) -> ProductDocument:
    """A product's JSON and ETag by its slug: the slug's product id (one indexed read), then
    the product's document as ``product_document`` gives it, cached by id."""
    product_id = await reads.product_id_by_slug(ctx.db, slug) if len(slug) <= 120 else None
    if product_id is None:
        raise NotFound(PRODUCT_SLUG_NOT_FOUND)
    return await product_document(ctx, product_id)


def visible(status: str, *, staff: bool) -> bool:
    """Whether a product in ``status`` may be shown: active ones to anyone, others to staff."""
    return staff or status == ProductStatus.ACTIVE


async def get_product(ctx: ServiceContext, product_id: str, *, staff: bool = True) -> Product:
    """A product with its variants and prices; drafts and archived ones only for staff."""
    document = await product_document(ctx, product_id)
    if not visible(document.status, staff=staff):
        raise NotFound(PRODUCT_NOT_FOUND)
    return Product.model_validate_json(document.body)


async def _free_slug(session: AsyncSession, name: str) -> str:
    base = domain.slugify(name) or "product"
    taken = (
        await session.scalars(
            select(products.c.slug).where(
                or_(products.c.slug == base, products.c.slug.like(f"{base}-%"))
            )
        )
    ).all()
    return domain.unique_slug(base, taken)


async def _check_category(session: AsyncSession, category_id: str | None) -> None:
    if category_id is not None and not await session.scalar(
        select(categories.c.id).where(categories.c.id == category_id)
    ):
        raise field_error("category_id", "no category with this id", "not_found")


async def _sku_taken(session: AsyncSession, skus: Sequence[str]) -> list[str]:
    if not skus:
        return []
    return list(
        (await session.scalars(select(variants.c.sku).where(variants.c.sku.in_(skus)))).all()
    )


async def _write_prices(
    session: AsyncSession,
    variant_id: str,
    regular: Sequence[PriceInput] | None,
    scheduled: Sequence[SalePriceInput] | None,
) -> None:
    if regular is not None:
        await session.execute(delete(prices).where(prices.c.variant_id == variant_id))
        if regular:
            await session.execute(
                insert(prices),
                [
                    {"variant_id": variant_id, "currency": p.currency, "amount": p.amount}
                    for p in regular
                ],
            )
    if scheduled is not None:
        await session.execute(delete(sale_prices).where(sale_prices.c.variant_id == variant_id))
        if scheduled:
            await session.execute(
                insert(sale_prices),
                [
                    {
                        "id": new_id(),
                        "variant_id": variant_id,
                        "currency": s.currency,
                        "amount": s.amount,
                        "starts_at": s.starts_at,
                        "ends_at": s.ends_at,
                    }
                    for s in scheduled
                ],
            )


async def _insert_variant(
    session: AsyncSession, product_id: str, data: VariantCreate, position: int, now: datetime
) -> str:
    variant_id = new_id()
    await session.execute(
        insert(variants).values(
            id=variant_id,
            product_id=product_id,
            sku=data.sku,
            name=data.name or data.sku,
            options=dict(data.options),
            weight_grams=data.weight_grams,
            position=data.position if data.position is not None else position,
            created_at=now,
            updated_at=now,
        )
    )
    await _write_prices(session, variant_id, data.prices, data.sale_prices)
    return variant_id


def _slug_conflict(slug: str) -> Conflict:
    """A 409 naming the slug in use, at ``slug``."""
    return Conflict(
        f"The slug {slug!r} is taken.",
        type="slug-taken",
        errors=[{"field": "slug", "message": "slug already in use", "code": "taken"}],
    )


def _sku_conflict(skus: Sequence[str], fields: Sequence[str] = ("sku",)) -> Conflict:
    """A 409 naming the SKUs in use (``skus``) and the fields that gave them (``errors``)."""
    return Conflict(
        f"SKU already in use: {', '.join(sorted(skus))}.",
        type="sku-taken",
        skus=sorted(skus),
        errors=[{"field": f, "message": "SKU already in use", "code": "taken"} for f in fields],
    )


async def create_product(ctx: ServiceContext, data: ProductCreate) -> Product:
    """Create a product with its variants and prices; emits ProductCreated."""
    now = utcnow()
    product_id = new_id()
    slug = data.slug
    try:
        async with ctx.db.transaction() as session:
            if data.slug is not None:
                if await session.scalar(select(products.c.id).where(products.c.slug == data.slug)):
                    raise _slug_conflict(data.slug)
                slug = data.slug
            else:
                slug = await _free_slug(session, data.name)
            await _check_category(session, data.category_id)
            taken = await _sku_taken(session, [v.sku for v in data.variants])
            if taken:
                raise _sku_conflict(
                    taken,
                    [f"variants.{i}.sku" for i, v in enumerate(data.variants) if v.sku in taken],
                )
            await session.execute(
                insert(products).values(
                    id=product_id,
                    slug=slug,
                    name=data.name,
                    description=data.description,
                    status=data.status.value,
                    category_id=data.category_id,
                    images=list(data.images),
                    search_text="",
                    created_at=now,
                    updated_at=now,
                )
            )
            for position, variant in enumerate(data.variants):
                await _insert_variant(session, product_id, variant, position, now)
            await search.refresh(session, [product_id])
            await ctx.outbox.add(session, PRODUCT_CREATED, {"product_id": product_id, "slug": slug})
    except IntegrityError as exc:
        # Another request took the slug or a SKU between the checks and the insert.
        raise await _create_race_conflict(ctx, data, slug) from exc
    await invalidate(ctx, [product_id])
    return await get_product(ctx, product_id)


async def _create_race_conflict(
    ctx: ServiceContext, data: ProductCreate, slug: str | None
) -> Conflict:
    """The 409 for a product insert that lost a race: which slug or SKUs are now in use, read
    again after the failed transaction, or ``product-conflict`` when they are free again."""
    async with ctx.db.transaction() as session:
        slug_taken = slug is not None and bool(
            await session.scalar(select(products.c.id).where(products.c.slug == slug))
        )
        taken = await _sku_taken(session, [v.sku for v in data.variants])
    if taken:
        return _sku_conflict(
            taken, [f"variants.{i}.sku" for i, v in enumerate(data.variants) if v.sku in taken]
        )
    if slug_taken and slug is not None:
        if data.slug is None:  # made from the name: the client chose no slug to change
            return Conflict(
                f"Another product took the slug {slug!r} made from the name at the same time: "
                "send the request again, or give a slug.",
                type="slug-taken",
                errors=[{"field": "slug", "message": "slug already in use", "code": "taken"}],
            )
        return _slug_conflict(slug)
    return Conflict(
        "Another change to the catalog conflicted with this product at the same time; send the "
        "request again.",
        type="product-conflict",
    )


async def update_product(
    ctx: ServiceContext, product_id: str, data: ProductUpdate, *, if_match: str | None = None
) -> Product:
    """Change a product's fields; emits ProductUpdated, or ProductArchived when archived. With
    ``if_match`` (an ``If-Match`` header), only while the product is still as that ETag says.
    A change that leaves every field as stored writes nothing and emits nothing."""
    refuse_nulls(data, ("name", "slug", "description", "status", "images"))
    given: dict[str, Any] = data.model_dump(exclude_unset=True)
    if "status" in given:
        given["status"] = ProductStatus(given["status"]).value
    try:
        async with ctx.db.transaction() as session:
            await _check_unchanged(ctx, session, product_id, if_match)
            row = (
                await session.execute(
                    select(*(products.c[name] for name in _PRODUCT_FIELDS))
                    .where(products.c.id == product_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise NotFound(PRODUCT_NOT_FOUND)
            values = _changed(given, row._mapping)
            if values:
                await _write_product(ctx, session, product_id, row, values)
    except IntegrityError as exc:
        raise Conflict("The slug is already in use.", type="slug-taken") from exc
    if values:
        # A PATCH that changes nothing leaves cached reads (and their ETags) as they are.
        await invalidate(ctx, [product_id])
    return await get_product(ctx, product_id)


async def _write_product(
    ctx: ServiceContext,
    session: AsyncSession,
    product_id: str,
    row: Row[Any],
    values: dict[str, Any],
) -> None:
    """Write a product's changed fields, refresh its search text and emit its event."""
    if "slug" in values and await session.scalar(
        select(products.c.id).where(products.c.slug == values["slug"])
    ):
        raise _slug_conflict(values["slug"])
    if "category_id" in values:
        await _check_category(session, values["category_id"])
    await session.execute(
        update(products).where(products.c.id == product_id).values(**values, updated_at=utcnow())
    )
    if {"name", "description", "category_id"} & set(values):
        await search.refresh(session, [product_id])
    archived = values.get("status") == ProductStatus.ARCHIVED
    await ctx.outbox.add(
        session,
        PRODUCT_ARCHIVED if archived else PRODUCT_UPDATED,
        {"product_id": product_id, "slug": values.get("slug", row.slug)},
    )


# The fields a product's PATCH may change.
_PRODUCT_FIELDS = ("slug", "name", "description", "status", "category_id", "images")
_PRODUCT_LOCKED = select(products.c.id).where(products.c.id == bindparam("product_id"))


async def _check_unchanged(
    ctx: ServiceContext, session: AsyncSession, product_id: str, if_match: str | None
) -> None:
    """A 412 unless the product's current ETag is one ``if_match`` names (``*``: any). The
    product's row is locked first (on SQLite the write transaction is already the only one),
    and its document read as committed, so no other writer can change it in between."""
    if if_match is None:
        return
    await session.execute(_PRODUCT_LOCKED.with_for_update(), {"product_id": product_id})
    loaded = await reads.load_product(ctx.db, product_id, utcnow())
    if loaded is None:
        raise NotFound(PRODUCT_NOT_FOUND)
    current = loaded[0].etag
    wanted = [tag.strip() for tag in if_match.split(",")]
    if "*" in wanted or current in wanted:  # strong comparison: a weak tag never matches
        return
    raise PreconditionFailed(
        "The product changed since the ETag given in If-Match: read it again, then change it.",
        etag=current,
    )


async def archive_product(ctx: ServiceContext, product_id: str) -> None:
    """Archive a product (it stays for orders that refer to it); emits ProductArchived."""
    await update_product(ctx, product_id, ProductUpdate(status=ProductStatus.ARCHIVED))


async def _touch_product(ctx: ServiceContext, session: AsyncSession, product_id: str) -> None:
    slug = await session.scalar(
        update(products)
        .where(products.c.id == product_id)
        .values(updated_at=utcnow())
        .returning(products.c.slug)
    )
    await search.refresh(session, [product_id])
    await ctx.outbox.add(session, PRODUCT_UPDATED, {"product_id": product_id, "slug": slug})


async def _require_product(session: AsyncSession, product_id: str) -> None:
    if not await session.scalar(select(products.c.id).where(products.c.id == product_id)):
        raise NotFound(PRODUCT_NOT_FOUND)


async def list_variants(ctx: ServiceContext, product_id: str, *, staff: bool) -> list[Variant]:
    """A product's variants with their prices."""
    return (await get_product(ctx, product_id, staff=staff)).variants


async def add_variant(ctx: ServiceContext, product_id: str, data: VariantCreate) -> Variant:
    """Add a variant to a product."""
    now = utcnow()
    try:
        async with ctx.db.transaction() as session:
            await _require_product(session, product_id)
            if await _sku_taken(session, [data.sku]):
                raise _sku_conflict([data.sku])
            position = await session.scalar(
                select(func.count()).where(variants.c.product_id == product_id)
            )
            variant_id = await _insert_variant(session, product_id, data, int(position or 0), now)
            await _touch_product(ctx, session, product_id)
    except IntegrityError as exc:
        raise _sku_conflict([data.sku]) from exc
    await invalidate(ctx, [product_id])
    return _variant_of(await get_product(ctx, product_id), variant_id)


def _variant_of(product: Product, variant_id: str) -> Variant:
    for variant in product.variants:
        if variant.id == variant_id:
            return variant
    raise NotFound(VARIANT_NOT_FOUND)


async def update_variant(
    ctx: ServiceContext,
    product_id: str,
    variant_id: str,
    data: VariantUpdate,
    *,
    if_match: str | None = None,
) -> Variant:
    """Change a variant; given price lists replace the current ones. With ``if_match`` (an
    ``If-Match`` header naming the product's ETag), only while the product is still so. A
    change that leaves the variant and its prices as stored writes nothing and emits nothing."""
    refuse_nulls(data, ("name", "options", "weight_grams", "position", "prices", "sale_prices"))
    given = data.model_dump(exclude_unset=True, exclude={"prices", "sale_prices"})
    fields_set = data.model_fields_set
    async with ctx.db.transaction() as session:
        await _check_unchanged(ctx, session, product_id, if_match)
        row = (
            await session.execute(
                select(*(variants.c[name] for name in _VARIANT_FIELDS))
                .where(variants.c.id == variant_id, variants.c.product_id == product_id)
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(VARIANT_NOT_FOUND)
        values = _changed(given, row._mapping)
        regular = data.prices if "prices" in fields_set else None
        if regular is not None and await _same_prices(session, variant_id, regular):
            regular = None
        scheduled = data.sale_prices if "sale_prices" in fields_set else None
        if scheduled is not None and await _same_sale_prices(session, variant_id, scheduled):
            scheduled = None
        changed = bool(values) or regular is not None or scheduled is not None
        if changed:
            await session.execute(
                update(variants)
                .where(variants.c.id == variant_id)
                .values(**values, updated_at=utcnow())
            )
            await _write_prices(session, variant_id, regular, scheduled)
            await _touch_product(ctx, session, product_id)
    if changed:
        # A PATCH that changes nothing leaves cached reads (and their ETags) as they are.
        await invalidate(ctx, [product_id])
    return _variant_of(await get_product(ctx, product_id), variant_id)


# The fields of a variant its PATCH may change (besides its prices).
_VARIANT_FIELDS = ("name", "options", "weight_grams", "position")


async def _same_prices(session: AsyncSession, variant_id: str, given: Sequence[PriceInput]) -> bool:
    """Whether ``given`` are exactly the variant's regular prices (in any order)."""
    stored = dict(
        (
            await session.execute(
                select(prices.c.currency, prices.c.amount).where(prices.c.variant_id == variant_id)
            )
        ).all()
    )
    return stored == {p.currency: p.amount for p in given}


async def _same_sale_prices(
    session: AsyncSession, variant_id: str, given: Sequence[SalePriceInput]
) -> bool:
    """Whether ``given`` are exactly the variant's scheduled sale prices (in any order)."""
    rows = (
        await session.execute(
            select(
                sale_prices.c.currency,
                sale_prices.c.amount,
                sale_prices.c.starts_at,
                sale_prices.c.ends_at,
            ).where(sale_prices.c.variant_id == variant_id)
        )
    ).all()
    stored = Counter(
        (r.currency, r.amount, as_utc_datetime(r.starts_at), as_utc_datetime(r.ends_at))
        for r in rows
    )
    return stored == Counter((s.currency, s.amount, s.starts_at, s.ends_at) for s in given)


async def delete_variant(ctx: ServiceContext, product_id: str, variant_id: str) -> None:
    """Remove a variant with no stock on hand or reserved (409 otherwise)."""
    async with ctx.db.transaction() as session:
        # The variant's row first: stock writes lock it (shared) before they touch its stock,
        # so one that would create a stock row waits for the delete, then finds no variant;
        # one that came first has committed its stock, seen below (409).
        sku = await session.scalar(
            select(variants.c.sku)
            .where(variants.c.id == variant_id, variants.c.product_id == product_id)
            .with_for_update()
        )
        if sku is None:
            raise NotFound(VARIANT_NOT_FOUND)
        # Locked, so a reservation cannot take units of the variant while it is deleted; its
        # stock rows go with it, and a variant made later with the SKU starts with none.
        levels = (
            await session.execute(
                select(stock.c.on_hand, stock.c.reserved)
                .where(stock.c.sku == sku)
                .with_for_update()
            )
        ).all()
        if any(level.on_hand or level.reserved for level in levels):
            raise Conflict(
                "The variant still has stock; adjust it to zero first.", type="variant-has-stock"
            )
        await session.execute(delete(stock).where(stock.c.sku == sku))
        for table in (prices, sale_prices, price_list_prices):
            await session.execute(delete(table).where(table.c.variant_id == variant_id))
        await session.execute(delete(variants).where(variants.c.id == variant_id))
        await _touch_product(ctx, session, product_id)
    await invalidate(ctx, [product_id])


# --- warehouses ---------------------------------------------------------------------------------


def _code_conflict(kind: str, code: str) -> Conflict:
    """A 409 naming the code in use (a warehouse's or a price list's), at ``code``."""
    return Conflict(
        f"A {kind} with code {code!r} exists.",
        type="code-taken",
        errors=[{"field": "code", "message": "code already in use", "code": "taken"}],
    )


async def create_warehouse(ctx: ServiceContext, data: WarehouseCreate) -> Warehouse:
    """Add a warehouse."""
    row = {
        "id": new_id(),
        "code": data.code,
        "name": data.name,
        "priority": data.priority,
        "created_at": utcnow(),
    }
    try:
        async with ctx.db.transaction() as session:
            if not await insert_ignoring_conflicts(session, warehouses, row, ["code"]):
                raise _code_conflict("warehouse", data.code)
    except IntegrityError as exc:
        raise _code_conflict("warehouse", data.code) from exc
    return Warehouse.model_validate(row)


async def list_warehouses(ctx: ServiceContext) -> list[Warehouse]:
    """Every warehouse, in shipping order."""
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(warehouses).order_by(warehouses.c.priority, warehouses.c.code)
            )
        ).all()
    return [Warehouse.model_validate(r._mapping) for r in rows]


# --- price lists --------------------------------------------------------------------------------


async def _price_list_view(session: AsyncSession, price_list_id: str) -> PriceList:
    row = (
        await session.execute(select(price_lists).where(price_lists.c.id == price_list_id))
    ).first()
    if row is None:
        raise NotFound(PRICE_LIST_NOT_FOUND)
    count = await session.scalar(
        select(func.count()).where(price_list_customers.c.price_list_id == price_list_id)
    )
    return PriceList.model_validate({**row._mapping, "customer_count": int(count or 0)})


async def create_price_list(ctx: ServiceContext, data: PriceListCreate) -> PriceList:
    """Add a price list (e.g. ``wholesale``)."""
    now = utcnow()
    price_list_id = new_id()
    row = {"id": price_list_id, "code": data.code, "name": data.name, "created_at": now}
    try:
        async with ctx.db.transaction() as session:
            if not await insert_ignoring_conflicts(
                session, price_lists, {**row, "updated_at": now}, ["code"]
            ):
                raise _code_conflict("price list", data.code)
            return await _price_list_view(session, price_list_id)
    except IntegrityError as exc:
        raise _code_conflict("price list", data.code) from exc


async def list_price_lists(ctx: ServiceContext) -> list[PriceList]:
    """Every price list."""
    async with ctx.db.read() as session:
        ids = (await session.scalars(select(price_lists.c.id).order_by(price_lists.c.code))).all()
        return [await _price_list_view(session, i) for i in ids]


async def get_price_list(ctx: ServiceContext, price_list_id: str) -> PriceList:
    """One price list."""
    async with ctx.db.read() as session:
        return await _price_list_view(session, price_list_id)


async def update_price_list(
    ctx: ServiceContext, price_list_id: str, data: PriceListUpdate
) -> PriceList:
    """Rename a price list."""
    async with ctx.db.transaction() as session:
        await session.execute(
            update(price_lists)
            .where(price_lists.c.id == price_list_id)
            .values(name=data.name, updated_at=utcnow())
        )
        return await _price_list_view(session, price_list_id)


async def delete_price_list(ctx: ServiceContext, price_list_id: str) -> None:
    """Remove a price list with its prices and customer assignments: those customers pay
    regular prices (or another list's) from then on."""
    async with ctx.db.transaction() as session:
        await _price_list_view(session, price_list_id)
        for table in (price_list_customers, price_list_prices):
            await session.execute(delete(table).where(table.c.price_list_id == price_list_id))
        await session.execute(delete(price_lists).where(price_lists.c.id == price_list_id))


async def set_price_list_prices(
    ctx: ServiceContext, price_list_id: str, entries: Sequence[PriceListPrice]
) -> list[PriceListPrice]:
    """Replace a price list's prices; every SKU must exist, and have one price per currency.
    Every entry at fault is named in one 422: repeated SKU and currency pairs and unknown SKUs
    alike, in the order of the entries."""
    faults: list[tuple[int, dict[str, str]]] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        if (entry.sku, entry.currency) in seen:
            faults.append(
                (
                    index,
                    {
                        "field": f"prices.{index}",
                        "message": f"{entry.sku} has a {entry.currency} price already in the list",
                        "code": "duplicate",
                    },
                )
            )
        seen.add((entry.sku, entry.currency))
    async with ctx.db.transaction() as session:
        await _price_list_view(session, price_list_id)
        skus = sorted({e.sku for e in entries})
        found = dict(
            (
                await session.execute(
                    select(variants.c.sku, variants.c.id).where(variants.c.sku.in_(skus))
                )
            ).all()
        )
        missing = [(i, e.sku) for i, e in enumerate(entries) if e.sku not in found]
        faults.extend(
            (
                i,
                {
                    "field": f"prices.{i}.sku",
                    "message": f"no variant has SKU {sku}",
                    "code": "not_found",
                },
            )
            for i, sku in missing
        )
        if faults:
            parts = []
            if missing:
                parts.append(f"unknown SKUs: {', '.join(sorted({sku for _, sku in missing}))}")
            duplicates = len(faults) - len(missing)
            if duplicates:
                parts.append(f"{duplicates} repeated SKU and currency pair(s)")
            raise Unprocessable(
                "; ".join(parts),
                errors=[error for _, error in sorted(faults, key=lambda f: f[0])],
            )
        await session.execute(
            delete(price_list_prices).where(price_list_prices.c.price_list_id == price_list_id)
        )
        if entries:
            await session.execute(
                insert(price_list_prices),
                [
                    {
                        "price_list_id": price_list_id,
                        "variant_id": found[e.sku],
                        "currency": e.currency,
                        "amount": e.amount,
                    }
                    for e in entries
                ],
            )
        await session.execute(
            update(price_lists).where(price_lists.c.id == price_list_id).values(updated_at=utcnow())
        )
    return await get_price_list_prices(ctx, price_list_id)


async def get_price_list_prices(ctx: ServiceContext, price_list_id: str) -> list[PriceListPrice]:
    """A price list's prices by SKU and currency."""
    async with ctx.db.read() as session:
        await _price_list_view(session, price_list_id)
        rows = (
            await session.execute(
                select(variants.c.sku, price_list_prices.c.currency, price_list_prices.c.amount)
                .select_from(
                    price_list_prices.join(
                        variants, variants.c.id == price_list_prices.c.variant_id
                    )
                )
                .where(price_list_prices.c.price_list_id == price_list_id)
                .order_by(variants.c.sku, price_list_prices.c.currency)
            )
        ).all()
    return [PriceListPrice(sku=r.sku, currency=r.currency, amount=r.amount) for r in rows]


async def set_price_list_customers(
    ctx: ServiceContext, price_list_id: str, customer_ids: Sequence[str]
) -> list[str]:
    """Replace the customers a price list applies to; each new one must be an identity user
    (a 422 at ``customer_ids.N`` for each that is not)."""
    wanted = sorted(set(customer_ids))
    assigned = set(await get_price_list_customers(ctx, price_list_id))  # 404 for an unknown list
    unknown = await _unknown_users(ctx, [c for c in wanted if c not in assigned])
    if unknown:
        errors = [
            {"field": f"customer_ids.{i}", "message": "no user with this id", "code": "not_found"}
            for i, c in enumerate(customer_ids)
            if c in unknown
        ]
        raise Unprocessable(
            f"{len(unknown)} of the customer ids name no user: "
            + ", ".join(sorted(unknown)[:10])
            + (" …" if len(unknown) > 10 else ""),
            errors=errors,
        )
    now = utcnow()
    async with ctx.db.transaction() as session:
        await _price_list_view(session, price_list_id)
        await session.execute(
            delete(price_list_customers).where(
                price_list_customers.c.price_list_id == price_list_id
            )
        )
        if wanted:
            await session.execute(
                insert(price_list_customers),
                [
                    {"price_list_id": price_list_id, "customer_id": c, "assigned_at": now}
                    for c in wanted
                ],
            )
    return wanted


# Identity is asked about this many users at a time when a price list gains customers.
_USER_CHECKS_AT_ONCE = 16


async def _unknown_users(ctx: ServiceContext, user_ids: Sequence[str]) -> set[str]:
    """Which of ``user_ids`` identity does not know; none are checked when catalog runs where
    identity cannot be reached (not hosted here and ``ECOSISTEMA_IDENTITY_URL`` unset)."""
    if not user_ids:
        return set()
    try:
        identity = ctx.client("identity")
    except LookupError:
        log.warning("price_list_customers_unchecked", reason="identity is not reachable")
        return set()
    gate = asyncio.Semaphore(_USER_CHECKS_AT_ONCE)

    async def known(user_id: str) -> bool:
        async with gate:
            return await identity.get_user_email(user_id) is not None

    found = await asyncio.gather(*(known(u) for u in user_ids))
    return {u for u, is_known in zip(user_ids, found, strict=True) if not is_known}


async def get_price_list_customers(ctx: ServiceContext, price_list_id: str) -> list[str]:
    """The customer ids a price list applies to."""
    async with ctx.db.read() as session:
        await _price_list_view(session, price_list_id)
        return list(
            (
                await session.scalars(
                    select(price_list_customers.c.customer_id)
                    .where(price_list_customers.c.price_list_id == price_list_id)
                    .order_by(price_list_customers.c.customer_id)
                )
            ).all()
        )


# --- quotes -------------------------------------------------------------------------------------


def channel_prices_include_tax(ctx: ServiceContext, channel: str | None = None) -> bool:
    """Whether prices on ``channel`` (default: the configured sales channel) include tax."""
    s = ctx.settings
    return domain.prices_include_tax(
        channel or s.sales_channel, s.prices_include_tax, s.channel_prices_include_tax
    )


# A quote's reads, built once: one statement per SKU (its variant, product, regular price, best
# price-list price for the customer, availability, and whether it has sale prices), and one for
# the sale prices of a variant that has some.
_QUOTE_VARIANT = (
    select(
        variants.c.id,
        variants.c.sku,
        variants.c.name,
        variants.c.weight_grams,
        products.c.id.label("product_id"),
        products.c.name.label("product_name"),
        products.c.status,
        prices.c.amount.label("base"),
        select(func.min(price_list_prices.c.amount))
        .select_from(
            price_list_prices.join(
                price_list_customers,
                price_list_customers.c.price_list_id == price_list_prices.c.price_list_id,
            )
        )
        .where(
            price_list_customers.c.customer_id == bindparam("customer_id"),
            price_list_prices.c.currency == bindparam("currency"),
            price_list_prices.c.variant_id == variants.c.id,
        )
        .scalar_subquery()
        .label("listed"),
        select(func.coalesce(func.sum(stock.c.on_hand - stock.c.reserved), 0))
        .where(stock.c.sku == variants.c.sku)
        .scalar_subquery()
        .label("available"),
        exists()
        .where(
            sale_prices.c.variant_id == variants.c.id,
            sale_prices.c.currency == bindparam("currency"),
        )
        .label("on_sale"),
    )
    .select_from(
        variants.join(products, products.c.id == variants.c.product_id).outerjoin(
            prices,
            and_(prices.c.variant_id == variants.c.id, prices.c.currency == bindparam("currency")),
        )
    )
    .where(variants.c.sku == bindparam("sku"))
)
_QUOTE_SALES = select(sale_prices.c.amount, sale_prices.c.starts_at, sale_prices.c.ends_at).where(
    sale_prices.c.variant_id == bindparam("variant_id"),
    sale_prices.c.currency == bindparam("currency"),
)


# What a quote shows to anyone: active products, and archived ones (once sold, as carts say).
_PUBLISHED = (ProductStatus.ACTIVE, ProductStatus.ARCHIVED)


async def quote(
    ctx: ServiceContext,
    skus: Sequence[str],
    *,
    currency: str,
    customer_id: str | None = None,
    staff: bool,
    at: datetime | None = None,
    channel: str | None = None,
) -> dict[str, VariantQuote]:
    """What each known SKU costs this customer at ``at`` (default now); unknown SKUs are absent.
    Every caller says whether it may see drafts: without ``staff``, a draft's SKUs are absent
    too, as unknown ones are: a quote reveals no more of a draft than its product page does."""
    currency = _currency_ok(currency, "currency")
    wanted = sorted(set(skus))
    if not wanted:
        return {}
    moment = at or utcnow()
    tax_inclusive = channel_prices_include_tax(ctx, channel)
    out: dict[str, VariantQuote] = {}
    async with ctx.db.driver_read() as tx:
        for sku in wanted:
            r = await tx.row(_QUOTE_VARIANT, sku=sku, currency=currency, customer_id=customer_id)
            if r is None or (not staff and r["status"] not in _PUBLISHED):
                continue
            sales = (
                [
                    SalePrice(s["amount"], s["starts_at"], s["ends_at"])
                    for s in await tx.rows(_QUOTE_SALES, variant_id=r["id"], currency=currency)
                ]
                if r["on_sale"]
                else []
            )
            listed = r["listed"]
            unit = domain.effective_unit_price(
                base=r["base"],
                price_list=int(listed) if listed is not None else None,
                sales=sales,
                at=moment,
            )
            reason, why = _not_purchasable(sku, r["status"], currency, priced=unit is not None)
            out[sku] = VariantQuote(
                reason=reason,
                reason_message=why,
                sku=sku,
                product_id=r["product_id"],
                product_name=r["product_name"],
                variant_name=r["name"],
                unit_price=unit if unit is not None else 0,
                currency=currency,
                tax_inclusive=tax_inclusive,
                weight_grams=r["weight_grams"],
                available=max(0, int(r["available"] or 0)),
                purchasable=reason is None,
            )
    return out


def _not_purchasable(
    sku: str, status: str, currency: str, *, priced: bool
) -> tuple[Literal["archived", "draft", "not_priced"] | None, str | None]:
    """Why a known SKU cannot be bought, as a code and in words; (None, None) when it can."""
    if status == ProductStatus.ARCHIVED:
        return "archived", f"{sku} is archived: it is no longer sold"
    if status != ProductStatus.ACTIVE:
        return "draft", f"{sku} is not on sale yet (its product is a draft)"
    if not priced:
        return "not_priced", f"{sku} has no price in {currency}"
    return None, None
