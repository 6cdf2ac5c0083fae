"""Demo data: a shop a new user recognises, generated deterministically from word lists.

Running it again changes nothing. Demo products are known by their own slugs and SKUs; only
those missing from the catalogue (neither slug nor any SKU taken) are created, and only the
variants this run created receive opening stock, wholesale prices and the sale. Existing rows,
a merchant's or a demo product a merchant edited, are never written.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from ecosistema.catalog import domain, service, transfer
from ecosistema.catalog.domain import MovementReason
from ecosistema.catalog.models import (
    categories,
    price_list_prices,
    price_lists,
    products,
    sale_prices,
    stock,
    stock_movements,
    variants,
    warehouses,
)
from ecosistema.catalog.schemas import (
    CategoryCreate,
    PriceListCreate,
    WarehouseCreate,
)
from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.service import ServiceContext

SEED = 2026
PRODUCT_COUNT = 240
WHOLESALE_DISCOUNT_BP = 8_000  # wholesale pays 80 % of the regular price
USD_PER_EUR_BP = 10_800

TREE: dict[str, tuple[str, ...]] = {
    "Clothing": ("T-Shirts", "Hoodies", "Jackets"),
    "Footwear": ("Sneakers", "Boots"),
    "Home": ("Kitchen", "Lighting"),
    "Outdoor": ("Camping", "Cycling"),
    "Accessories": ("Bags", "Watches"),
}
NOUNS: dict[str, tuple[str, ...]] = {
    "T-Shirts": ("Tee", "Crew Neck T-Shirt", "V-Neck Tee", "Pocket Tee"),
    "Hoodies": ("Hoodie", "Zip Hoodie", "Pullover", "Sweatshirt"),
    "Jackets": ("Rain Jacket", "Bomber Jacket", "Puffer Jacket", "Field Jacket"),
    "Sneakers": ("Runner", "Court Sneaker", "Trail Shoe", "Slip-On"),
    "Boots": ("Chelsea Boot", "Hiking Boot", "Work Boot", "Ankle Boot"),
    "Kitchen": ("Chef's Knife", "Cutting Board", "Dutch Oven", "Espresso Cups"),
    "Lighting": ("Desk Lamp", "Pendant Light", "Floor Lamp", "Lantern"),
    "Camping": ("Tent", "Sleeping Bag", "Camp Stove", "Trekking Poles"),
    "Cycling": ("Bike Helmet", "Cycling Jersey", "Saddle Bag", "Bike Light"),
    "Bags": ("Backpack", "Tote Bag", "Duffel", "Messenger Bag"),
    "Watches": ("Field Watch", "Dive Watch", "Chronograph", "Minimalist Watch"),
}
ADJECTIVES = (
    "Classic", "Everyday", "Urban", "Alpine", "Coastal", "Heritage", "Essential", "Nordic",
    "Vintage", "Modern", "Rugged", "Lightweight", "Premium", "Organic", "Studio", "Weekend",
)  # fmt: skip
MATERIALS = (
    "Cotton", "Linen", "Merino", "Canvas", "Leather", "Oak", "Walnut", "Steel", "Bamboo",
    "Recycled", "Suede", "Wool", "Ceramic", "Nylon",
)  # fmt: skip
COLOURS = ("Black", "White", "Navy", "Olive", "Sand", "Red", "Grey", "Forest Green")
SIZES = ("S", "M", "L", "XL")
SHOE_SIZES = ("39", "40", "41", "42", "43", "44")
WAREHOUSES = (("madrid", "Madrid fulfilment centre", 0), ("rotterdam", "Rotterdam hub", 1))
SIZED = {"T-Shirts", "Hoodies", "Jackets", "Cycling"}
WEIGHTS = {
    "T-Shirts": 180, "Hoodies": 550, "Jackets": 900, "Sneakers": 800, "Boots": 1300,
    "Kitchen": 700, "Lighting": 1800, "Camping": 2200, "Cycling": 350, "Bags": 900,
    "Watches": 120,
}  # fmt: skip


def _round_price(minor: int) -> int:
    """Shop-style prices ending in 90 minor units (19.90)."""
    return max(90, (minor // 100) * 100 + 90)


def catalogue(rng: random.Random) -> list[dict[str, Any]]:
    """The demo products, as import documents (deterministic for a given generator)."""
    leaves = [leaf for children in TREE.values() for leaf in children]
    used: set[str] = set()
    out: list[dict[str, Any]] = []
    for i in range(PRODUCT_COUNT):
        leaf = leaves[i % len(leaves)]
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(MATERIALS)} {rng.choice(NOUNS[leaf])}"
        slug = domain.unique_slug(domain.slugify(name), used)
        used.add(slug)
        base = _round_price(rng.randrange(990, 24_990))
        colours = rng.sample(COLOURS, k=rng.choice((1, 2, 3)))
        sizes: Sequence[str] = ()
        if leaf in SIZED:
            sizes = SIZES
        elif leaf in ("Sneakers", "Boots"):
            sizes = SHOE_SIZES[rng.randrange(0, 2) : rng.randrange(4, 7)]
        code = "".join(w[0] for w in slug.split("-")[:3]).upper()
        variants_out = []
        for colour in colours:
            for size in sizes or (None,):
                options = {"colour": colour} | ({"size": size} if size else {})
                sku = f"{code}-{i:04d}-{colour[:3].upper()}" + (f"-{size}" if size else "")
                extra = 0 if size in (None, "S", "M") else 500
                eur = base + extra
                variants_out.append(
                    {
                        "sku": sku,
                        "name": " / ".join(options.values()),
                        "options": options,
                        "weight_grams": WEIGHTS[leaf] + rng.randrange(0, 60),
                        "prices": {
                            "EUR": eur,
                            "USD": _round_price(eur * USD_PER_EUR_BP // 10_000),
                        },
                    }
                )
        out.append(
            {
                "slug": slug,
                "name": name,
                "description": (
                    f"The {name.lower()}: {rng.choice(MATERIALS).lower()} details, made to "
                    f"last, in {', '.join(c.lower() for c in colours)}."
                ),
                "status": "active" if i % 25 else "draft",
                "category": domain.slugify(leaf),
                "images": [f"https://images.ecosistema.dev/demo/{slug}/{n}.jpg" for n in (1, 2)],
                "variants": variants_out,
            }
        )
    return out


async def _ensure_categories(ctx: ServiceContext) -> int:
    async with ctx.db.read() as session:
        have = set((await session.scalars(select(categories.c.slug))).all())
        ids = dict((await session.execute(select(categories.c.slug, categories.c.id))).all())
    for parent, children in TREE.items():
        parent_slug = domain.slugify(parent)
        if parent_slug not in have:
            created = await service.create_category(ctx, CategoryCreate(name=parent))
            ids[parent_slug] = created.id
        for child in children:
            if domain.slugify(child) not in have:
                await service.create_category(
                    ctx, CategoryCreate(name=child, parent_id=ids[parent_slug])
                )
    return sum(1 + len(children) for children in TREE.values())


async def _ensure_warehouses(ctx: ServiceContext) -> dict[str, str]:
    async with ctx.db.read() as session:
        have = dict((await session.execute(select(warehouses.c.code, warehouses.c.id))).all())
    for code, name, priority in WAREHOUSES:
        if code not in have:
            created = await service.create_warehouse(
                ctx, WarehouseCreate(code=code, name=name, priority=priority)
            )
            have[code] = created.id
    return {code: str(have[code]) for code, _, _ in WAREHOUSES}


def _initial_stock(
    rng: random.Random, skus: Sequence[str], warehouse_codes: Sequence[str]
) -> dict[tuple[str, str], int]:
    """Each demo SKU's opening quantity per warehouse (deterministic, whatever the database)."""
    return {
        (sku, code): rng.choice((0, 3, 8, 12, 20, 35, 60))
        for sku in sorted(skus)
        for code in warehouse_codes
    }


async def _receive_initial_stock(
    ctx: ServiceContext,
    quantities: dict[tuple[str, str], int],
    new_skus: set[str],
    warehouse_ids: dict[str, str],
) -> None:
    """Open stock for the demo SKUs this run created, and only those."""
    now = utcnow()
    rows, moves = [], []
    for (sku, code), quantity in quantities.items():
        if sku not in new_skus:
            continue
        warehouse_id = warehouse_ids[code]
        rows.append(
            {
                "sku": sku,
                "warehouse_id": warehouse_id,
                "on_hand": quantity,
                "reserved": 0,
                "updated_at": now,
            }
        )
        if quantity:
            moves.append(
                {
                    "id": new_id(),
                    "sku": sku,
                    "warehouse_id": warehouse_id,
                    "on_hand_delta": quantity,
                    "reserved_delta": 0,
                    "reason": MovementReason.RECEIVE.value,
                    "reference": "demo",
                    "note": "initial stock",
                    "actor": "system",
                    "occurred_at": now,
                }
            )
    if not rows:
        return
    async with ctx.db.transaction() as session:
        # A stock row someone wrote between the import and now is theirs: leave it be.
        have = set(
            (
                await session.execute(
                    select(stock.c.sku, stock.c.warehouse_id).where(stock.c.sku.in_(new_skus))
                )
            ).all()
        )
        rows = [r for r in rows if (r["sku"], r["warehouse_id"]) not in have]
        moves = [m for m in moves if (m["sku"], m["warehouse_id"]) not in have]
        variant_of = dict(
            (
                await session.execute(
                    select(variants.c.sku, variants.c.id).where(variants.c.sku.in_(new_skus))
                )
            ).all()
        )
        for move in moves:
            move["variant_id"] = variant_of.get(move["sku"])
        if rows:
            await session.execute(insert(stock), rows)
        if moves:
            await session.execute(insert(stock_movements), moves)


async def _variant_ids(ctx: ServiceContext, skus: set[str]) -> dict[str, str]:
    async with ctx.db.read() as session:
        return dict(
            (
                await session.execute(
                    select(variants.c.sku, variants.c.id).where(variants.c.sku.in_(skus))
                )
            ).all()
        )


async def _add_wholesale_prices(
    ctx: ServiceContext, documents: Sequence[dict[str, Any]], variant_ids: dict[str, str]
) -> None:
    """Price the demo SKUs this run created at 80 % in the ``wholesale`` list (created if
    missing); prices already in the list are never touched."""
    async with ctx.db.read() as session:
        price_list_id = await session.scalar(
            select(price_lists.c.id).where(price_lists.c.code == "wholesale")
        )
    if price_list_id is None:
        created = await service.create_price_list(
            ctx, PriceListCreate(code="wholesale", name="Wholesale")
        )
        price_list_id = created.id
    rows = [
        {
            "price_list_id": price_list_id,
            "variant_id": variant_ids[v["sku"]],
            "currency": currency,
            "amount": amount * WHOLESALE_DISCOUNT_BP // 10_000,
        }
        for document in documents
        for v in document["variants"]
        if v["sku"] in variant_ids
        for currency, amount in sorted(v["prices"].items())
    ]
    async with ctx.db.transaction() as session:
        have = set(
            (
                await session.execute(
                    select(price_list_prices.c.variant_id, price_list_prices.c.currency).where(
                        price_list_prices.c.price_list_id == price_list_id,
                        price_list_prices.c.variant_id.in_(set(variant_ids.values())),
                    )
                )
            ).all()
        )
        rows = [r for r in rows if (r["variant_id"], r["currency"]) not in have]
        if rows:
            await session.execute(insert(price_list_prices), rows)


async def _wholesale_id(ctx: ServiceContext) -> str | None:
    async with ctx.db.read() as session:
        found = await session.scalar(
            select(price_lists.c.id).where(price_lists.c.code == "wholesale")
        )
    return None if found is None else str(found)


async def _assign_wholesale(ctx: ServiceContext, customer_ids: Sequence[str]) -> str | None:
    """Add the given customers to the wholesale list (never removes anyone)."""
    price_list_id = await _wholesale_id(ctx)
    if price_list_id is not None and customer_ids:
        current = await service.get_price_list_customers(ctx, price_list_id)
        if not set(customer_ids) <= set(current):
            await service.set_price_list_customers(
                ctx, price_list_id, sorted({*current, *customer_ids})
            )
    return price_list_id


# Identity's demo account for a trade buyer; the demo puts it on the wholesale list, so signing
# in as it shows wholesale prices (the demo customer keeps the regular ones).
WHOLESALE_DEMO_EMAIL = "wholesale@demo.ecosistema.dev"


async def _demo_wholesale_customer(ctx: ServiceContext) -> list[str]:
    """The id of identity's demo wholesale account, when identity is hosted here and seeded it."""
    identity_ctx = ctx.runtime.contexts.get("identity")
    if identity_ctx is None:
        return []
    # A scenario across services, as the demo order history's: identity's use case in its own
    # context.
    from ecosistema.identity import service as identity

    user = await identity.find_user_by_email(identity_ctx, email=WHOLESALE_DEMO_EMAIL)
    return [] if user is None else [user.id]


def _sale_skus(rng: random.Random, documents: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The demo SKUs on the autumn sale and their EUR regular price (deterministic)."""
    priced = sorted((v["sku"], v["prices"]["EUR"]) for d in documents for v in d["variants"])
    return dict(rng.sample(priced, k=min(30, len(priced))))


async def _start_sale(
    ctx: ServiceContext, on_sale: dict[str, int], variant_ids: dict[str, str]
) -> None:
    """A running autumn sale (25 % off in EUR) on the sale SKUs this run created."""
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "variant_id": variant_ids[sku],
            "currency": "EUR",
            "amount": eur * 3 // 4,
            "starts_at": now - timedelta(days=1),
            "ends_at": now + timedelta(days=30),
        }
        for sku, eur in sorted(on_sale.items())
        if sku in variant_ids
    ]
    if rows:
        async with ctx.db.transaction() as session:
            await session.execute(insert(sale_prices), rows)


async def _import(ctx: ServiceContext, documents: Sequence[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="catalog-demo-") as folder:
        path = Path(folder) / "demo.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for doc in documents:
                out.write(json.dumps(doc) + "\n")
        report = await transfer.import_file(ctx, path, format="jsonl", mode="all-or-nothing")
    if not report.applied:
        raise RuntimeError(f"demo catalogue did not import: {report.errors[:3]}")


async def _missing(
    ctx: ServiceContext, documents: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The demo products not in the catalogue: neither their slug nor any of their SKUs is
    taken (a product or SKU that exists may have been edited, or be a merchant's own)."""
    slugs = [d["slug"] for d in documents]
    skus = [v["sku"] for d in documents for v in d["variants"]]
    async with ctx.db.read() as session:
        taken_slugs = set(
            (await session.scalars(select(products.c.slug).where(products.c.slug.in_(slugs)))).all()
        )
        taken_skus = set(
            (await session.scalars(select(variants.c.sku).where(variants.c.sku.in_(skus)))).all()
        )
    return [
        d
        for d in documents
        if d["slug"] not in taken_slugs and not any(v["sku"] in taken_skus for v in d["variants"])
    ]


async def seed_demo(
    ctx: ServiceContext, *, wholesale_customer_ids: Sequence[str] = ()
) -> dict[str, Any]:
    """Create (once) the demo catalogue: 240 products with variants in 16 categories, two
    warehouses with stock, EUR and USD prices, a wholesale price list and a running sale.

    Only demo products that are missing are created, and only they get stock, wholesale
    prices and a sale: nothing that already exists is changed, so a merchant's products,
    stock and prices, and their edits to demo ones, survive any number of reseeds."""
    rng = random.Random(SEED)  # noqa: S311 - demo data, not secrets
    documents = catalogue(rng)
    quantities = _initial_stock(
        rng, [v["sku"] for d in documents for v in d["variants"]], [w[0] for w in WAREHOUSES]
    )
    on_sale = _sale_skus(rng, documents)
    missing = await _missing(ctx, documents)
    category_count = sum(1 + len(children) for children in TREE.values())
    if missing:
        await _ensure_categories(ctx)
        warehouse_ids = await _ensure_warehouses(ctx)
        await _import(ctx, missing)
        variant_ids = await _variant_ids(ctx, {v["sku"] for d in missing for v in d["variants"]})
        await _receive_initial_stock(ctx, quantities, set(variant_ids), warehouse_ids)
        await _add_wholesale_prices(ctx, missing, variant_ids)
        await _start_sale(ctx, on_sale, variant_ids)
        await service.invalidate(ctx)
    wholesale = [*wholesale_customer_ids, *await _demo_wholesale_customer(ctx)]
    price_list_id = await _assign_wholesale(ctx, wholesale)
    return {
        "products": len(documents),
        "variants": sum(len(d["variants"]) for d in documents),
        "categories": category_count,
        "warehouses": [code for code, _, _ in WAREHOUSES],
        "currencies": ["EUR", "USD"],
        "price_lists": {"wholesale": price_list_id},
    }


def demo_skus() -> list[str]:
    """The SKUs of the demo catalogue's active products (the demo order history buys these)."""
    return [
        variant["sku"]
        for document in catalogue(random.Random(SEED))  # noqa: S311 - demo data
        if document["status"] == "active"
        for variant in document["variants"]
    ]
