"""Product search: ranked full text, filters, sorting and cursor pagination.

The only place that knows the two dialects' full-text machinery. SQLite keeps an FTS5 table
``product_search`` (rows written here, whenever a product's searchable text changes) ranked by
``bm25``; PostgreSQL keeps a generated, weighted ``search_vector`` column on ``products`` with a
GIN index, ranked by ``ts_rank_cd``. Both are created by the migration for their dialect only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json
from sqlalchemy import (
    JSON,
    Float,
    Integer,
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
from ecosistema.catalog.schemas import ProductPage, SearchSort
from ecosistema.platform.db import Database
from ecosistema.platform.pagination import InvalidCursor, decode_cursor, encode_cursor

# Letters and digits only: quotes, operators and other punctuation in a shopper's query are
# never passed to FTS5 or to_tsquery, so they can neither change the query nor break it.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Han, kana, Hangul and their compatibility forms: scripts written without spaces between words.
_CJK = re.compile(
    r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    r"\uff66-\uff9f]"
)
# Letters below this code point (Latin, Greek, Cyrillic, Armenian) lose their accents in search.
_ALPHABETIC_SCRIPTS_END = 0x0530
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
    texts = {
        r.id: search_text(found.get(r.id, ()), r.category, name=r.name, description=r.description)
        for r in rows
    }
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


def fold(text: str) -> str:
    """Text as search compares it: case-folded (``ß`` is ``ss``), compatibility forms made
    plain (full-width letters, ligatures) and accents taken off Latin, Greek and Cyrillic
    letters (``é`` is ``e``; a kana's voicing mark stays, it changes the sound)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept: list[str] = []
    base = ""
    for char in decomposed:
        if unicodedata.combining(char) and base and ord(base) < _ALPHABETIC_SCRIPTS_END:
            continue
        kept.append(char)
        if not unicodedata.combining(char):
            base = char
    return unicodedata.normalize("NFC", "".join(kept))


def _extra_words(text: str, *, inner: bool) -> list[str]:
    """Words the engines would not find in ``text`` as written: their folded forms where they
    differ, and, with ``inner``, every tail of a word that starts at a Chinese, Japanese or
    Korean character (written without spaces, so ``タワー`` is found inside ``東京タワー``)."""
    if text.isascii():
        return []
    written = {w.lower() for w in _WORD.findall(text)}
    out = [w for w in _WORD.findall(fold(text)) if w not in written]
    if inner:
        for word in _WORD.findall(text):
            if _CJK.search(word):
                out.extend(fold(word[i:]) for i in range(1, len(word)) if _CJK.match(word[i]))
    return out


def search_text(
    variant_words: Iterable[tuple[str, str, dict[str, Any]]],
    category: str | None,
    *,
    name: str = "",
    description: str | None = None,
) -> str:
    """The searchable text besides name and description: variant SKUs, names and option
    values, the category name, and the words of all of these and of the name and description
    in the forms a shopper may type them (see ``fold``)."""
    words: list[str] = []
    for sku, variant_name, options in variant_words:
        words.extend([sku, variant_name, *(str(x) for x in options.values())])
    words.append(category or "")
    short = " ".join([name, *words])
    extra = [*_extra_words(short, inner=True), *_extra_words(description or "", inner=False)]
    return " ".join(dict.fromkeys([*words, *extra])).strip()


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
    """The words of a search query, folded (``fold``), at most ``MAX_TERMS``."""
    return _WORD.findall(fold(query or ""))[:MAX_TERMS]


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
    # Products changed at or after this instant (UTC) only: an integration's incremental sync.
    updated_since: datetime | None = None
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


_CATEGORY_PATH = select(categories.c.path).where(categories.c.id == bindparam("category_id"))
_EMPTY: dict[str, Any] = {"items": [], "next_cursor": None}


async def category_path(db: Database, category_id: str) -> str | None:
    """The path of a category, or None when there is no such category."""
    rows = await db.fetch(db.compile_read(_CATEGORY_PATH), category_id=category_id)
    return str(rows[0][0]) if rows else None


async def search_products(db: Database, query: SearchQuery) -> ProductPage:
    """One page of products matching ``query``, in the requested order."""
    return ProductPage.model_validate(await search_page(db, query))


def _json(value: Any) -> Any:
    return from_json(value) if isinstance(value, str | bytes) else value


def _utc(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class _Shape:
    """What decides a search statement's SQL; every value in it is a parameter."""

    dialect: str
    words: bool
    statuses: int
    category: bool
    min_price: bool
    max_price: bool
    in_stock: bool
    options: int
    updated_since: bool
    sort: str
    cursor: bool


@functools.lru_cache(maxsize=512)
def _statement(shape: _Shape) -> Any:
    """The search statement of one shape, built once; its parameters are named below."""
    p = products
    # A product's prices in the currency; with a range, only those in it: the range keeps a
    # product with a variant priced in it, and that variant's price is the one shown and sorted
    # by, so a product listed for 20-25 is never shown "from" 17.90.
    priced = [variants.c.product_id == p.c.id, prices.c.currency == bindparam("currency")]
    if shape.min_price:
        priced.append(prices.c.amount >= bindparam("min_price"))
    if shape.max_price:
        priced.append(prices.c.amount <= bindparam("max_price"))
    price_from = (
        select(func.min(prices.c.amount))
        .select_from(prices.join(variants, variants.c.id == prices.c.variant_id))
        .where(*priced)
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
        p.c.updated_at,
    ]
    conditions: list[Any] = [
        p.c.status.in_([bindparam(f"status_{n}") for n in range(shape.statuses)])
    ]
    if shape.updated_since:
        conditions.append(p.c.updated_at >= bindparam("updated_since"))
    source: Any = p
    rank: Any = None
    if shape.words:
        if shape.dialect == "sqlite":
            fts: Any = literal_column("product_search")
            source = p.join(_FTS, _FTS.c.product_id == p.c.id)
            conditions.append(fts.op("MATCH")(bindparam("match")))
            rank = func.bm25(fts, *(literal_column(repr(w)) for w in _BM25_WEIGHTS))
        else:
            vector: Any = literal_column("products.search_vector")
            tsquery = func.to_tsquery(literal_column("'simple'"), bindparam("match"))
            conditions.append(vector.op("@@")(tsquery))
            rank = -func.ts_rank_cd(vector, tsquery)
        columns.append(cast(rank, Float).label("rank"))
    if shape.category:
        conditions.append(
            p.c.category_id.in_(
                select(categories.c.id).where(
                    or_(
                        categories.c.path == bindparam("path"),
                        categories.c.path.like(bindparam("path_prefix")),
                    )
                )
            )
        )
    if shape.min_price or shape.max_price:
        conditions.append(
            exists(
                select(prices.c.variant_id)
                .select_from(prices.join(variants, variants.c.id == prices.c.variant_id))
                .where(*priced)
            )
        )
    if shape.in_stock:
        conditions.append(
            exists(
                select(stock.c.sku)
                .select_from(stock.join(variants, variants.c.sku == stock.c.sku))
                .where(variants.c.product_id == p.c.id, stock.c.on_hand > stock.c.reserved)
            )
        )
    for n in range(shape.options):
        conditions.append(
            exists(
                select(variants.c.id).where(
                    variants.c.product_id == p.c.id,
                    # Values match whatever their case (size:m finds M); names exactly.
                    func.lower(
                        variants.c.options[
                            bindparam(f"option_name_{n}", type_=JSON.JSONStrIndexType())
                        ].as_string()
                    )
                    == func.lower(bindparam(f"option_value_{n}")),
                )
            )
        )
    inner = select(*columns).select_from(source).where(*conditions).subquery("hits")
    key_column = {
        "relevance": inner.c.rank if rank is not None else inner.c.created_at,
        "newest": inner.c.created_at,
        "updated_at": inner.c.updated_at,
        "price_asc": inner.c.price_from,
        "price_desc": inner.c.price_from,
    }[shape.sort]
    descending = shape.sort in ("newest", "price_desc")
    outer = select(inner)
    if shape.sort in ("price_asc", "price_desc"):
        outer = outer.where(inner.c.price_from.is_not(None))
    if shape.cursor:
        key: Any = bindparam("cursor_key")
        last_id: Any = bindparam("cursor_id")
        if descending:
            outer = outer.where(
                or_(key_column < key, and_(key_column == key, inner.c.id < last_id))
            )
        else:
            outer = outer.where(
                or_(key_column > key, and_(key_column == key, inner.c.id > last_id))
            )
    order = (key_column.desc(), inner.c.id.desc()) if descending else (key_column, inner.c.id)
    return outer.order_by(*order).limit(bindparam("limit", type_=Integer))


async def search_page(db: Database, query: SearchQuery) -> dict[str, Any]:
    """One page of products matching ``query`` as the JSON-ready ``ProductPage`` document.

    The statement of each shape of query (which filters, which sort) is built and compiled
    once; the query's values are its parameters, and it runs on the driver (``Database.fetch``).
    """
    dialect = db.engine.dialect.name
    words = terms(query.text)
    if not words and query.text and query.text.strip():
        # Only punctuation: nothing a product's words could match.
        return _EMPTY
    sort = query.sort
    if sort == "relevance" and not words:
        sort = "newest"
    params: dict[str, Any] = {"currency": query.currency, "limit": query.limit + 1}
    for n, status in enumerate(query.statuses):
        params[f"status_{n}"] = status
    if words:
        if dialect == "sqlite":
            params["match"] = _TEXT_COLUMNS + " AND ".join(f'"{w}"*' for w in words) + ")"
        else:
            params["match"] = " & ".join(f"{w}:*" for w in words)
    if query.category_id is not None:
        path = await category_path(db, query.category_id)
        if path is None:
            return _EMPTY
        params["path"], params["path_prefix"] = path, path + "/%"
    if query.min_price is not None:
        params["min_price"] = query.min_price
    if query.max_price is not None:
        params["max_price"] = query.max_price
    for n, (name, value) in enumerate(query.options):
        params[f"option_name_{n}"], params[f"option_value_{n}"] = name, value
    if query.updated_since is not None:
        params["updated_since"] = query.updated_since
    fingerprint = query.fingerprint()
    ranked = sort == "relevance" and bool(words)
    if query.cursor:
        key_kind: type[datetime] | type[float] | type[int] = (
            float if ranked else int if sort in ("price_asc", "price_desc") else datetime
        )
        params["cursor_key"], params["cursor_id"] = page_position(
            query.cursor, fingerprint, key_kind
        )
    shape = _Shape(
        dialect=dialect,
        words=bool(words),
        statuses=len(query.statuses),
        category=query.category_id is not None,
        min_price=query.min_price is not None,
        max_price=query.max_price is not None,
        in_stock=query.in_stock,
        options=len(query.options),
        updated_since=query.updated_since is not None,
        sort=sort,
        cursor=bool(query.cursor),
    )
    rows = await db.fetch(db.compile_read(_statement(shape)), **params)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    currency = query.currency
    items = [
        {
            "id": r[0],
            "slug": r[1],
            "name": r[2],
            "status": r[3],
            "category_id": r[4],
            "images": _json(r[5]),
            "price_from": {"currency": currency, "amount": r[7]} if r[7] is not None else None,
            "created_at": _utc(r[6]),
            "updated_at": _utc(r[8]),
        }
        for r in rows
    ]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        key: datetime | float | int
        if sort in ("price_asc", "price_desc"):
            key = int(last[7])
        elif ranked:
            key = float(last[9])
        elif sort == "updated_at":
            key = _utc(last[8])
        else:
            key = _utc(last[6])
        next_cursor = page_cursor(fingerprint, key, last[0])
    return {"items": items, "next_cursor": next_cursor}
