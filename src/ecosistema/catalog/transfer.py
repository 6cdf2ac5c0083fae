"""Bulk import and export of products as CSV or JSON Lines, streamed both ways.

Import reads the source incrementally (a request body is spooled to a temporary file as it
arrives) and writes in batches, so a file of any size never sits whole in memory. Products are
matched by slug and variants by SKU: rows update what exists and create the rest.

- ``all-or-nothing``: every row is validated and written inside one transaction, which is
  rolled back if any row is refused: the report then lists every bad row and nothing applies.
- ``skip-invalid``: valid rows are applied batch by batch; every refused row is reported.

CSV has one row per variant (``sku`` empty for a product without variants); consecutive rows
with the same ``slug`` form one product, whose fields come from its first accepted row. Prices
are ``price_<CUR>`` columns (minor units), options ``name=value;name=value`` (or a JSON object
when a value holds ``;`` or ``=``), images space-separated URLs. JSON Lines has one product per
line, with nested ``variants`` and ``prices`` as ``{"EUR": 1999}``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.catalog import domain, search, service
from ecosistema.catalog.domain import ProductStatus
from ecosistema.catalog.models import categories, prices, products, variants
from ecosistema.catalog.schemas import (
    Amount,
    Description,
    ImageUrl,
    ImportMode,
    ImportReport,
    Name,
    Options,
    RowError,
    RowProblem,
    Sku,
    Slug,
    TransferFormat,
)
from ecosistema.platform.csvsafe import (
    NOT_UTF8_REASON,
    csv_text,
    escape_row,
    is_not_utf8,
    refuse_repeated_columns,
    unescape_cell,
    unreadable_row_reason,
)
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import (
    Unprocessable,
    UnsupportedMediaType,
    field_error,
    validation_message,
)
from ecosistema.platform.money import ISO_4217
from ecosistema.platform.service import ServiceContext

CSV_FIELDS = (
    "slug",
    "name",
    "description",
    "status",
    "category",
    "images",
    "sku",
    "variant_name",
    "options",
    "weight_grams",
)
PRICE_PREFIX = "price_"
MAX_ERRORS_REPORTED = 10_000
EXPORT_BATCH = 500
_SPOOL_IN_MEMORY = 1_048_576

ProgressFn = Callable[[int], None]


class _IdPool:
    """Row ids in the format of ``new_id`` (random UUID4, hex), drawn from the system's random
    source a thousand at a time: an import needs one per product, variant and event, and one
    system call each was a measurable share of its time."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._ready: list[str] = []

    def take(self) -> str:
        if not self._ready:
            raw = bytearray(os.urandom(16 * self.size))
            for at in range(0, len(raw), 16):
                raw[at + 6] = (raw[at + 6] & 0x0F) | 0x40  # version 4
                raw[at + 8] = (raw[at + 8] & 0x3F) | 0x80  # RFC 4122 variant
            hexed = raw.hex()
            self._ready = [hexed[i : i + 32] for i in range(0, len(hexed), 32)]
        return self._ready.pop()


_IDS = _IdPool()


def _known_currency(code: str) -> str:
    if code.upper() not in ISO_4217:
        raise ValueError(f"unknown currency {code}")
    return code


# Checked key by key, so every unknown currency of a row is reported along with its other faults.
CurrencyKey = Annotated[str, AfterValidator(_known_currency)]


class ImportVariant(BaseModel):
    """One variant row of an import."""

    model_config = ConfigDict(extra="forbid")

    sku: Sku
    name: Name | None = None
    options: Options = Field(default_factory=dict)
    weight_grams: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 0
    prices: dict[CurrencyKey, Amount] = Field(default_factory=dict, max_length=50)

    @field_validator("prices")
    @classmethod
    def _currencies(cls, value: dict[str, int]) -> dict[str, int]:
        prices = {c.upper(): amount for c, amount in value.items()}
        if len(prices) != len(value):
            raise ValueError("one price per currency")
        return prices


class ImportProduct(BaseModel):
    """One product of an import (a JSON line, or a group of CSV rows)."""

    model_config = ConfigDict(extra="forbid")

    slug: Slug | None = None
    name: Name
    description: Description = ""
    status: ProductStatus = ProductStatus.DRAFT
    category: Slug | None = None
    images: list[ImageUrl] = Field(default_factory=list, max_length=50)
    variants: list[ImportVariant] = Field(default_factory=list, max_length=500)


@dataclass
class _Record:
    """A parsed product and the source lines it came from (one per variant for CSV)."""

    product: ImportProduct
    slug: str
    lines: list[int]
    variant_lines: list[int]
    jsonl: bool = False

    def sku_field(self, index: int) -> str:
        """How the input names the SKU of its ``index``-th variant: a column or a path."""
        return f"variants.{index}.sku" if self.jsonl else "sku"


Problem = tuple[str | None, str]  # (CSV column or JSON Lines field path, what is wrong)


def _no_rank(_field: str | None) -> tuple[int, ...]:
    return ()


@dataclass
class _Tally:
    rows_read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    drafts: int = 0
    variants: int = 0
    status_column: bool = True
    errors: list[RowError] = field(default_factory=list)
    skipped_lines: set[int] = field(default_factory=set)
    error_at: dict[int, int] = field(default_factory=dict)
    # Where a field comes in a row: the header's column order (CSV), a product's field order
    # (JSON Lines); a row's problems are listed in that order, whichever step found them.
    rank: Callable[[str | None], tuple[int, ...]] = _no_rank
    # Rows are refused both by the parser (in a worker thread) and by the batch checks (on the
    # event loop), at the same time.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(
        self,
        line: int,
        problems: Sequence[Problem],
        *,
        sku: str | None = None,
        slug: str | None = None,
    ) -> None:
        """Record problems of a line; a line refused already gets them added to its own."""
        with self.lock:
            self._refuse(line, problems, sku=sku, slug=slug)

    def _refuse(
        self, line: int, problems: Sequence[Problem], *, sku: str | None, slug: str | None
    ) -> None:
        if line in self.skipped_lines:
            at = self.error_at.get(line)
            if at is None:
                return
            known = self.errors[at]
            have = [(p.field, p.reason) for p in known.problems]
            added = [p for p in problems if p not in have]
            if added:
                self.errors[at] = self._error(
                    line, [*have, *added], sku=known.sku or sku, slug=known.slug or slug
                )
            return
        self.skipped_lines.add(line)
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.error_at[line] = len(self.errors)
            self.errors.append(self._error(line, problems, sku=sku, slug=slug))

    def _error(
        self, line: int, problems: Sequence[Problem], *, sku: str | None, slug: str | None
    ) -> RowError:
        ranked = sorted(dict.fromkeys(problems), key=lambda p: self.rank(p[0]))
        return RowError(
            line=line,
            reason="; ".join(f"{where}: {what}" if where else what for where, what in ranked),
            sku=sku,
            slug=slug,
            problems=[RowProblem(field=where, reason=what) for where, what in ranked],
        )

    def report(self, mode: ImportMode, format: TransferFormat, applied: bool) -> ImportReport:
        return ImportReport(
            mode=mode,
            format=format,
            applied=applied,
            rows_read=self.rows_read,
            products_created=self.created if applied else 0,
            products_updated=self.updated if applied else 0,
            variants_written=self.variants if applied else 0,
            rows_skipped=len(self.skipped_lines) if applied else self.rows_read,
            products_unchanged=self.unchanged if applied else 0,
            products_draft=self.drafts if applied else 0,
            notes=self.notes() if applied else [],
            errors=sorted(self.errors, key=lambda e: e.line),
        )

    def notes(self) -> list[str]:
        if not self.drafts:
            return []
        why = " (the file has no status column, and draft is the default)"
        return [
            f"{self.drafts} product{'s were' if self.drafts > 1 else ' was'} imported as draft"
            f"{'' if self.status_column else why}: customers do not see drafts until their "
            "status is active."
        ]


def _problems(exc: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    """Each problem of a validation error: where (without pydantic's ``[key]`` marker) and what."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err.get("loc", ()) if p != "[key]")
        message = validation_message(err)
        out.append((loc, message))
    return out


def format_for_content_type(content_type: str | None) -> TransferFormat:
    """The import format a Content-Type names; 415 when it names neither."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/csv", "application/csv"):
        return "csv"
    if kind in ("application/x-ndjson", "application/jsonl", "application/json-lines"):
        return "jsonl"
    raise UnsupportedMediaType(
        f"An import takes text/csv or application/x-ndjson, not {kind or 'an untyped body'} "
        "(or say which with ?format=csv|jsonl)."
    )


# --- parsing ------------------------------------------------------------------------------------


def _parse_options(raw: str) -> dict[str, str]:
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("options must be a JSON object")
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r} is not name=value")
        out[name.strip()] = value.strip()
    return out


def _format_options(options: dict[str, str]) -> str:
    plain = ";".join(f"{k}={v}" for k, v in options.items())
    texts = [t for pair in options.items() for t in pair]
    if plain.startswith("{") or any(";" in t or "=" in t or t != t.strip() for t in texts):
        return json.dumps(options, ensure_ascii=False, separators=(",", ":"))
    return plain


class CellError(ValueError):
    """A cell that is not of its column's type; the message names the column."""


def _whole_number(row: dict[str, str], column: str, expected: str) -> int | None:
    """A cell's whole number: ASCII digits, with a leading ``-`` for a negative one (which the
    column's range then refuses with its own message). ``int()`` would also take ``+100``,
    ``1_000`` and digits of other scripts (Arabic-Indic, full-width), which the API
    refuses."""
    text = (row.get(column) or "").strip()
    if not text:
        return None
    digits = text[1:] if text[0] == "-" else text
    if digits.isascii() and digits.isdigit():
        try:
            return int(text)
        except ValueError:  # more digits than int() reads
            pass
    raise CellError(f"{column}: expected {expected}, got {text[:40]!r}")


_Problem = tuple[str, str]  # (CSV column, what is wrong with its cell)
_VARIANT_COLUMNS = {"sku": "sku", "name": "variant_name", "options": "options"}
_VARIANT_CELLS = ("variant_name", "options", "weight_grams")
_SKU = TypeAdapter(Sku)


def _checked_sku(value: Any) -> str | None:
    """``value`` when it is a well-formed SKU (worth checking against other products)."""
    if not isinstance(value, str):
        return None
    try:
        return _SKU.validate_python(value)
    except ValidationError:
        return None


def _csv_variant(
    row: dict[str, str], price_columns: Sequence[str]
) -> tuple[ImportVariant | None, list[_Problem]]:
    """A CSV row's variant, or every problem of its variant cells, each named by its column."""
    problems: list[_Problem] = []
    weight: int | None = None
    try:
        weight = _whole_number(row, "weight_grams", "a whole number of grams")
    except CellError as exc:
        problems.append(("weight_grams", str(exc).partition(": ")[2]))
    amounts: dict[str, int] = {}
    column_of: dict[str, str] = {}
    for column in price_columns:
        try:
            amount = _whole_number(row, column, "a whole number of minor units (1999 for 19.99)")
        except CellError as exc:
            problems.append((column, str(exc).partition(": ")[2]))
            continue
        code = column[len(PRICE_PREFIX) :]
        if amount is None:
            continue
        if code.upper() not in ISO_4217:
            problems.append((column, f"{code!r} is not an ISO 4217 currency"))
            continue
        amounts[code.upper()] = amount
        column_of[code.upper()] = column
    options: dict[str, str] = {}
    try:
        options = _parse_options(row.get("options") or "")
    except ValueError as exc:  # json.JSONDecodeError is one
        problems.append(("options", str(exc)))
    sku = (row.get("sku") or "").strip()
    data: dict[str, Any] = {
        "sku": sku,
        # Names are read as the API takes them: kept as written, spaces and all (an export
        # of a name stored with spaces imports back unchanged); a blank one is refused.
        "name": row.get("variant_name") or None,
        "options": options,
        "weight_grams": weight or 0,
        "prices": amounts,
    }
    try:
        variant = ImportVariant.model_validate(data)
    except ValidationError as exc:
        for loc, message in _problems(exc):
            head = str(loc[0]) if loc else ""
            if head == "prices" and len(loc) > 1:
                column = column_of.get(str(loc[1]).upper(), f"{PRICE_PREFIX}{loc[1]}")
            else:
                column = _VARIANT_COLUMNS.get(head, head or "sku")
            if column == "sku" and not sku:
                # Variant cells without a SKU would otherwise be dropped without a word.
                filled = [
                    c for c in (*_VARIANT_CELLS, *price_columns) if (row.get(c) or "").strip()
                ]
                message = f"empty, but the row has a variant's cells ({', '.join(filled)})"
            problems.append((column, message))
        return None, problems
    return (None, problems) if problems else (variant, [])


def _csv_product(
    row: dict[str, str], known_categories: set[str]
) -> tuple[ImportProduct | None, list[_Problem]]:
    """A CSV row's product fields, or every problem of its product cells, named by column."""
    category = (row.get("category") or "").strip() or None
    data: dict[str, Any] = {
        "slug": (row.get("slug") or "").strip() or None,
        "name": row.get("name") or "",  # as written: see _csv_variant
        "description": row.get("description") or "",
        "status": (row.get("status") or "").strip() or ProductStatus.DRAFT.value,
        "category": category,
        "images": (row.get("images") or "").split(),
    }
    problems: list[_Problem] = []
    product: ImportProduct | None = None
    try:
        product = ImportProduct.model_validate(data)
    except ValidationError as exc:
        for loc, message in _problems(exc):
            column = str(loc[0]) if loc else "name"
            if column == "images" and len(loc) > 1 and isinstance(loc[1], int):
                message = f"{data['images'][loc[1]][:80]!r}: {message}"
            problems.append((column, message))
    bad_category = any(column == "category" for column, _ in problems)
    if category and not bad_category and category not in known_categories:
        problems.append(("category", f"unknown category {category}"))
    return (None, problems) if problems else (product, [])


def _column_rank(header: Sequence[str]) -> Callable[[str | None], tuple[int, ...]]:
    """A row's problems in the order of the header's columns; those of the whole row first."""
    order = {column: index for index, column in enumerate(header)}

    def rank(column: str | None) -> tuple[int, ...]:
        return (-1,) if column is None else (order.get(column, len(order)),)

    return rank


_PRODUCT_ORDER = {
    name: index
    for index, name in enumerate(
        ("slug", "name", "description", "status", "category", "images", "variants")
    )
}
_VARIANT_ORDER = {
    name: index for index, name in enumerate(("sku", "name", "options", "weight_grams", "prices"))
}


def _path_rank(path: str | None) -> tuple[int, ...]:
    """A JSON line's problems in the order of a product's fields, variant by variant; those of
    the whole line first."""
    if path is None:
        return (-1,)
    head, _, rest = path.partition(".")
    key = [_PRODUCT_ORDER.get(head, len(_PRODUCT_ORDER))]
    index, _, inner = rest.partition(".")
    if head in ("images", "variants") and index.isdigit():
        key.append(int(index))
        if head == "variants" and inner:
            key.append(_VARIANT_ORDER.get(inner.partition(".")[0], len(_VARIANT_ORDER)))
    return tuple(key)


def _slug_of(product: ImportProduct) -> str:
    return product.slug or domain.slugify(product.name)


@dataclass
class _Unclaimed:
    """The SKU of a refused row: it claims nothing, but the row's report still says when
    another product (of the file or of the catalogue) has it, checked with its batch."""

    line: int
    field: str
    sku: str
    slug: str


def _refuse_repeated_currencies(price_columns: Sequence[str]) -> None:
    """A 422 naming price columns of one currency in different cases (``price_EUR`` and
    ``price_eur``): which one would win is a guess, so neither is taken."""
    by_currency: dict[str, list[str]] = {}
    for column in price_columns:
        by_currency.setdefault(column[len(PRICE_PREFIX) :].upper(), []).append(column)
    twice = [columns for columns in by_currency.values() if len(columns) > 1]
    if twice:
        named = "; ".join(" and ".join(repr(c[:40]) for c in columns) for columns in twice)
        raise field_error(
            "body",
            f"columns {named} price the same currency (currency codes are read in any case)",
            code="duplicate_columns",
        )


def _read_csv(
    stream: IO[bytes], tally: _Tally, known_categories: set[str]
) -> Iterator[_Record | _Unclaimed]:
    text = csv_text(stream)
    # Strict, so a quote left open is an error: the lenient reader would take the rest of the
    # file as one cell and say nothing.
    reader = csv.DictReader(text, strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise field_error("body", f"unreadable CSV header: {exc}") from exc
    if any(is_not_utf8(column) for column in header):
        raise field_error("body", f"unreadable CSV header: {NOT_UTF8_REASON}")
    refuse_repeated_columns(header)
    if "name" not in header:
        raise field_error("body", "the CSV header needs at least a name column")
    tally.status_column = "status" in header
    tally.rank = _column_rank(header)
    unknown = [h for h in header if h not in CSV_FIELDS and not h.startswith(PRICE_PREFIX)]
    if unknown:
        raise field_error("body", f"unknown CSV columns: {', '.join(unknown)}")
    price_columns = [h for h in header if h.startswith(PRICE_PREFIX)]
    _refuse_repeated_currencies(price_columns)
    variant_cells = (*_VARIANT_CELLS, *price_columns)
    current: _Record | None = None
    # The SKUs of the product being read, and the line of each: a SKU twice in one product
    # would make the second row overwrite the first.
    current_skus: dict[str, int] = {}
    # The slug and line of a product whose first row was refused, until a row of it is
    # accepted: its rows without a name of their own cannot supply its fields, and are refused
    # saying why (not as rows with a blank name).
    refused_first: tuple[str, int] | None = None
    # The csv reader's own count: DictReader's stays behind when a row raises, so the rows
    # after an unreadable one would be numbered as if it had not been read.
    lines_read = reader.reader
    last_line = lines_read.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except (csv.Error, ValueError) as exc:
            tally.rows_read += 1
            tally.refuse(last_line + 1, [(None, f"unreadable row: {unreadable_row_reason(exc)}")])
            last_line = lines_read.line_num
            continue
        line = last_line + 1
        last_line = lines_read.line_num
        if any(is_not_utf8(cell) for cell in _cells(row)):
            tally.rows_read += 1
            tally.refuse(line, [(None, NOT_UTF8_REASON)])
            continue
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        tally.rows_read += 1
        problems: list[Problem] = []
        if None in row:
            # The cells that have a column are still checked, so the report is complete.
            del row[None]  # type: ignore[arg-type]
            problems.append((None, "the row has more fields than the header"))
        # Cells an export escaped against spreadsheet formulas come back as they were.
        row = {k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()}
        slug_hint = (row.get("slug") or "").strip() or domain.slugify(row.get("name") or "")
        sku = (row.get("sku") or "").strip()
        product: ImportProduct | None = None
        starts_product = current is None or current.slug != slug_hint
        if starts_product and refused_first is not None:
            if refused_first[0] != slug_hint:
                refused_first = None
            elif not (row.get("name") or "").strip():
                # It continues a product whose first row was refused: only its variant's cells
                # are read (as for any continuation), and nothing of it is written.
                starts_product = False
                problems.append(
                    (None, f"the product's first row (line {refused_first[1]}) was refused")
                )
        if starts_product:
            if current is not None:
                yield current
            current = None
            current_skus = {}
            # This row supplies the product's fields; its cells are checked with the variant's.
            product, found = _csv_product(row, known_categories)
            problems += found
        variant: ImportVariant | None = None
        if sku or any((row.get(c) or "").strip() for c in variant_cells):
            variant, found = _csv_variant(row, price_columns)
            problems += found
        if sku in current_skus:
            problems.append(
                ("sku", f"SKU {sku} appears twice in this product (line {current_skus[sku]})")
            )
        if problems:
            # A refused row changes nothing: when it was to supply the product's fields, the
            # next row of the same product with a name of its own (if any) supplies them
            # instead, and a product none of whose rows is accepted is not written at all.
            tally.refuse(line, problems, sku=sku or None, slug=slug_hint or None)
            if starts_product and refused_first is None and slug_hint:
                refused_first = (slug_hint, line)
            checked = _checked_sku(sku)
            if checked is not None and checked not in current_skus:
                yield _Unclaimed(line, "sku", checked, slug_hint)
            continue
        if product is not None:
            current = _Record(product, _slug_of(product), [], [])
            refused_first = None
        assert current is not None  # a row either starts a product or continues the current one
        current.lines.append(line)
        if variant is not None:
            current.product.variants.append(variant)
            current.variant_lines.append(line)
            current_skus[variant.sku] = line
    if current is not None:
        yield current
    text.detach()


def _cells(row: dict[Any, Any]) -> Iterator[str]:
    """A CSV row's cells, those beyond the header's columns too."""
    for value in row.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from value


def _jsonl_problems(
    data: Any, known_categories: set[str]
) -> tuple[ImportProduct | None, list[Problem]]:
    """A JSON line's product, or every problem of it, each with its field path."""
    problems: list[Problem] = []
    product: ImportProduct | None = None
    try:
        product = ImportProduct.model_validate(data)
    except ValidationError as exc:
        problems += [(".".join(str(p) for p in loc) or None, msg) for loc, msg in _problems(exc)]
    if not isinstance(data, dict):
        return None, problems
    category = data.get("category")
    if (
        isinstance(category, str)
        and category
        and category not in known_categories
        and not any(where == "category" for where, _ in problems)
    ):
        problems.append(("category", f"unknown category {category}"))
    for index, sku, repeated in _jsonl_skus(data):
        if repeated:
            problems.append((f"variants.{index}.sku", f"SKU {sku} appears twice in this product"))
    return (None, problems) if problems else (product, [])


def _jsonl_skus(data: dict[str, Any]) -> Iterator[tuple[int, str, bool]]:
    """Each variant's SKU: its index, the SKU, and whether an earlier variant has it."""
    raw_variants = data.get("variants")
    seen: set[str] = set()
    for index, raw in enumerate(raw_variants if isinstance(raw_variants, list) else []):
        sku = raw.get("sku") if isinstance(raw, dict) else None
        if isinstance(sku, str):
            yield index, sku, sku in seen
            seen.add(sku)


def _jsonl_names(data: Any, problems: Sequence[Problem]) -> dict[str, Any]:
    """The slug and SKU a refused JSON line names, for its report entry (None when absent)."""
    if not isinstance(data, dict):
        return {"slug": None, "sku": None}
    slug = data.get("slug") if isinstance(data.get("slug"), str) else None
    name = data.get("name")
    if not slug and isinstance(name, str) and name.strip():
        slug = domain.slugify(name)
    sku = None
    raw_variants = data.get("variants")
    for where, _ in problems:
        head, _, rest = (where or "").partition(".")
        index = rest.partition(".")[0]
        if head == "variants" and index.isdigit():
            if isinstance(raw_variants, list) and int(index) < len(raw_variants):
                raw = raw_variants[int(index)]
                found = raw.get("sku") if isinstance(raw, dict) else None
                sku = found if isinstance(found, str) and found else None
            break
    return {"slug": slug or None, "sku": sku}


def _read_jsonl(
    stream: IO[bytes], tally: _Tally, known_categories: set[str]
) -> Iterator[_Record | _Unclaimed]:
    tally.rank = _path_rank
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    for number, raw in enumerate(stream, start=1):
        try:
            line = decoder.decode(raw)
        except UnicodeDecodeError as exc:
            tally.rows_read += 1
            tally.refuse(number, [(None, f"not UTF-8: {exc.reason}")])
            decoder.reset()
            continue
        if not line.strip():
            continue
        tally.rows_read += 1
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            tally.refuse(number, [(None, f"not JSON: {exc.msg}")])
            continue
        product, problems = _jsonl_problems(data, known_categories)
        if product is None:
            names = _jsonl_names(data, problems)
            tally.refuse(number, problems, **names)
            if isinstance(data, dict):
                slug = names["slug"] or ""
                for index, sku, repeated in _jsonl_skus(data):
                    checked = None if repeated else _checked_sku(sku)
                    if checked is not None:
                        yield _Unclaimed(number, f"variants.{index}.sku", checked, slug)
            continue
        yield _Record(
            product, _slug_of(product), [number], [number] * len(product.variants), jsonl=True
        )


def _records(
    stream: IO[bytes], format: TransferFormat, tally: _Tally, known_categories: set[str]
) -> Iterator[_Record | _Unclaimed]:
    if format == "csv":
        return _read_csv(stream, tally, known_categories)
    return _read_jsonl(stream, tally, known_categories)


# --- validation and writing ---------------------------------------------------------------------


@dataclass
class _Batch:
    records: list[_Record] = field(default_factory=list)
    slugs: set[str] = field(default_factory=set)
    unclaimed: list[_Unclaimed] = field(default_factory=list)

    def add(self, record: _Record) -> None:
        self.records.append(record)
        self.slugs.add(record.slug)

    def __len__(self) -> int:
        return len(self.records) + len(self.unclaimed)


class _Importer:
    """Validates and writes batches of products; remembers which SKU went to which product."""

    def __init__(self, ctx: ServiceContext, tally: _Tally) -> None:
        self.ctx = ctx
        self.tally = tally
        self.sku_owner: dict[str, tuple[str, int]] = {}
        # Stored products this import changed: their cached documents go once it commits.
        self.updated: list[str] = []

    def claim_skus(self, record: _Record) -> None:
        """Refuse variants whose SKU an earlier product of the same file already uses."""
        pairs = list(zip(record.product.variants, record.variant_lines, strict=True))
        for index, (variant, line) in enumerate(pairs):
            owner = self.sku_owner.get(variant.sku)
            if owner is not None and owner[0] != record.slug:
                self.tally.refuse(
                    line,
                    [(record.sku_field(index), _used_by(variant.sku, owner))],
                    sku=variant.sku,
                    slug=record.slug,
                )
        # Only variants of rows that stay accepted claim their SKU (a JSON line with one
        # refused variant is refused whole, so none of its variants does).
        kept: list[ImportVariant] = []
        kept_lines: list[int] = []
        for variant, line in pairs:
            if line in self.tally.skipped_lines:
                continue
            self.sku_owner.setdefault(variant.sku, (record.slug, line))
            kept.append(variant)
            kept_lines.append(line)
        record.product.variants[:] = kept
        record.variant_lines[:] = kept_lines

    def check_unclaimed(self, unclaimed: _Unclaimed) -> bool:
        """Report on a refused row that an earlier accepted row of another product has its SKU
        (it claims nothing itself: a refused row changes nothing); whether it was reported."""
        owner = self.sku_owner.get(unclaimed.sku)
        if owner is None or owner[0] == unclaimed.slug or owner[1] > unclaimed.line:
            return False
        self.tally.refuse(
            unclaimed.line, [(unclaimed.field, _used_by(unclaimed.sku, owner))], sku=unclaimed.sku
        )
        return True

    async def check(self, session: AsyncSession, batch: _Batch) -> tuple[list[_Record], Any]:
        """The batch's records that can be written, and what the database already holds.

        The refused rows' SKUs are looked up in the same statements, so their reports also
        name a SKU another product has."""
        slugs = sorted(batch.slugs | {u.slug for u in batch.unclaimed})
        stored = (
            await session.execute(
                select(
                    products.c.id, products.c.slug, *(products.c[k] for k in _PRODUCT_FIELDS)
                ).where(products.c.slug.in_(slugs))
            )
        ).all()
        existing = {r.slug: r.id for r in stored}
        skus = sorted(
            {v.sku for rec in batch.records for v in rec.product.variants}
            | {u.sku for u in batch.unclaimed}
        )
        known_skus: dict[str, tuple[str, str]] = {}
        # What each known SKU holds now, to tell an unchanged row from a change.
        variant_state: dict[str, _VariantState] = {}
        for r in (
            await session.execute(
                select(
                    variants.c.sku,
                    variants.c.id,
                    variants.c.product_id,
                    variants.c.name,
                    variants.c.options,
                    variants.c.weight_grams,
                    variants.c.position,
                    prices.c.currency,
                    prices.c.amount,
                )
                .select_from(variants.outerjoin(prices, prices.c.variant_id == variants.c.id))
                .where(variants.c.sku.in_(skus))
            )
        ).all():
            if r.sku not in known_skus:
                known_skus[r.sku] = (r.id, r.product_id)
                variant_state[r.sku] = (
                    r.name,
                    dict(r.options or {}),
                    r.weight_grams,
                    r.position,
                    {},
                )
            if r.currency is not None:
                variant_state[r.sku][4][r.currency] = r.amount
        wanted_categories = sorted(
            {rec.product.category for rec in batch.records if rec.product.category}
        )
        category_rows = (
            await session.execute(
                select(categories.c.slug, categories.c.id, categories.c.name).where(
                    categories.c.slug.in_(wanted_categories)
                )
            )
        ).all()
        category_ids = {r.slug: (r.id, r.name) for r in category_rows}
        good: list[_Record] = []
        for rec in batch.records:
            category = rec.product.category
            if category and category not in category_ids:
                for line in rec.lines:
                    self.tally.refuse(
                        line, [("category", f"unknown category {category}")], slug=rec.slug
                    )
                continue
            product_id = existing.get(rec.slug)
            kept: list[ImportVariant] = []
            kept_lines: list[int] = []
            pairs = zip(rec.product.variants, rec.variant_lines, strict=True)
            for index, (variant, line) in enumerate(pairs):
                found = known_skus.get(variant.sku)
                if found is not None and found[1] != product_id:
                    self.tally.refuse(
                        line,
                        [(rec.sku_field(index), _OTHER_PRODUCTS.format(sku=variant.sku))],
                        sku=variant.sku,
                        slug=rec.slug,
                    )
                    continue
                kept.append(variant)
                kept_lines.append(line)
            rec.product.variants[:] = kept
            rec.variant_lines[:] = kept_lines
            if self.refused(rec):
                continue
            good.append(rec)
        for unclaimed in batch.unclaimed:
            found = known_skus.get(unclaimed.sku)
            if found is not None and found[1] != existing.get(unclaimed.slug):
                self.tally.refuse(
                    unclaimed.line,
                    [(unclaimed.field, _OTHER_PRODUCTS.format(sku=unclaimed.sku))],
                    sku=unclaimed.sku,
                )
        current = {r.id: {k: getattr(r, k) for k in _PRODUCT_FIELDS} for r in stored}
        return good, (existing, known_skus, category_ids, (current, variant_state))

    def refused(self, record: _Record) -> bool:
        """Whether nothing of the record may be written: a refused row changes nothing, so a
        JSON line with a refused variant is dropped whole, and so is a CSV product all of whose
        rows were refused."""
        return all(line in self.tally.skipped_lines for line in record.lines)

    async def write(self, session: AsyncSession, records: list[_Record], known: Any) -> None:
        """Create or update the records' products, variants and prices, with their events."""
        existing, known_skus, category_ids, (current, variant_state) = known
        now = utcnow()
        new_products: list[dict[str, Any]] = []
        changed_products: list[dict[str, Any]] = []
        product_ids: list[str] = []
        events: list[tuple[str, dict[str, Any]]] = []
        fresh: list[tuple[str, str, str, str]] = []
        updated_slugs: set[str] = set()
        skipped: set[str] = set()
        for rec in records:
            p = rec.product
            values = {
                "name": p.name,
                "description": p.description,
                "status": p.status.value,
                "category_id": category_ids[p.category][0] if p.category else None,
                "images": list(p.images),
                "updated_at": now,
            }
            if rec.slug in existing and _unchanged(
                values, p.variants, current.get(existing[rec.slug]), variant_state
            ):
                # An unchanged product writes nothing and emits nothing.
                self.tally.unchanged += 1
                skipped.add(rec.slug)
                continue
            if p.status == ProductStatus.DRAFT:
                self.tally.drafts += 1
            if rec.slug in existing:
                pid = existing[rec.slug]
                updated_slugs.add(rec.slug)
                changed_products.append({"pid": pid, **values})
                self.tally.updated += 1
                events.append((service.PRODUCT_UPDATED, {"product_id": pid, "slug": rec.slug}))
            else:
                pid = _IDS.take()
                existing[rec.slug] = pid
                words = search.search_text(
                    ((v.sku, v.name or v.sku, v.options) for v in p.variants),
                    category_ids[p.category][1] if p.category else None,
                    name=p.name,
                    description=p.description,
                )
                new_products.append(
                    {"id": pid, "slug": rec.slug, "search_text": words, "created_at": now, **values}
                )
                fresh.append((pid, p.name, words, p.description))
                self.tally.created += 1
                events.append((service.PRODUCT_CREATED, {"product_id": pid, "slug": rec.slug}))
            if rec.slug in updated_slugs:
                product_ids.append(pid)
        if new_products:
            await session.execute(insert(products), new_products)
        if changed_products:
            await session.execute(
                update(products)
                .where(products.c.id == bindparam("pid"))
                .values(
                    {
                        k: bindparam(k)
                        for k in (
                            "name",
                            "description",
                            "status",
                            "category_id",
                            "images",
                            "updated_at",
                        )
                    }
                ),
                changed_products,
                execution_options={"synchronize_session": False},
            )
        new_variants: list[dict[str, Any]] = []
        changed_variants: list[dict[str, Any]] = []
        price_rows: list[dict[str, Any]] = []
        repriced: list[str] = []
        for rec in records:
            if rec.slug in skipped:
                continue
            pid = existing[rec.slug]
            for position, v in enumerate(rec.product.variants):
                values = {
                    "name": v.name or v.sku,
                    "options": dict(v.options),
                    "weight_grams": v.weight_grams,
                    "position": position,
                    "updated_at": now,
                }
                if v.sku in known_skus:
                    vid = known_skus[v.sku][0]
                    changed_variants.append({"vid": vid, **values})
                    repriced.append(vid)
                else:
                    vid = _IDS.take()
                    known_skus[v.sku] = (vid, pid)
                    new_variants.append(
                        {"id": vid, "product_id": pid, "sku": v.sku, "created_at": now, **values}
                    )
                self.tally.variants += 1
                price_rows.extend(
                    {"variant_id": vid, "currency": c, "amount": a} for c, a in v.prices.items()
                )
        if new_variants:
            await session.execute(insert(variants), new_variants)
        if changed_variants:
            await session.execute(
                update(variants)
                .where(variants.c.id == bindparam("vid"))
                .values(
                    {
                        k: bindparam(k)
                        for k in ("name", "options", "weight_grams", "position", "updated_at")
                    }
                ),
                changed_variants,
                execution_options={"synchronize_session": False},
            )
        if repriced:
            await session.execute(delete(prices).where(prices.c.variant_id.in_(repriced)))
        if price_rows:
            await session.execute(insert(prices), price_rows)
        await search.index_new(session, fresh)
        await search.refresh(session, product_ids)
        await _add_events(self.ctx, session, events)
        self.updated.extend(product_ids)

    async def apply(self, session: AsyncSession, batch: _Batch) -> None:
        good, known = await self.check(session, batch)
        if good:
            await self.write(session, good, known)


_OTHER_PRODUCTS = "SKU {sku} belongs to another product"


def _used_by(sku: str, owner: tuple[str, int]) -> str:
    return f"SKU {sku} is already used by product {owner[0]} (line {owner[1]})"


_PRODUCT_FIELDS = ("name", "description", "status", "category_id", "images")
_VariantState = tuple[str, dict[str, str], int, int, dict[str, int]]


def _unchanged(
    values: dict[str, Any],
    wanted: Sequence[ImportVariant],
    stored: dict[str, Any] | None,
    variant_state: dict[str, _VariantState],
) -> bool:
    """Whether writing the product would leave it exactly as stored (its fields, and each
    listed variant, which ``check`` has made sure belongs to it)."""
    if stored is None or any(values[k] != stored[k] for k in _PRODUCT_FIELDS):
        return False
    for position, v in enumerate(wanted):
        have = variant_state.get(v.sku)
        if have != (v.name or v.sku, dict(v.options), v.weight_grams, position, dict(v.prices)):
            return False
    return True


async def _add_events(
    ctx: ServiceContext, session: AsyncSession, events: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Write many events to the outbox in one statement; the last goes through ``Outbox.add``
    so the relay is woken when the transaction commits."""
    if not events:
        return
    from ecosistema.platform.telemetry import current_request_id

    correlation = current_request_id()
    now = utcnow()
    rows = [
        {
            "event_id": _IDS.take(),
            "type": type_,
            "version": 1,
            "source": ctx.outbox.source,
            "correlation_id": correlation,
            "occurred_at": now,
            "payload": payload,
            "attempts": 0,
        }
        for type_, payload in events[:-1]
    ]
    if rows:
        await session.execute(insert(ctx.outbox.table), rows)
    last_type, last_payload = events[-1]
    await ctx.outbox.add(session, last_type, last_payload)


def _batches(
    records: Iterator[_Record | _Unclaimed], importer: _Importer, size: int
) -> Iterator[_Batch]:
    batch = _Batch()
    for record in records:
        if isinstance(record, _Unclaimed):
            if importer.check_unclaimed(record):
                continue  # the database would only say the same of the file's product
            if len(batch) >= size:
                yield batch
                batch = _Batch()
            batch.unclaimed.append(record)
            continue
        importer.claim_skus(record)
        if record.slug in batch.slugs or len(batch) >= size:
            yield batch
            batch = _Batch()
        batch.add(record)
    if len(batch):
        yield batch


async def _each_batch(
    batches: Iterator[_Batch], apply: Callable[[_Batch], Awaitable[None]]
) -> None:
    """Apply the batches in order, parsing the next one in a worker thread meanwhile: parsing
    and validating is Python work, writing mostly waits on the database (its driver's thread or
    the server), so the two overlap instead of taking turns."""
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, next, batches, None)
    try:
        while (batch := await pending) is not None:
            pending = loop.run_in_executor(None, next, batches, None)
            await apply(batch)
    finally:
        if not pending.done():
            # Let the parser finish its batch before the caller closes the file under it.
            with contextlib.suppress(Exception):
                await pending


class ImportRejected(Unprocessable):
    """An all-or-nothing import that applied nothing because some rows were refused; the
    problem carries the report's counts and an entry per problem of every refused row."""

    type, title = "import-rejected", "Import rejected"

    def __init__(self, report: ImportReport) -> None:
        super().__init__(
            "Nothing was imported because some rows were refused (listed by line in errors); "
            "fix them, or import with mode=skip-invalid to apply the valid rows.",
            errors=[entry for error in report.errors for entry in problem_entries(error)],
            report=report.summary(),
        )


def problem_entries(error: RowError) -> list[dict[str, Any]]:
    """A refused row as entries of a problem's ``errors``, one per problem: ``field`` (the CSV
    column or JSON Lines path; ``body`` for the whole row, as validation problems name it),
    ``message`` and ``code``, as every problem's ``errors`` carry them, with the row's ``line``.
    Each also keeps the row's own members (``reason``, ``sku``, ``slug``, ``problems``), which
    the entries of ``import-rejected`` have always had."""
    row = error.model_dump()
    problems = error.problems or [RowProblem(field=None, reason=error.reason)]
    return [
        {
            "line": error.line,
            "field": problem.field or "body",
            "message": problem.reason,
            "code": "invalid" if problem.field else "row",
            **row,
        }
        for problem in problems
    ]


class _AbortImport(Exception):
    """Raised inside the all-or-nothing transaction to roll it back."""


async def import_file(
    ctx: ServiceContext,
    path: Path,
    *,
    format: TransferFormat,
    mode: ImportMode,
    on_progress: ProgressFn | None = None,
) -> ImportReport:
    """Import products from a file; the report is exact (see the module docstring)."""
    size = max(1, ctx.settings.catalog_import_batch_size)
    # Read once up front so each row's report can name an unknown category with its other faults
    # (an import creates no categories; the write still checks them against the database).
    async with ctx.db.read() as session:
        known_categories = set((await session.scalars(select(categories.c.slug))).all())

    def _progress(stream: IO[bytes]) -> None:
        if on_progress is not None:
            on_progress(stream.tell())

    if mode == "all-or-nothing":
        # One pass in one transaction: every row is validated (against the database as the
        # earlier rows left it) and written; any refused row rolls the whole import back.
        tally = _Tally()
        importer = _Importer(ctx, tally)
        try:
            with path.open("rb") as stream:
                async with ctx.db.transaction() as session:

                    async def _apply_in_one(batch: _Batch) -> None:
                        await importer.apply(session, batch)
                        _progress(stream)

                    await _each_batch(
                        _batches(_records(stream, format, tally, known_categories), importer, size),
                        _apply_in_one,
                    )
                    if tally.skipped_lines:
                        raise _AbortImport
        except _AbortImport:
            return tally.report(mode, format, applied=False)
        await service.invalidate(ctx, importer.updated)
        return tally.report(mode, format, applied=True)

    tally = _Tally()
    importer = _Importer(ctx, tally)
    with path.open("rb") as stream:

        async def _apply_each(batch: _Batch) -> None:
            async with ctx.db.transaction() as session:
                await importer.apply(session, batch)
            _progress(stream)

        await _each_batch(
            _batches(_records(stream, format, tally, known_categories), importer, size), _apply_each
        )
    await service.invalidate(ctx, importer.updated)
    return tally.report(mode, format, applied=True)


async def import_stream(
    ctx: ServiceContext,
    chunks: AsyncIterator[bytes],
    *,
    format: TransferFormat,
    mode: ImportMode,
) -> ImportReport:
    """Import from a byte stream (a request body): spooled to a temporary file as it arrives."""
    handle, name = tempfile.mkstemp(prefix="catalog-import-", suffix=f".{format}")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as spool:
            async for chunk in chunks:
                spool.write(chunk)
        return await import_file(ctx, path, format=format, mode=mode)
    finally:
        os.unlink(path)


# --- export -------------------------------------------------------------------------------------


async def _export_page(
    session: AsyncSession, after: str | None
) -> tuple[list[Any], dict[str, list[Any]], dict[str, dict[str, int]], dict[str, str]]:
    statement = select(products).order_by(products.c.id).limit(EXPORT_BATCH)
    if after is not None:
        statement = statement.where(products.c.id > after)
    rows = (await session.execute(statement)).all()
    ids = [r.id for r in rows]
    by_product: dict[str, list[Any]] = {}
    price_map: dict[str, dict[str, int]] = {}
    if ids:
        for v in (
            await session.execute(
                select(variants)
                .where(variants.c.product_id.in_(ids))
                .order_by(variants.c.product_id, variants.c.position, variants.c.sku)
            )
        ).all():
            by_product.setdefault(v.product_id, []).append(v)
        for pr in (
            await session.execute(
                select(prices)
                .select_from(prices.join(variants, variants.c.id == prices.c.variant_id))
                .where(variants.c.product_id.in_(ids))
            )
        ).all():
            price_map.setdefault(pr.variant_id, {})[pr.currency] = pr.amount
    category_slugs = dict((await session.execute(select(categories.c.id, categories.c.slug))).all())
    return list(rows), by_product, price_map, category_slugs


async def export_chunks(ctx: ServiceContext, format: TransferFormat) -> AsyncIterator[bytes]:
    """The whole catalog as CSV or JSON Lines, a page of products at a time."""
    currencies: list[str] = []
    if format == "csv":
        async with ctx.db.read() as session:
            currencies = sorted((await session.scalars(select(prices.c.currency).distinct())).all())
        header = [*CSV_FIELDS, *(PRICE_PREFIX + c for c in currencies)]
        yield _csv_line(header)
    after: str | None = None
    while True:
        async with ctx.db.read() as session:
            rows, by_product, price_map, category_slugs = await _export_page(session, after)
        if not rows:
            return
        out: list[bytes] = []
        for p in rows:
            found = by_product.get(p.id, [])
            category = category_slugs.get(p.category_id) if p.category_id else None
            if format == "jsonl":
                doc = {
                    "slug": p.slug,
                    "name": p.name,
                    "description": p.description,
                    "status": p.status,
                    "category": category,
                    "images": p.images,
                    "variants": [
                        {
                            "sku": v.sku,
                            "name": v.name,
                            "options": v.options,
                            "weight_grams": v.weight_grams,
                            "prices": price_map.get(v.id, {}),
                        }
                        for v in found
                    ],
                }
                out.append(json.dumps(doc, ensure_ascii=False).encode() + b"\n")
                continue
            head = [p.slug, p.name, p.description, p.status, category or "", " ".join(p.images)]
            for v in found or [None]:
                if v is None:
                    tail = ["", "", "", ""] + [""] * len(currencies)
                else:
                    its = price_map.get(v.id, {})
                    tail = [
                        v.sku,
                        v.name,
                        _format_options(v.options),
                        str(v.weight_grams),
                        *(str(its[c]) if c in its else "" for c in currencies),
                    ]
                out.append(_csv_line([*head, *tail]))
        yield b"".join(out)
        after = rows[-1].id


def _csv_line(values: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(escape_row(values))
    return buffer.getvalue().encode()


# --- command line -------------------------------------------------------------------------------


def import_products_command(
    file: Path,
    *,
    mode: ImportMode = "all-or-nothing",
    format: TransferFormat | None = None,
    settings: Any = None,
) -> ImportReport:
    """Import a CSV or JSON Lines file with a progress bar; ``ecosistema catalog import FILE``."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from ecosistema.platform.config import get_settings
    from ecosistema.platform.runtime import Runtime
    from ecosistema.services import load_services

    chosen: TransferFormat = format or ("csv" if file.suffix.lower() == ".csv" else "jsonl")
    console = Console(stderr=True)
    total = file.stat().st_size

    async def _main() -> ImportReport:
        runtime = Runtime(settings or get_settings(), load_services(["catalog"]))
        await runtime.start(background=False)
        try:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task(f"Importing {file.name}", total=total)
                report = await import_file(
                    runtime.contexts["catalog"],
                    file,
                    format=chosen,
                    mode=mode,
                    on_progress=lambda done: progress.update(task, completed=done),
                )
                progress.update(task, completed=total)
            # The import's events stay in catalog's outbox for the platform's relay: relayed
            # from here, consumers of other services (not hosted here) would miss them.
            return report
        finally:
            await runtime.stop()

    report = asyncio.run(_main())
    table = Table("outcome", "count", title=f"Import of {file.name} ({mode})")
    for name, value in report.summary().items():
        table.add_row(name, str(value))
    console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {note}")
    for error in report.errors[:20]:
        console.print(f"[red]line {error.line}[/]: {error.reason}")
    if len(report.errors) > 20:
        console.print(f"… and {len(report.errors) - 20} more rows refused")
    return report
