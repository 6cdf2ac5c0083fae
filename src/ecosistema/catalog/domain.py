"""Catalog rules with no I/O: slugs, product status, price selection, availability, stock plans."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ecosistema.platform.errors import ProblemError, pattern_rule

SLUG_MAX_LENGTH = 120
# Codes (warehouses, price lists) are ASCII; slugs (products, categories) may hold any letters.
CODE_PATTERN = pattern_rule(
    r"^[a-z0-9]+(?:-[a-z0-9]+)*$",
    "a code: lower-case letters a-z and digits joined by single hyphens, e.g. wholesale or eu-2",
)
# A new SKU follows the platform's rule (the one orders checks carts against). Catalogues from
# before that rule may hold SKUs with "/": requests that name an existing SKU still take them.
STORED_SKU_PATTERN = pattern_rule(
    r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$",
    "a SKU: a letter or digit, then letters, digits, `.`, `_`, `-` or `/`",
)


class ProductStatus(StrEnum):
    """Where a product is in its life: drafts and archived products are visible to staff only."""

    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


class ReservationStatus(StrEnum):
    """A reservation holds stock until the order is paid (committed) or not (released)."""

    ACTIVE = "active"
    COMMITTED = "committed"
    RELEASED = "released"


class MovementReason(StrEnum):
    """Why a stock level changed; every change is recorded with one of these."""

    RESERVE = "reserve"
    RELEASE = "release"
    EXPIRE = "expire"
    COMMIT = "commit"
    RESTOCK = "restock"
    ADJUST = "adjust"
    RECEIVE = "receive"


class InsufficientStock(ProblemError):
    """Some lines of a reservation cannot be covered; ``lines`` gives every line's requested
    quantity and what was available."""

    status, type, title = 409, "insufficient-stock", "Insufficient stock"

    def __init__(self, lines: Sequence[Mapping[str, Any]], detail: str | None = None) -> None:
        short = ", ".join(
            f"{line['sku']} ({line['available']} available, {line['requested']} requested)"
            for line in lines
            if line["requested"] > line["available"]
        )
        super().__init__(detail or f"Not enough stock for: {short}.", lines=list(lines))
        self.lines = [dict(line) for line in lines]


def _slug_words(text: str) -> str:
    out: list[str] = []
    for char in unicodedata.normalize("NFC", text):
        # Latin letters lose their accents (Crème -> creme); letters and digits with no ASCII
        # form (Cyrillic, Greek, CJK, ...) are kept as they are, lower-cased, and so are the
        # combining marks that belong to them (Devanagari vowel signs).
        ascii_form = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
        ascii_form = "".join(c for c in ascii_form if c.isalnum())
        if ascii_form:
            out.append(ascii_form.lower())
        elif char.isalnum():
            out.append(char.lower())
        elif unicodedata.category(char).startswith("M") and out and out[-1] != "-":
            out.append(char)
        else:
            out.append("-")
    slug = "-".join(part for part in "".join(out).split("-") if part)
    if len(slug) > SLUG_MAX_LENGTH:
        slug = slug[:SLUG_MAX_LENGTH].rstrip("-")
    return slug


def slugify(text: str) -> str:
    """A URL slug from a name: its words, lower case, joined by single hyphens. Latin letters
    lose their accents; other scripts keep their letters (``Чай зелёный`` -> ``чай-зелёный``),
    so a name in any script gets a slug of its own."""
    slug = _slug_words(text)
    for _ in range(3):  # lower-casing can, rarely, expose a letter with an ASCII form
        again = _slug_words(slug)
        if again == slug:
            break
        slug = again
    return slug


# The common case, told without slugifying: ASCII words joined by single hyphens, which
# ``slugify`` always leaves as they are (an import checks one slug per row).
_ASCII_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def is_slug(value: str) -> bool:
    """Whether ``value`` is already a well-formed slug (``slugify`` leaves it as it is)."""
    if not 0 < len(value) <= SLUG_MAX_LENGTH:
        return False
    return _ASCII_SLUG.fullmatch(value) is not None or slugify(value) == value


def unique_slug(base: str, taken: Iterable[str]) -> str:
    """``base`` itself if free, else ``base-2``, ``base-3``… (the first one not taken)."""
    used = set(taken)
    stem = base or "product"
    if stem not in used:
        return stem
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = stem[: SLUG_MAX_LENGTH - len(suffix)].rstrip("-") + suffix
        if candidate not in used:
            return candidate
        n += 1


# The longest materialised path a category may have (its column's width).
CATEGORY_PATH_MAX_LENGTH = 1000


def category_path(parent_path: str | None, slug: str) -> str:
    """The materialised path of a category: its ancestors' slugs and its own, ``/``-joined."""
    return f"{parent_path}/{slug}" if parent_path else slug


def is_within(path: str, ancestor_path: str) -> bool:
    """Whether the category at ``path`` is ``ancestor_path`` or one of its descendants."""
    return path == ancestor_path or path.startswith(ancestor_path + "/")


@dataclass(frozen=True, slots=True)
class SalePrice:
    """A scheduled price in one currency, valid from ``starts_at`` (inclusive) to ``ends_at``
    (exclusive); an open end never expires."""

    amount: int
    starts_at: datetime | None
    ends_at: datetime | None

    def active_at(self, at: datetime) -> bool:
        """Whether the sale runs at ``at``."""
        return (self.starts_at is None or self.starts_at <= at) and (
            self.ends_at is None or at < self.ends_at
        )


def effective_unit_price(
    *,
    base: int | None,
    price_list: int | None,
    sales: Iterable[SalePrice],
    at: datetime,
) -> int | None:
    """The price a customer pays: their price list's if they have one, else the base price;
    a sale running at ``at`` wins when it is lower. ``None`` without a regular price: a price
    list or a sale alone does not put a variant on sale in a currency."""
    if base is None:
        return None
    regular = price_list if price_list is not None else base
    running = [s.amount for s in sales if s.active_at(at)]
    return min([regular, *running])


def next_price_change(sales: Iterable[SalePrice], after: datetime) -> datetime | None:
    """The first moment after ``after`` at which a sale starts or ends (caches expire then)."""
    moments = [
        moment
        for sale in sales
        for moment in (sale.starts_at, sale.ends_at)
        if moment is not None and moment > after
    ]
    return min(moments) if moments else None


def available(on_hand: int, reserved: int) -> int:
    """Units that can still be promised: on hand less reserved, never negative."""
    return max(0, on_hand - reserved)


def prices_include_tax(channel: str, default: bool, per_channel: Mapping[str, bool]) -> bool:
    """Whether a channel shows tax-inclusive prices: its own setting, else the default."""
    return per_channel.get(channel, default)


def merge_lines(lines: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Order lines merged by SKU and sorted, so stock rows are always locked in the same order."""
    totals: dict[str, int] = {}
    for sku, quantity in lines:
        if quantity <= 0:
            raise ValueError(f"quantity for {sku} must be positive")
        totals[sku] = totals.get(sku, 0) + quantity
    return sorted(totals.items())


def allocate(quantity: int, stock: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Split ``quantity`` over warehouses ``[(warehouse_id, available)]`` in the given order:
    a single warehouse that can ship it all is preferred; else take greedily. Returns what to
    take from each; the sum is less than ``quantity`` when stock is short."""
    for warehouse_id, free in stock:
        if free >= quantity:
            return [(warehouse_id, quantity)]
    plan: list[tuple[str, int]] = []
    remaining = quantity
    for warehouse_id, free in stock:
        if remaining == 0:
            break
        take = min(free, remaining)
        if take > 0:
            plan.append((warehouse_id, take))
            remaining -= take
    return plan


def crosses_below(before: int, after: int, threshold: int) -> bool:
    """Whether availability just fell below the low-stock threshold."""
    return before >= threshold > after
