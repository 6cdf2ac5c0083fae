"""Lead import from CSV: the body (plain ``text/csv`` or one file in ``multipart/form-data``) is
spooled to disk as it arrives, every row is validated with its line number, and the leads are
written and scored in batches in one transaction. By default nothing is written unless every row
is valid (``all-or-nothing``); ``skip-invalid`` writes the valid rows and reports the others.

Columns: ``name, email, phone, company, source, channel, campaign, message, owner_id``, the
model's attributes by name (``age, job, marital, education, default, housing, loan, pdays,
previous, poutcome``; the economic context is the model's, though a file may carry it), and any
other custom attribute as ``attr.<key>``. Any other column refuses the file before a row is read.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.auth import Principal
from ecosistema.platform.csvsafe import (
    NOT_UTF8_REASON,
    csv_text,
    is_not_utf8,
    refuse_repeated_columns,
    unreadable_row_reason,
)
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import BadRequest, ProblemError, Unprocessable, field_error
from ecosistema.platform.policy import ensure
from ecosistema.platform.service import ServiceContext
from ecosistema.sales import domain, service
from ecosistema.sales.domain import History
from ecosistema.sales.schemas import ImportRowError, LeadCreate, LeadImportReport

ImportMode = Literal["all-or-nothing", "skip-invalid"]
LEAD_COLUMNS = (
    "name",
    "email",
    "phone",
    "company",
    "source",
    "channel",
    "campaign",
    "message",
    "owner_id",
)
ATTRIBUTE_PREFIX = "attr."
MODEL_ATTRIBUTES = tuple(sorted({*domain.NUMERIC_ATTRIBUTES, *domain.CATEGORY_ATTRIBUTES}))
MAX_ERRORS_REPORTED = 1000
BATCH = 500
_SNIFF = 64 * 1024


class ImportRejected(Unprocessable):
    """Nothing was imported because rows were refused; ``errors`` list them by line."""

    type, title = "import-rejected", "Import rejected"

    def __init__(self, report: LeadImportReport) -> None:
        super().__init__(
            "Nothing was imported because some rows were refused (listed by line in errors); "
            "fix them, or import with mode=skip-invalid to write the valid rows.",
            errors=[e.model_dump(exclude_none=True) for e in report.errors],
            report=report.model_dump(exclude={"errors", "lead_ids"}),
        )


@dataclass
class _Row:
    line: int
    lead: LeadCreate


@dataclass
class _Tally:
    rows_read: int = 0
    errors: list[ImportRowError] = field(default_factory=list)
    duplicates: list[ImportRowError] = field(default_factory=list)
    refused: int = 0

    def refuse(self, line: int, problems: list[ImportRowError]) -> None:
        """Refuse a row, keeping every one of its problems (up to the report's limit)."""
        self.refused += 1
        room = MAX_ERRORS_REPORTED - len(self.errors)
        self.errors.extend(problems[: max(0, room)])

    def problem(self, line: int, message: str, field_name: str = "body", code: str = "row") -> None:
        self.refuse(line, [ImportRowError(line=line, field=field_name, code=code, message=message)])

    def duplicate(self, line: int, lead_id: str | None, message: str) -> None:
        if len(self.duplicates) < MAX_ERRORS_REPORTED:
            self.duplicates.append(
                ImportRowError(
                    line=line, field="email", code="lead-exists", message=message, lead_id=lead_id
                )
            )


def _check_text(head: bytes) -> None:
    if b"\x00" in head:
        raise field_error("body", "this is not a CSV file: it holds binary data", code="binary")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a cut at the sniff boundary is not an error
            raise field_error(
                "body", f"the file is not UTF-8 text (byte {exc.start})", code="encoding"
            ) from exc


def _columns(header: list[str]) -> dict[str, str]:
    """CSV column -> where it goes (a lead field, or ``attributes.<key>``). Names are trimmed and
    matched ignoring case (attribute keys are lower case); ``campaign`` is the lead's campaign
    name, so the model's contact count of that name is ``attr.campaign``."""
    if not header or not any(h.strip() for h in header):
        raise field_error("body", "the file is empty: a header row and leads are needed", "empty")
    refuse_repeated_columns([h.strip().lower() for h in header])
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for raw in header:
        name = raw.strip()
        folded = name.lower()
        key = folded.removeprefix(ATTRIBUTE_PREFIX)
        if folded in LEAD_COLUMNS:
            mapping[raw] = folded
        elif folded in MODEL_ATTRIBUTES:
            mapping[raw] = f"attributes.{folded}"
        elif folded.startswith(ATTRIBUTE_PREFIX) and domain.ATTRIBUTE_KEY.match(key):
            mapping[raw] = f"attributes.{key}"
        else:
            unknown.append(name[:40] or "(empty)")
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        attributes = [a for a in MODEL_ATTRIBUTES if a not in LEAD_COLUMNS]
        raise field_error(
            "body",
            f"unknown columns {shown}{more}; known (in any case): {', '.join(LEAD_COLUMNS)}, "
            f"{', '.join(attributes)}, and attr.<key> for other attributes (campaign is the "
            "campaign's name; the model's contact count goes in attr.campaign)",
            code="unknown_columns",
        )
    targets: dict[str, list[str]] = {}
    for raw, target in mapping.items():
        targets.setdefault(target, []).append(raw.strip()[:40])
    same = [
        f"columns {' and '.join(repr(c) for c in columns)} both give attribute "
        f"{target.removeprefix('attributes.')}"
        for target, columns in targets.items()
        if len(columns) > 1
    ]
    if same:
        raise field_error("body", "; ".join(same) + ": keep one", code="duplicate_columns")
    if "name" not in mapping.values():
        raise field_error("body", "the header needs a name column", code="missing_columns")
    return mapping


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _attribute_value(key: str, text: str) -> Any:
    """A CSV cell as an attribute: numbers for numeric keys (checked later), text otherwise."""
    if key in domain.NUMERIC_ATTRIBUTES and _NUMBER.match(text):
        number = float(text)
        return int(number) if number.is_integer() else number
    return text


def _row_data(row: dict[str, str | None], mapping: dict[str, str]) -> dict[str, Any]:
    """A CSV row as a lead's fields, ``attributes`` holding its attribute cells."""
    data: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for column, target in mapping.items():
        value = (row.get(column) or "").strip()
        if not value:
            continue
        if target.startswith("attributes."):
            key = target.removeprefix("attributes.")
            attributes[key] = _attribute_value(key, value)
        else:
            data[target] = value
    data["attributes"] = attributes
    return data


def _describe(line: int, exc: ValidationError) -> list[ImportRowError]:
    """Every problem of a row, each naming its field (``attributes.age``, ``email``)."""
    problems = [
        ImportRowError(
            line=line,
            field=".".join(str(p) for p in error["loc"] if p != "__root__") or "body",
            code=str(error["type"]),
            message=str(error["msg"]).removeprefix("Value error, "),
            allowed=(error.get("ctx") or {}).get("allowed"),
        )
        for error in exc.errors()
    ]
    return problems or [ImportRowError(line=line, field="body", code="row", message="invalid row")]


def _rows(
    stream: IO[bytes], tally: _Tally, categories: Mapping[str, Sequence[str]]
) -> Iterator[_Row]:
    # Bytes that are not UTF-8 past the start checked up front refuse the row holding them.
    text = csv_text(stream)
    # Strict, so a quote left open is an error: the lenient reader would take the rest of the
    # file as one cell, rows included, and say nothing.
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise field_error(
            "body", f"unreadable CSV header: {unreadable_row_reason(exc)}", code="unreadable"
        ) from exc
    if any(is_not_utf8(h) for h in header):
        raise field_error("body", "the CSV header is not UTF-8 text", code="encoding")
    mapping = _columns(header)
    columns = list(header)
    # The reader's count of physical lines: a row's line is the one it starts on, even when a
    # quoted cell spans lines or the row before could not be read.
    last_line = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            tally.rows_read += 1
            tally.problem(last_line + 1, f"unreadable row: {unreadable_row_reason(exc)}")
            last_line = reader.line_num
            continue
        line = last_line + 1
        last_line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        tally.rows_read += 1
        undecodable = [
            mapping[columns[i]] if i < len(columns) else "body"
            for i, cell in enumerate(cells)
            if is_not_utf8(cell)
        ]
        if undecodable:
            tally.refuse(
                line,
                [
                    ImportRowError(
                        line=line,
                        field=where,
                        code="encoding",
                        message=NOT_UTF8_REASON,
                    )
                    for where in undecodable
                ],
            )
            continue
        if len(cells) != len(columns):
            tally.problem(line, f"the row has {len(cells)} fields, the header {len(columns)}")
            continue
        data = _row_data(dict(zip(columns, cells, strict=True)), mapping)
        try:
            lead = LeadCreate.model_validate(data, context={"categories": categories})
        except ValidationError as exc:
            problems = _describe(line, exc)
            # A valid lead's categories are checked below; a refused row's are listed here, so
            # that its report names every bad cell.
            named = {p.field for p in problems}
            problems += [
                ImportRowError(line=line, **e)
                for e in service.category_problems(categories, data["attributes"])
                if e["field"] not in named
            ]
            tally.refuse(line, problems)
            continue
        unknown = service.category_problems(categories, lead.attributes)
        if unknown:
            tally.refuse(line, [ImportRowError(line=line, **e) for e in unknown])
            continue
        yield _Row(line, lead)
    text.detach()


async def _owners(
    ctx: ServiceContext, principal: Principal, rows: list[_Row], tally: _Tally
) -> list[tuple[_Row, str]]:
    """Each row with its owner; rows naming an owner the caller may not assign are refused."""
    decided: dict[str | None, str | ProblemError] = {}
    out: list[tuple[_Row, str]] = []
    for row in rows:
        wanted = row.lead.owner_id
        if wanted not in decided:
            try:
                decided[wanted] = await service.resolve_owner(ctx, principal, wanted)
            except ProblemError as exc:
                decided[wanted] = exc
        owner = decided[wanted]
        if isinstance(owner, ProblemError):
            tally.problem(row.line, str(owner.detail), "owner_id", owner.type)
            continue
        out.append((row, owner))
    return out


async def import_file(
    ctx: ServiceContext, principal: Principal, path: Path, *, mode: ImportMode
) -> LeadImportReport:
    """Validate every row of a CSV file, then write and score the leads (see the module doc)."""
    ensure(principal, service.WRITE)
    with path.open("rb") as stream:
        _check_text(stream.read(_SNIFF))
        stream.seek(0)
        tally = _Tally()
        rows = list(_rows(stream, tally, await service.known_categories(ctx)))
    if tally.rows_read == 0:
        raise field_error("body", "the file holds no leads, only a header", code="empty")
    rows = await _skip_duplicates(ctx, principal, rows, tally)
    owned = await _owners(ctx, principal, rows, tally)
    if tally.refused and mode == "all-or-nothing":
        raise ImportRejected(_report(tally, applied=False, created=[]))
    now = utcnow()
    batches: list[list[dict[str, Any]]] = []
    lines: dict[str, int] = {}  # lead id -> its line in the file
    seen: dict[str, History] = {}
    for start in range(0, len(owned), BATCH):
        batch = []
        for row, owner in owned[start : start + BATCH]:
            values = service.new_lead_values(
                ctx, row.lead, owner_id=owner, created_by=principal.subject, now=now
            )
            lines[values["id"]] = row.line
            batch.append(values)
        await service.score_new_leads(ctx, batch, seen=seen)
        batches.append(batch)
    created: list[dict[str, Any]] = []
    async with ctx.db.transaction() as session:
        for batch in batches:
            inserted = await service.insert_leads(ctx, session, batch)
            created.extend(inserted)
            if len(inserted) < len(batch):
                await _skipped_meanwhile(session, principal, batch, inserted, lines, tally)
    return _report(tally, applied=True, created=created)


async def _skipped_meanwhile(
    session: AsyncSession,
    principal: Principal,
    batch: list[dict[str, Any]],
    inserted: list[dict[str, Any]],
    lines: Mapping[str, int],
    tally: _Tally,
) -> None:
    """Report as duplicates the rows an open lead created since the file was checked took."""
    done = {values["id"] for values in inserted}
    skipped = [values for values in batch if values["id"] not in done]
    existing = await service.open_leads_by_email(session, [v["email_index"] for v in skipped])
    for values in skipped:
        found = existing.get(values["email_index"])
        tally.duplicate(
            lines[values["id"]],
            service.readable_id(principal, found) if found is not None else None,
            "an open lead already has this email",
        )


async def _skip_duplicates(
    ctx: ServiceContext, principal: Principal, rows: list[_Row], tally: _Tally
) -> list[_Row]:
    """Rows whose email an open lead (or an earlier row of the file) has are skipped, not
    refused: importing the same file twice creates nothing the second time. The existing
    lead's id is reported only to a caller who may read that lead."""
    indexes = {id(r): service.email_index(ctx, r.lead.email) for r in rows if r.lead.email}
    async with ctx.db.read() as session:
        existing = await service.open_leads_by_email(session, list(indexes.values()))
    first_line: dict[str, int] = {}
    kept: list[_Row] = []
    for row in rows:
        index = indexes.get(id(row))
        if index is None:
            kept.append(row)
        elif index in existing:
            tally.duplicate(
                row.line,
                service.readable_id(principal, existing[index]),
                "an open lead already has this email",
            )
        elif index in first_line:
            tally.duplicate(
                row.line, None, f"the same email as line {first_line[index]} of this file"
            )
        else:
            first_line[index] = row.line
            kept.append(row)
    return kept


def _report(tally: _Tally, *, applied: bool, created: list[dict[str, Any]]) -> LeadImportReport:
    versions = {r["model_version"] for r in created if r["model_version"]}
    return LeadImportReport(
        applied=applied,
        rows_read=tally.rows_read,
        created=len(created),
        scored=sum(1 for r in created if r["model_version"]),
        model_version=versions.pop() if len(versions) == 1 else None,
        errors=sorted(tally.errors, key=lambda e: e.line),
        duplicates=sorted(tally.duplicates, key=lambda e: e.line),
        lead_ids=[r["id"] for r in created],
    )


def _boundary(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]{1,200})"?', content_type)
    if match is None:
        raise BadRequest("multipart/form-data needs a boundary.", type="malformed-multipart")
    return match.group(1).encode("latin-1")


def _extract_part(spool: Path, boundary: bytes, out: IO[bytes]) -> None:
    """Copy the first file part of a spooled multipart body to ``out``, line by line."""
    delimiter = b"--" + boundary
    with spool.open("rb") as body:
        for line in body:
            if line.rstrip(b"\r\n") == delimiter:
                break
        else:
            raise BadRequest("The multipart body has no parts.", type="malformed-multipart")
        while True:
            headers: list[bytes] = []
            for line in body:
                if line in (b"\r\n", b"\n"):
                    break
                headers.append(line.lower())
                if len(headers) > 20:
                    raise BadRequest("Too many part headers.", type="malformed-multipart")
            else:
                raise BadRequest("A multipart part never ends.", type="malformed-multipart")
            is_file = any(b"filename=" in h or b'name="file"' in h for h in headers)
            pending = b""
            for line in body:
                if line.startswith(delimiter):
                    break
                if is_file:
                    out.write(pending)
                # The line break before a delimiter belongs to the delimiter.
                pending = line
            else:
                raise BadRequest("The multipart body is not closed.", type="malformed-multipart")
            if is_file:
                out.write(pending.removesuffix(b"\n").removesuffix(b"\r"))
                return
            if line.rstrip(b"\r\n").endswith(b"--"):
                raise field_error("file", "send the CSV as a file field named file", "missing")


async def import_stream(
    ctx: ServiceContext,
    principal: Principal,
    chunks: AsyncIterator[bytes],
    *,
    content_type: str | None,
    mode: ImportMode,
) -> LeadImportReport:
    """Import from a request body (CSV, or multipart with one CSV file), spooled to disk."""
    ensure(principal, service.WRITE)
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in ("text/csv", "application/csv", "multipart/form-data"):
        raise BadRequest(
            "Send the leads as text/csv, or as a file in multipart/form-data.",
            type="unsupported-import-format",
        )
    handle, name = tempfile.mkstemp(prefix="sales-import-", suffix=".upload")
    spool = Path(name)
    paths = [spool]
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in chunks:
                out.write(chunk)
        if kind == "multipart/form-data":
            boundary = _boundary(content_type or "")
            handle2, name2 = tempfile.mkstemp(prefix="sales-import-", suffix=".csv")
            paths.append(Path(name2))
            with os.fdopen(handle2, "wb") as out:
                _extract_part(spool, boundary, out)
            spool = paths[-1]
        return await import_file(ctx, principal, spool, mode=mode)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
