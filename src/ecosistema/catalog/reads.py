"""Catalog's hot read: a product with its variants and prices, by id (or by slug, through its id).

Served on every product page, so it runs on the database driver itself (``Database.fetch``): one
statement, compiled once per database, whose rows (a product, its variants, their regular and
sale prices) are folded here into the public ``Product`` JSON. The body is built once per read
and carries a strong ETag; the document it serializes is exactly ``schemas.Product``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json, to_json
from sqlalchemy import String, bindparam, select, type_coerce

from ecosistema.catalog import domain
from ecosistema.catalog.domain import SalePrice
from ecosistema.catalog.models import prices, products, sale_prices, variants
from ecosistema.platform.db import Database


@dataclass(frozen=True, slots=True)
class ProductDocument:
    """A product serialized once: its status (for visibility), ETag and JSON body, and when
    its prices next change (Unix time), if a sale price is scheduled to start or end."""

    status: str
    etag: str
    body: bytes
    changes_at: float | None = None

    def to_cache(self) -> bytes:
        changes = "-" if self.changes_at is None else repr(self.changes_at)
        return f"{self.status} {self.etag} {changes}\n".encode() + self.body

    @classmethod
    def from_cache(cls, raw: bytes) -> ProductDocument:
        head, _, body = raw.partition(b"\n")
        status, etag, *rest = head.decode().split(" ")
        changes = float(rest[0]) if rest and rest[0] != "-" else None
        return cls(status=status, etag=etag, body=body, changes_at=changes)


def etag_of(body: bytes) -> str:
    """A strong ETag for a response body."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _raw(column: Any) -> Any:
    # Text as the driver stores it: JSON and SQLite's datetimes are decoded only once per
    # product or variant below, not for every repeated joined row.
    return type_coerce(column, String()).label(column.name)


# Rows multiply per variant (regular prices x sale prices), a handful at most.
PRODUCT_STATEMENT = (
    select(
        products.c.id,
        products.c.slug,
        products.c.name,
        products.c.description,
        products.c.status,
        products.c.category_id,
        _raw(products.c.images),
        _raw(products.c.created_at),
        _raw(products.c.updated_at),
        variants.c.id.label("v_id"),
        variants.c.sku,
        variants.c.name.label("v_name"),
        _raw(variants.c.options),
        variants.c.weight_grams,
        variants.c.position,
        prices.c.currency.label("p_currency"),
        prices.c.amount.label("p_amount"),
        sale_prices.c.id.label("s_id"),
        sale_prices.c.currency.label("s_currency"),
        sale_prices.c.amount.label("s_amount"),
        _raw(sale_prices.c.starts_at),
        _raw(sale_prices.c.ends_at),
    )
    .select_from(
        products.outerjoin(variants, variants.c.product_id == products.c.id)
        .outerjoin(prices, prices.c.variant_id == variants.c.id)
        .outerjoin(sale_prices, sale_prices.c.variant_id == variants.c.id)
    )
    .where(products.c.id == bindparam("product_id"))
)
# No ORDER BY: sorting the joined rows would cost SQLite a temporary B-tree on every read; the
# few variants are put in order (position, then SKU) once folded.

# Positions in a row of PRODUCT_STATEMENT.
(
    _ID,
    _SLUG,
    _NAME,
    _DESCRIPTION,
    _STATUS,
    _CATEGORY,
    _IMAGES,
    _CREATED,
    _UPDATED,
    _V_ID,
    _SKU,
    _V_NAME,
    _OPTIONS,
    _WEIGHT,
    _POSITION,
    _P_CURRENCY,
    _P_AMOUNT,
    _S_ID,
    _S_CURRENCY,
    _S_AMOUNT,
    _S_STARTS,
    _S_ENDS,
) = range(22)


def _json(value: Any) -> Any:
    return from_json(value) if isinstance(value, str | bytes) else value


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def fold_product(rows: list[Any], at: datetime) -> tuple[dict[str, Any], datetime | None] | None:
    """The ``Product`` document from the rows of PRODUCT_STATEMENT, and the next moment its
    current prices change (a sale starts or ends); ``None`` without rows."""
    if not rows:
        return None
    variant_docs: list[dict[str, Any]] = []
    by_id: dict[str, tuple[dict[str, int], dict[str, dict[str, Any]]]] = {}
    windows: list[SalePrice] = []
    for r in rows:
        variant_id = r[_V_ID]
        if variant_id is None:
            continue
        found = by_id.get(variant_id)
        if found is None:
            found = by_id[variant_id] = ({}, {})
            variant_docs.append(
                {
                    "id": variant_id,
                    "sku": r[_SKU],
                    "name": r[_V_NAME],
                    "options": _json(r[_OPTIONS]),
                    "weight_grams": r[_WEIGHT],
                    "position": r[_POSITION],
                }
            )
        regular, sales = found
        if r[_P_CURRENCY] is not None:
            regular[r[_P_CURRENCY]] = r[_P_AMOUNT]
        sale_id = r[_S_ID]
        if sale_id is not None and sale_id not in sales:
            sale = SalePrice(r[_S_AMOUNT], _utc(r[_S_STARTS]), _utc(r[_S_ENDS]))
            sales[sale_id] = {
                "currency": r[_S_CURRENCY],
                "amount": sale.amount,
                "starts_at": sale.starts_at,
                "ends_at": sale.ends_at,
            }
            windows.append(sale)
    variant_docs.sort(key=lambda v: (v["position"], v["sku"]))
    for variant in variant_docs:
        regular, sales = by_id[variant["id"]]
        base: list[dict[str, Any]] = [
            {"currency": c, "amount": a} for c, a in sorted(regular.items())
        ]
        its_sales = sorted(sales.values(), key=lambda s: (s["currency"], s["starts_at"] or at))
        if its_sales:
            current = [
                {
                    "currency": price["currency"],
                    "amount": domain.effective_unit_price(
                        base=price["amount"],
                        price_list=None,
                        sales=[
                            SalePrice(s["amount"], s["starts_at"], s["ends_at"])
                            for s in its_sales
                            if s["currency"] == price["currency"]
                        ],
                        at=at,
                    ),
                }
                for price in base
            ]
        else:
            current = [dict(price) for price in base]
        variant["prices"] = base
        variant["current_prices"] = current
        variant["sale_prices"] = its_sales
    first = rows[0]
    doc = {
        "id": first[_ID],
        "slug": first[_SLUG],
        "name": first[_NAME],
        "description": first[_DESCRIPTION],
        "status": first[_STATUS],
        "category_id": first[_CATEGORY],
        "images": _json(first[_IMAGES]),
        "variants": variant_docs,
        "created_at": _utc(first[_CREATED]),
        "updated_at": _utc(first[_UPDATED]),
    }
    return doc, domain.next_price_change(windows, at) if windows else None


PRODUCT_ID_BY_SLUG = select(products.c.id).where(products.c.slug == bindparam("slug"))


async def product_id_by_slug(db: Database, slug: str) -> str | None:
    """The id of the product with this slug (any status), or ``None``."""
    rows = await db.fetch(db.compile_read(PRODUCT_ID_BY_SLUG), slug=slug)
    return str(rows[0][0]) if rows else None


async def load_product(
    db: Database, product_id: str, at: datetime
) -> tuple[ProductDocument, datetime | None] | None:
    """A product's serialized document as of ``at`` and when its prices next change; ``None``
    when there is no product with this id."""
    rows = await db.fetch(db.compile_read(PRODUCT_STATEMENT), product_id=product_id)
    folded = fold_product(rows, at)
    if folded is None:
        return None
    doc, changes_at = folded
    body = to_json(doc)
    changes = changes_at.timestamp() if changes_at is not None else None
    document = ProductDocument(
        status=doc["status"], etag=etag_of(body), body=body, changes_at=changes
    )
    return document, changes_at
