"""Product search: ranked full text, filters, sorting and cursor pagination.

The only place that knows the two dialects' full-text machinery. SQLite keeps an FTS5 table
``product_search`` (rows written here, whenever a product's searchable text changes) ranked by
``bm25``; PostgreSQL keeps a generated, weighted ``search_vector`` column on ``products`` with a
GIN index, ranked by ``ts_rank_cd``. Both are created by the migration for their dialect only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Float,
    and_,
    bindparam,
    cast,
    column,
    exists,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.catalog.domain import ProductStatus
from ecosistema.catalog.models import categories, prices, products, stock, variants
from ecosistema.catalog.schemas import Price, ProductPage, ProductSummary, SearchSort
from ecosistema.platform.pagination import InvalidCursor, decode_cursor, encode_cursor

# Letters and digits only: quotes, operators and other punctuation in a shopper's query are
# never passed to FTS5 or to_tsquery, so they can neither change the query nor break it.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_TERMS = 12
# bm25 weights per FTS5 column: product_id, name, search_text, description.
_BM25_WEIGHTS = (0.0, 10.0, 4.0, 1.0)
_FTS = table("product_search", column("product_id"))
# The product id is an indexed FTS5 column so that a product's row is found through the index
# (an UNINDEXED column would make every refresh a full scan); shoppers' words never search it.
_TEXT_COLUMNS = "{name search_text description} : ("


def _product_key(product_id: str) -> str:
    return f'product_id : "{product_id}"'


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def refresh(session: AsyncSession, product_ids: Sequence[str]) -> None:
    """Recompute the searchable text of these products (variant names, SKUs, option values and
    category name) and, on SQLite, their FTS5 rows."""
    if not product_ids:
        return
    ids = list(dict.fromkeys(product_ids))
    rows = (
        await session.execute(
            select(
                products.c.id,
                products.c.name,
                products.c.description,
                categories.c.name.label("category"),
            )
            .select_from(products.outerjoin(categories, categories.c.id == products.c.category_id))
            .where(products.c.id.in_(ids))
        )
    ).all()
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for v in (
        await session.execute(
            select(variants.c.product_id, variants.c.sku, variants.c.name, variants.c.options)
            .where(variants.c.product_id.in_(ids))
            .order_by(variants.c.product_id, variants.c.position)
        )
    ).all():
        found[v.product_id].append((v.sku, v.name, v.options or {}))
    texts = {r.id: search_text(found.get(r.id, ()), r.category) for r in rows}
    if not texts:
        return
    await session.execute(
        update(products)
        .where(products.c.id == bindparam("pid"))
        .values(search_text=bindparam("text")),
        [{"pid": pid, "text": t} for pid, t in texts.items()],
        execution_options={"synchronize_session": False},
    )
    if _dialect(session) == "sqlite":
        await session.execute(
            text("DELETE FROM product_search WHERE product_search MATCH :key"),
            [{"key": _product_key(pid)} for pid in texts],
        )
        await index_new(session, [(r.id, r.name, texts[r.id], r.description) for r in rows])


def search_text(
    variant_words: Iterable[tuple[str, str, dict[str, Any]]], category: str | None
) -> str:
    """The searchable text besides name and description: variant SKUs, names and option
    values, and the category name."""
    words: list[str] = []
    for sku, name, options in variant_words:
        words.extend([sku, name, *(str(x) for x in options.values())])
    return " ".join(dict.fromkeys([*words, category or ""])).strip()


async def index_new(session: AsyncSession, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Index products that have no search row yet: ``(id, name, search_text, description)``.
    PostgreSQL's generated column needs nothing; SQLite's FTS5 table gets the rows."""
    if rows and _dialect(session) == "sqlite":
        await session.execute(
            text(
                "INSERT INTO product_search (product_id, name, search_text, description) "
                "VALUES (:pid, :name, :text, :description)"
            ),
            [
                {"pid": pid, "name": name, "text": words, "description": description}
                for pid, name, words, description in rows
            ],
        )


def terms(query: str | None) -> list[str]:
    """The words of a search query, lower-cased, at most ``MAX_TERMS``."""
    return [w.lower() for w in _WORD.findall(query or "")][:MAX_TERMS]


@dataclass(frozen=True)
class SearchQuery:
    """What a shopper asked for; ``statuses`` is widened for staff only."""

    text: str | None = None
    category_id: str | None = None
    currency: str = "EUR"
    min_price: int | None = None
    max_price: int | None = None
    in_stock: bool = False
    options: tuple[tuple[str, str], ...] = ()
    statuses: tuple[str, ...] = (ProductStatus.ACTIVE.value,)
    sort: SearchSort = "relevance"
    limit: int = 20
    cursor: str | None = field(default=None, compare=False)

    def fingerprint(self) -> str:
        """Identifies the query without its cursor, so a cursor is only valid for its query."""
        data = asdict(self)
        data.pop("cursor")
        raw = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.blake2b(raw, digest_size=8).hexdigest()


def page_cursor(fingerprint: str, key: datetime | float | int, last_id: str) -> str:
    """An opaque cursor: where the previous page ended, for this query only."""
    return encode_cursor(fingerprint, key, last_id)


def page_position(
    cursor: str, fingerprint: str, key_kind: type[datetime] | type[float] | type[int]
) -> tuple[datetime | float | int, str]:
    """The sort key and id a cursor points after; InvalidCursor (422) when it is not a cursor
    of this very query."""
    fp, key, last_id = decode_cursor(cursor, str, key_kind, str)
    if fp != fingerprint:
        raise InvalidCursor("The cursor belongs to another search.")
    if isinstance(key, datetime):
        try:
            key = key.astimezone(UTC)
        except OverflowError as exc:
            raise InvalidCursor() from exc
    return key, last_id


async def category_path(session: AsyncSession, category_id: str) -> str | None:
    """The path of a category, or None when there is no such category."""
    path: str | None = await session.scalar(
        select(categories.c.path).where(categories.c.id == category_id)
    )
    return path


async def search_products(session: AsyncSession, query: SearchQuery) -> ProductPage:
    """One page of products matching ``query``, in the requested order."""
    p = products
    words = terms(query.text)
    if not words and query.text and query.text.strip():
        # Only punctuation: nothing a product's words could match.
        return ProductPage(items=[], next_cursor=None)
    sort = query.sort
    if sort == "relevance" and not words:
        sort = "newest"

    price_from = (
        select(func.min(prices.c.amount))
        .select_from(prices.join(variants, variants.c.id == prices.c.variant_id))
        .where(variants.c.product_id == p.c.id, prices.c.currency == query.currency)
        .scalar_subquery()
    )
    columns: list[Any] = [
        p.c.id,
        p.c.slug,
        p.c.name,
        p.c.status,
        p.c.category_id,
        p.c.images,
        p.c.created_at,
        price_from.label("price_from"),
    ]
    conditions: list[Any] = [p.c.status.in_(query.statuses)]
    source: Any = p
    rank: Any = None
    if words:
        if _dialect(session) == "sqlite":
            fts: Any = literal_column("product_search")
            match = _TEXT_COLUMNS + " AND ".join(f'"{w}"*' for w in words) + ")"
            source = p.join(_FTS, _FTS.c.product_id == p.c.id)
            conditions.append(fts.op("MATCH")(match))
            rank = func.bm25(fts, *_BM25_WEIGHTS)
        else:
            vector: Any = literal_column("products.search_vector")
            tsquery = func.to_tsquery("simple", " & ".join(f"{w}:*" for w in words))
            conditions.append(vector.op("@@")(tsquery))
            rank = -func.ts_rank_cd(vector, tsquery)
        columns.append(cast(rank, Float).label("rank"))
    if query.category_id is not None:
        path = await category_path(session, query.category_id)
        if path is None:
            return ProductPage(items=[], next_cursor=None)
        conditions.append(
            p.c.category_id.in_(
                select(categories.c.id).where(
                    or_(categories.c.path == path, categories.c.path.like(path + "/%"))
                )
            )
        )
    if query.min_price is not None or query.max_price is not None:
        bounds = [variants.c.product_id == p.c.id, prices.c.currency == query.currency]
        if query.min_price is not None:
            bounds.append(prices.c.amount >= query.min_price)
        if query.max_price is not None:
            bounds.append(prices.c.amount <= query.max_price)
        conditions.append(
            exists(
                select(prices.c.variant_id)
                .select_from(prices.join(variants, variants.c.id == prices.c.variant_id))
                .where(*bounds)
            )
        )
    if query.in_stock:
        conditions.append(
            exists(
                select(stock.c.sku)
                .select_from(stock.join(variants, variants.c.sku == stock.c.sku))
                .where(variants.c.product_id == p.c.id, stock.c.on_hand > stock.c.reserved)
            )
        )
    for name, value in query.options:
        conditions.append(
            exists(
                select(variants.c.id).where(
                    variants.c.product_id == p.c.id,
                    variants.c.options[name].as_string() == value,
                )
            )
        )
    inner = select(*columns).select_from(source).where(*conditions).subquery("hits")
    key_column = {
        "relevance": inner.c.rank if rank is not None else inner.c.created_at,
        "newest": inner.c.created_at,
        "price_asc": inner.c.price_from,
        "price_desc": inner.c.price_from,
    }[sort]
    descending = sort in ("newest", "price_desc")
    outer = select(inner)
    if sort in ("price_asc", "price_desc"):
        outer = outer.where(inner.c.price_from.is_not(None))
    fingerprint = query.fingerprint()
    if query.cursor:
        key_kind: type[datetime] | type[float] | type[int] = {
            "relevance": float if rank is not None else datetime,
            "newest": datetime,
            "price_asc": int,
            "price_desc": int,
        }[sort]
        key, last_id = page_position(query.cursor, fingerprint, key_kind)
        if descending:
            outer = outer.where(
                or_(key_column < key, and_(key_column == key, inner.c.id < last_id))
            )
        else:
            outer = outer.where(
                or_(key_column > key, and_(key_column == key, inner.c.id > last_id))
            )
    order = (key_column.desc(), inner.c.id.desc()) if descending else (key_column, inner.c.id)
    outer = outer.order_by(*order).limit(query.limit + 1)
    rows = (await session.execute(outer)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    items = [
        ProductSummary(
            id=r.id,
            slug=r.slug,
            name=r.name,
            status=r.status,
            category_id=r.category_id,
            images=r.images,
            price_from=(
                Price(currency=query.currency, amount=r.price_from)
                if r.price_from is not None
                else None
            ),
            created_at=r.created_at,
        )
        for r in rows
    ]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        key_name = {
            "relevance": "rank" if rank is not None else "created_at",
            "newest": "created_at",
            "price_asc": "price_from",
            "price_desc": "price_from",
        }[sort]
        next_cursor = page_cursor(fingerprint, getattr(last, key_name), last.id)
    return ProductPage(items=items, next_cursor=next_cursor)
