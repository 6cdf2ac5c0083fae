"""Sales use cases: leads (created, read, changed, listed), their activity timeline, the
platform signals that reach them, and the demo leads. Every change re-scores the lead in process.

Contact data (name, email, phone) is field-encrypted; the email also gets a blind index so a
lead can be found by exact address (imports, orders, registrations) without decrypting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import httpx
import structlog
from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.platform.auth import Principal
from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.errors import Conflict, NotFound, Unprocessable, field_error
from ecosistema.platform.events import EventEnvelope
from ecosistema.platform.pagination import decode_cursor, encode_cursor
from ecosistema.platform.policy import Role, can_reach, ensure, ensure_owner, owner_filter
from ecosistema.platform.service import ServiceContext
from ecosistema.platform.telemetry import current_request_id
from ecosistema.sales import domain
from ecosistema.sales.domain import (
    CLOSED,
    CONTACTS,
    OPEN,
    OUTCOMES,
    ActivityKind,
    History,
    LeadExists,
    LeadFacts,
    LeadStatus,
)
from ecosistema.sales.events import (
    LEAD_CREATED,
    LEAD_STATUS_CHANGED,
    ORDER_PAID,
    USER_REGISTERED,
)
from ecosistema.sales.models import OPEN_LEAD, activities, leads, sales_users
from ecosistema.sales.schemas import (
    Activity,
    ActivityCreate,
    ActivityPage,
    Factor,
    Lead,
    LeadCreate,
    LeadPage,
    LeadSort,
    LeadUpdate,
)
from ecosistema.sales.scoring import record_outcome, score_values, scoring_of

log = structlog.get_logger(__name__)

LEAD_NOT_FOUND = "No lead with this id."
EMAIL_INDEX_PURPOSE = "sales.lead.email"
READ_ALL = "leads:read_all"
READ_OWN = "leads:read_own"
WRITE = "leads:write"
ASSIGN = "leads:assign"
OWNER_ROLES = frozenset({Role.SALES.value, Role.STAFF.value, Role.ADMIN.value})
DEMO_LEADS = 50
THREADED_SCORING = 64
DEMO_SALES_EMAIL = "sales@demo.ecosistema.dev"


# --- encryption helpers -----------------------------------------------------------------------


def email_index(ctx: ServiceContext, email: str) -> str:
    """The blind index leads are found by email with."""
    return ctx.cipher.blind_index(domain.normalise_email(email), purpose=EMAIL_INDEX_PURPOSE)


def _enc(ctx: ServiceContext, value: str | None, column: str, row_id: str) -> str | None:
    if value is None:
        return None
    return ctx.cipher.encrypt(value, table="leads", column=column, row_id=row_id)


def _dec(ctx: ServiceContext, token: str | None, column: str, row_id: str) -> str | None:
    if token is None:
        return None
    return ctx.cipher.decrypt(token, table="leads", column=column, row_id=row_id)


def lead_view(ctx: ServiceContext, row: Row[Any] | Mapping[str, Any]) -> Lead:
    """A stored lead, its contact data decrypted, as the API shows it."""
    m: Mapping[str, Any] = dict(row._mapping) if isinstance(row, Row) else row
    lead_id = m["id"]
    return Lead(
        id=lead_id,
        name=_dec(ctx, m["name_encrypted"], "name_encrypted", lead_id) or "",
        email=_dec(ctx, m["email_encrypted"], "email_encrypted", lead_id),
        phone=_dec(ctx, m["phone_encrypted"], "phone_encrypted", lead_id),
        company=m["company"],
        source=m["source"],
        channel=m["channel"],
        campaign=m["campaign"],
        message=m["message"],
        attributes=dict(m["attributes"] or {}),
        owner_id=m["owner_id"],
        status=LeadStatus(m["status"]),
        score=m["score"],
        probability=m["probability"],
        model_version=m["model_version"],
        factors=[Factor(**f) for f in (m["factors"] or [])],
        scored_at=m["scored_at"],
        closed_at=m["closed_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


# --- scoring inputs ---------------------------------------------------------------------------


async def _histories(
    session: AsyncSession, indexes: Sequence[str], *, before: datetime | None = None
) -> dict[str, History]:
    """Per email index: the earlier leads that were really contacted (a call or email logged on
    them, or an outcome: won or lost), how the latest ended, and when it was last touched.

    A lead nobody contacted is no contact: entering the same person twice must not read as
    "contacted today". A lead closed as a duplicate is no outcome.
    """
    wanted = sorted({i for i in indexes if i})
    if not wanted:
        return {}
    statement = select(
        leads.c.email_index,
        leads.c.status,
        leads.c.created_at,
        leads.c.updated_at,
        leads.c.closed_at,
    ).where(
        leads.c.email_index.in_(wanted),
        or_(leads.c.status.in_([s.value for s in OUTCOMES]), leads.c.contacts > 0),
    )
    if before is not None:
        statement = statement.where(leads.c.created_at < before)
    rows = (await session.execute(statement.order_by(leads.c.created_at, leads.c.id))).all()
    out: dict[str, History] = {}
    for r in rows:
        earlier = out.get(r.email_index, History())
        out[r.email_index] = History(
            previous=earlier.previous + 1,
            last_outcome=LeadStatus(r.status),
            last_contact_at=r.closed_at or r.updated_at,
        )
    return out


class OpenLead(NamedTuple):
    """The open lead an email is taken by, and who owns it."""

    id: str
    owner_id: str | None


async def open_leads_by_email(session: AsyncSession, indexes: Sequence[str]) -> dict[str, OpenLead]:
    """Email index -> the open lead with that email (the index ``ux_leads_open_email`` allows
    one at most)."""
    wanted = sorted({i for i in indexes if i})
    found: dict[str, OpenLead] = {}
    for start in range(0, len(wanted), 500):
        rows = (
            await session.execute(
                select(leads.c.email_index, leads.c.id, leads.c.owner_id).where(
                    leads.c.email_index.in_(wanted[start : start + 500]),
                    leads.c.status.in_([s.value for s in OPEN]),
                )
            )
        ).all()
        found.update({r.email_index: OpenLead(r.id, r.owner_id) for r in rows})
    return found


def readable_id(principal: Principal, lead: OpenLead) -> str | None:
    """The lead's id if the caller may read that lead, else None: a duplicate answer must not
    hand a salesperson the id of someone else's lead."""
    if READ_ALL not in principal.permissions and READ_OWN not in principal.permissions:
        return None
    return lead.id if can_reach(principal, lead.owner_id, bypass=READ_ALL) else None


def _open_email_taken(exc: IntegrityError) -> bool:
    """Whether a write broke the one-open-lead-per-email index (PostgreSQL names the index,
    SQLite its column)."""
    message = str(exc.orig)
    return "ux_leads_open_email" in message or "leads.email_index" in message


async def _lead_exists(session: AsyncSession, principal: Principal, index: str) -> LeadExists:
    """The 409 for an email an open lead has, naming that lead only to those who may read it."""
    found = (await open_leads_by_email(session, [index])).get(index)
    return LeadExists(readable_id(principal, found) if found is not None else None)


async def known_categories(ctx: ServiceContext) -> Mapping[str, Sequence[str]]:
    """The category values the serving model knows, and the reference data's."""
    from ecosistema.ml import NoServingModel

    try:
        learnt = scoring_of(ctx).server.model.pipeline.categories
    except (NoServingModel, RuntimeError):  # no model serving yet, or scoring not started
        return domain.CATEGORY_VALUES
    # The reference data's values stay allowed: a rare one (``default: yes``, 3 rows) is not
    # in the model's vocabulary, yet is a true answer the model scores as "other".
    return {
        key: sorted({*learnt.get(key, ()), *values})
        for key, values in domain.CATEGORY_VALUES.items()
    }


def category_problems(
    known: Mapping[str, Sequence[str]], attributes: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Unknown category values as problem+json errors naming ``attributes.<key>``."""
    return [
        {
            "field": f"attributes.{key}",
            "message": message,
            "code": "unknown_category",
            "allowed": allowed,
        }
        for key, message, allowed in domain.check_categories(attributes, known)
    ]


async def _check_categories(ctx: ServiceContext, attributes: Mapping[str, Any]) -> None:
    errors = category_problems(await known_categories(ctx), attributes)
    if errors:
        raise Unprocessable(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )


def _facts(values: Mapping[str, Any], history: History) -> LeadFacts:
    return LeadFacts(
        created_at=values["created_at"],
        channel=values.get("channel"),
        source=values.get("source"),
        campaign=values.get("campaign"),
        message=values.get("message"),
        attributes=values.get("attributes") or {},
        contacts=int(values.get("contacts") or 0),
        history=history,
    )


def _features(ctx: ServiceContext, values: Mapping[str, Any], history: History) -> dict[str, Any]:
    return domain.feature_row(_facts(values, history))


def _scored(ctx: ServiceContext, features: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Score columns for each feature row (unscored while no model serves)."""
    scores = scoring_of(ctx).score(features)
    now = utcnow()
    if scores is None:
        return [score_values(None, now=now) for _ in features]
    return [score_values(s, now=now) for s in scores]


# --- owners -----------------------------------------------------------------------------------


async def resolve_owner(
    ctx: ServiceContext, principal: Principal, requested: str | None, *, field: str = "owner_id"
) -> str:
    """The owner a lead gets: the caller by default; someone else only with ``leads:assign``."""
    if requested is None or requested == principal.subject:
        return principal.subject
    ensure(principal, ASSIGN)
    if not await is_sales_user(ctx, requested):
        raise field_error(field, "not a sales, staff or admin user", code="unknown_owner")
    return requested


async def is_sales_user(ctx: ServiceContext, user_id: str) -> bool:
    """Whether the user may own leads: identity is asked (its answer is current); when identity
    cannot be reached, the roles sales learnt from identity's events answer."""
    try:
        user = await ctx.client("identity").get_user(user_id)
    except LookupError:
        async with ctx.db.read() as session:
            role = await session.scalar(
                select(sales_users.c.role).where(sales_users.c.user_id == user_id)
            )
        return role in OWNER_ROLES
    return user is not None and user.role in OWNER_ROLES and user.status == "active"


# --- leads ------------------------------------------------------------------------------------


def new_lead_values(
    ctx: ServiceContext,
    data: LeadCreate,
    *,
    owner_id: str,
    created_by: str,
    now: datetime,
) -> dict[str, Any]:
    """The stored columns of a new lead, contact data encrypted; not scored yet."""
    lead_id = new_id()
    return {
        "id": lead_id,
        "name_encrypted": _enc(ctx, data.name, "name_encrypted", lead_id),
        "email_encrypted": _enc(ctx, data.email, "email_encrypted", lead_id),
        "email_index": email_index(ctx, data.email) if data.email else None,
        "phone_encrypted": _enc(ctx, data.phone, "phone_encrypted", lead_id),
        "company": data.company,
        "source": data.source,
        "channel": data.channel,
        "campaign": data.campaign,
        "message": data.message,
        "attributes": dict(data.attributes),
        "owner_id": owner_id,
        "status": LeadStatus.NEW.value,
        "contacts": 0,
        "closed_at": None,
        "created_by": created_by,
        "created_at": now,
        "updated_at": now,
    }


async def score_new_leads(
    ctx: ServiceContext,
    rows: list[dict[str, Any]],
    *,
    seen: dict[str, History] | None = None,
) -> None:
    """Give new leads (not stored yet) their model inputs and scores.

    Runs before the write transaction, so scoring a large batch never holds the write lock;
    big batches are scored in a worker thread so the event loop keeps serving. ``seen`` carries
    the history of earlier batches of the same import, not stored yet.
    """
    async with ctx.db.read() as session:
        histories = await _histories(session, [r["email_index"] for r in rows])
    seen = {} if seen is None else seen
    for row in rows:
        index = row["email_index"]
        # Earlier rows of the same batch count as history too, as if created one by one.
        history = seen.get(index) or histories.get(index, History()) if index else History()
        row["features"] = _features(ctx, row, history)
    features = [r["features"] for r in rows]
    if len(rows) >= THREADED_SCORING:
        scored = await asyncio.to_thread(_scored, ctx, features)
    else:
        scored = _scored(ctx, features)
    for row, values in zip(rows, scored, strict=True):
        row.update(values)


async def insert_leads(
    ctx: ServiceContext, session: AsyncSession, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Insert scored new leads (in the caller's transaction), with their events; returns those
    inserted. A lead whose email an open lead has (one committed meanwhile included) is left
    out, not an error: on PostgreSQL a concurrent insert of the same email is waited for."""
    if not rows:
        return []
    builder = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    statement = (
        builder(leads)
        .on_conflict_do_nothing(index_elements=[leads.c.email_index], index_where=OPEN_LEAD)
        .returning(leads.c.id)
    )
    inserted = set((await session.execute(statement, rows)).scalars().all())
    rows = [row for row in rows if row["id"] in inserted]
    if not rows:
        return []
    events = [
        {
            "lead_id": row["id"],
            "owner_id": row["owner_id"],
            "source": row["source"],
            "campaign": row["campaign"],
            "score": row["score"],
            "model_version": row["model_version"],
        }
        for row in rows
    ]
    if len(events) > 1:
        # One multi-row insert for a batch; the last event goes through ``add`` so the relay
        # is woken up as for any other event.
        correlation = current_request_id()
        await session.execute(
            insert(ctx.outbox.table),
            [
                {
                    "event_id": new_id(),
                    "type": LEAD_CREATED,
                    "version": 1,
                    "source": ctx.outbox.source,
                    "correlation_id": correlation,
                    "occurred_at": utcnow(),
                    "payload": payload,
                    "attempts": 0,
                }
                for payload in events[:-1]
            ],
        )
    await ctx.outbox.add(session, LEAD_CREATED, events[-1])
    return rows


async def create_lead(ctx: ServiceContext, principal: Principal, data: LeadCreate) -> Lead:
    """Create a lead, scored by the serving model before the request returns."""
    owner = await resolve_owner(ctx, principal, data.owner_id)
    await _check_categories(ctx, data.attributes)
    now = utcnow()
    values = new_lead_values(ctx, data, owner_id=owner, created_by=principal.subject, now=now)
    index = values["email_index"]
    await score_new_leads(ctx, [values])
    async with ctx.db.transaction() as session:
        # The unique index decides, whatever the concurrent writers: nothing inserted means an
        # open lead has the email (committed before, or meanwhile).
        if not await insert_leads(ctx, session, [values]):
            raise await _lead_exists(session, principal, index)
    return lead_view(ctx, values)


async def _load(session: AsyncSession, lead_id: str, *, lock: bool = False) -> Row[Any]:
    statement = select(leads).where(leads.c.id == lead_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update()
    row = (await session.execute(statement)).first()
    if row is None:
        raise _not_found()
    return row


def _not_found() -> NotFound:
    return NotFound(LEAD_NOT_FOUND)


def _ensure_reach(principal: Principal, row: Row[Any]) -> None:
    if READ_ALL not in principal.permissions:
        ensure(principal, READ_OWN)
    ensure_owner(principal, row.owner_id, bypass=READ_ALL, detail=LEAD_NOT_FOUND)


async def get_lead(ctx: ServiceContext, principal: Principal, lead_id: str) -> Lead:
    """A lead its caller may see (their own, or any for staff)."""
    async with ctx.db.read() as session:
        row = await _load(session, lead_id)
    _ensure_reach(principal, row)
    return lead_view(ctx, row)


async def update_lead(
    ctx: ServiceContext, principal: Principal, lead_id: str, data: LeadUpdate
) -> Lead:
    """Change a lead's fields, owner or status; re-scores it; a won/lost lead becomes a label."""
    changes = data.model_fields_set
    for required in ("name", "status"):
        if required in changes and getattr(data, required) is None:
            raise field_error(required, "cannot be null", code="null")
    new_owner: str | None = None
    if "owner_id" in changes:
        if data.owner_id is None:
            raise field_error("owner_id", "a lead always has an owner", code="null")
        new_owner = await resolve_owner(ctx, principal, data.owner_id)
    try:
        return await _update_lead(ctx, principal, lead_id, data, new_owner)
    except IntegrityError as exc:
        # Another lead took the new email between the check and the write (PostgreSQL).
        if not _open_email_taken(exc) or data.email is None:
            raise
        async with ctx.db.read() as session:
            raise await _lead_exists(session, principal, email_index(ctx, data.email)) from exc


async def _update_lead(
    ctx: ServiceContext,
    principal: Principal,
    lead_id: str,
    data: LeadUpdate,
    new_owner: str | None,
) -> Lead:
    changes = data.model_fields_set
    now = utcnow()
    async with ctx.db.transaction() as session:
        row = await _load(session, lead_id, lock=True)
        _ensure_reach(principal, row)
        current = dict(row._mapping)
        values: dict[str, Any] = {}
        for name in ("company", "source", "channel", "campaign", "message"):
            if name in changes and getattr(data, name) != current[name]:
                values[name] = getattr(data, name)
        if "attributes" in changes:
            values["attributes"] = dict(data.attributes or {})
            await _check_categories(ctx, values["attributes"])
        if data.name is not None:
            values["name_encrypted"] = _enc(ctx, data.name, "name_encrypted", lead_id)
        if "phone" in changes:
            values["phone_encrypted"] = _enc(ctx, data.phone, "phone_encrypted", lead_id)
        if "email" in changes:
            values["email_encrypted"] = _enc(ctx, data.email, "email_encrypted", lead_id)
            values["email_index"] = email_index(ctx, data.email) if data.email else None
            index = values["email_index"]
            other = (await open_leads_by_email(session, [index])).get(index) if index else None
            if other is not None and other.id != lead_id:
                raise LeadExists(readable_id(principal, other))
        has_email = values.get("email_encrypted", current["email_encrypted"]) is not None
        has_phone = values.get("phone_encrypted", current["phone_encrypted"]) is not None
        if not has_email and not has_phone:
            raise field_error(
                "email", "a lead needs an email or a phone number", code="unreachable"
            )
        if new_owner is not None and new_owner != current["owner_id"]:
            values["owner_id"] = new_owner
        status_event: dict[str, Any] | None = None
        if data.status is not None:
            before = LeadStatus(current["status"])
            if domain.check_transition(before, data.status):
                values["status"] = data.status.value
                if data.status in CLOSED:
                    values["closed_at"] = now
                status_event = {"from": before.value, "to": data.status.value}
        if not values:
            return lead_view(ctx, row)
        values["updated_at"] = now
        merged = {**current, **values}
        history = (
            await _histories(session, [merged["email_index"]], before=merged["created_at"])
        ).get(merged["email_index"] or "", History())
        merged["features"] = values["features"] = _features(ctx, merged, history)
        values.update(_scored(ctx, [merged["features"]])[0])
        merged.update(values)
        await session.execute(update(leads).where(leads.c.id == lead_id).values(**values))
        if status_event is not None:
            await _status_changed(
                ctx, session, merged, status_event, actor=principal.subject, reason="updated"
            )
    return lead_view(ctx, merged)


async def _status_changed(
    ctx: ServiceContext,
    session: AsyncSession,
    lead: Mapping[str, Any],
    change: Mapping[str, str],
    *,
    actor: str | None,
    reason: str,
    event_id: str | None = None,
) -> None:
    await session.execute(
        insert(activities).values(
            id=new_id(),
            lead_id=lead["id"],
            kind=ActivityKind.STATUS.value,
            body=f"{change['from']} -> {change['to']}",
            details={**change, "reason": reason},
            actor_id=actor,
            event_id=f"status:{event_id}" if event_id else None,
            occurred_at=lead["updated_at"],
        )
    )
    await ctx.outbox.add(
        session,
        LEAD_STATUS_CHANGED,
        {"lead_id": lead["id"], "owner_id": lead["owner_id"], **change, "reason": reason},
    )
    if change["to"] in (LeadStatus.WON, LeadStatus.LOST):
        record_outcome(
            ctx,
            probability=lead.get("probability"),
            model_version=lead.get("model_version"),
            won=change["to"] == LeadStatus.WON,
        )


def _keyset(columns: Sequence[Any], values: Sequence[Any], *, descending: bool) -> Any:
    """``(c1, c2, ...) < (v1, v2, ...)`` (or ``>``), spelled out so every dialect reads it."""
    clauses = []
    for i, column in enumerate(columns):
        equal = [columns[j] == values[j] for j in range(i)]
        beyond = column < values[i] if descending else column > values[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


async def list_leads(
    ctx: ServiceContext,
    principal: Principal,
    *,
    status: LeadStatus | None = None,
    owner_id: str | None = None,
    source: str | None = None,
    campaign: str | None = None,
    min_score: int | None = None,
    max_score: int | None = None,
    sort: LeadSort = "created_desc",
    cursor: str | None = None,
    limit: int = 50,
) -> LeadPage:
    """A page of the leads the caller may see, filtered and sorted by score or creation."""
    if READ_ALL not in principal.permissions:
        ensure(principal, READ_OWN)
    if min_score is not None and max_score is not None and min_score > max_score:
        raise field_error("min_score", "must not exceed max_score")
    statement: Select[Any] = select(leads)
    only = owner_filter(principal, bypass=READ_ALL)
    if only is not None:
        statement = statement.where(leads.c.owner_id == only)
    if owner_id is not None:
        statement = statement.where(leads.c.owner_id == owner_id)
    if status is not None:
        statement = statement.where(leads.c.status == status.value)
    if source is not None:
        statement = statement.where(leads.c.source == source)
    if campaign is not None:
        statement = statement.where(leads.c.campaign == campaign)
    if min_score is not None:
        statement = statement.where(leads.c.score >= min_score)
    if max_score is not None:
        statement = statement.where(leads.c.score <= max_score)
    by_score = sort.startswith("score")
    descending = sort.endswith("desc")
    columns = (
        [leads.c.score_rank, leads.c.created_at, leads.c.id]
        if by_score
        else [leads.c.created_at, leads.c.id]
    )
    if cursor is not None:
        kinds: tuple[type, ...] = (int, datetime, str) if by_score else (datetime, str)
        values = decode_cursor(cursor, *kinds)
        statement = statement.where(_keyset(columns, values, descending=descending))
    order = [c.desc() if descending else c.asc() for c in columns]
    async with ctx.db.read() as session:
        rows = (await session.execute(statement.order_by(*order).limit(limit + 1))).all()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = (
            encode_cursor(last.score_rank, last.created_at, last.id)
            if by_score
            else encode_cursor(last.created_at, last.id)
        )
    return LeadPage(items=[lead_view(ctx, r) for r in page], next_cursor=next_cursor)


# --- activities -------------------------------------------------------------------------------


def _activity_view(row: Row[Any] | Mapping[str, Any]) -> Activity:
    m: Mapping[str, Any] = dict(row._mapping) if isinstance(row, Row) else row
    return Activity(
        id=m["id"],
        lead_id=m["lead_id"],
        kind=ActivityKind(m["kind"]),
        body=m["body"],
        details=dict(m["details"] or {}),
        actor_id=m["actor_id"],
        occurred_at=m["occurred_at"],
    )


async def add_activity(
    ctx: ServiceContext, principal: Principal, lead_id: str, data: ActivityCreate
) -> Activity:
    """Log a call, email or note; a call or email counts as a contact and re-scores the lead."""
    ensure(principal, WRITE)
    now = utcnow()
    values: dict[str, Any] = {
        "id": new_id(),
        "lead_id": lead_id,
        "kind": data.kind,
        "body": data.body,
        "details": {},
        "actor_id": principal.subject,
        "event_id": None,
        "occurred_at": data.occurred_at or now,
    }
    async with ctx.db.transaction() as session:
        row = await _load(session, lead_id, lock=True)
        _ensure_reach(principal, row)
        await session.execute(insert(activities).values(**values))
        if ActivityKind(data.kind) in CONTACTS:
            current = dict(row._mapping)
            merged = {**current, "contacts": current["contacts"] + 1, "updated_at": now}
            history = (
                await _histories(session, [merged["email_index"]], before=merged["created_at"])
            ).get(merged["email_index"] or "", History())
            merged["features"] = _features(ctx, merged, history)
            change = {
                "contacts": merged["contacts"],
                "features": merged["features"],
                "updated_at": now,
                **_scored(ctx, [merged["features"]])[0],
            }
            await session.execute(update(leads).where(leads.c.id == lead_id).values(**change))
    return _activity_view(values)


async def list_activities(
    ctx: ServiceContext,
    principal: Principal,
    lead_id: str,
    *,
    cursor: str | None = None,
    limit: int = 50,
) -> ActivityPage:
    """A lead's timeline, newest first."""
    async with ctx.db.read() as session:
        row = await _load(session, lead_id)
        _ensure_reach(principal, row)
        statement = select(activities).where(activities.c.lead_id == lead_id)
        if cursor is not None:
            moment, last_id = decode_cursor(cursor, datetime, str)
            statement = statement.where(
                _keyset(
                    [activities.c.occurred_at, activities.c.id], [moment, last_id], descending=True
                )
            )
        rows = (
            await session.execute(
                statement.order_by(activities.c.occurred_at.desc(), activities.c.id.desc()).limit(
                    limit + 1
                )
            )
        ).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].occurred_at, page[-1].id) if len(rows) > limit else None
    return ActivityPage(items=[_activity_view(r) for r in page], next_cursor=next_cursor)


# --- platform signals -------------------------------------------------------------------------


async def _leads_by_email(session: AsyncSession, index: str) -> list[Row[Any]]:
    return list(
        (
            await session.execute(
                select(leads).where(leads.c.email_index == index).order_by(leads.c.created_at)
            )
        ).all()
    )


async def _add_signal(
    session: AsyncSession,
    lead_id: str,
    kind: ActivityKind,
    *,
    body: str,
    details: dict[str, Any],
    event: EventEnvelope,
) -> bool:
    """Add a platform activity once per (event, lead); False when it was already there."""
    exists = await session.scalar(
        select(activities.c.id).where(
            activities.c.event_id == event.id, activities.c.lead_id == lead_id
        )
    )
    if exists is not None:
        return False
    await session.execute(
        insert(activities).values(
            id=new_id(),
            lead_id=lead_id,
            kind=kind.value,
            body=body,
            details=details,
            actor_id=None,
            event_id=event.id,
            occurred_at=event.occurred_at,
        )
    )
    return True


async def _user_email(ctx: ServiceContext, user_id: str, event: EventEnvelope) -> str | None:
    """The email of an identity user, asked of identity's client (events carry none)."""
    try:
        user = await ctx.client("identity").get_user(user_id)
    except (LookupError, httpx.HTTPStatusError) as exc:
        # Not configured, or refused (no credential): retrying would not help.
        log.warning("sales.identity_unreachable", event_type=event.type, error=str(exc)[:200])
        return None
    return None if user is None else str(user.email)


async def record_cart(ctx: ServiceContext, session: AsyncSession, event: EventEnvelope) -> None:
    """CartCreated: a signed-in customer's new cart shows on the leads with their email."""
    customer_id = str(event.payload.get("customer_id") or "")
    cart_id = str(event.payload.get("cart_id") or "")
    if not customer_id or not cart_id:
        return
    email = await _user_email(ctx, customer_id, event)
    if email is None:
        return
    for lead in await _leads_by_email(session, email_index(ctx, email)):
        await _add_signal(
            session,
            lead.id,
            ActivityKind.CART_CREATED,
            body="cart created",
            details={"cart_id": cart_id, "customer_id": customer_id},
            event=event,
        )


async def record_user(ctx: ServiceContext, session: AsyncSession, event: EventEnvelope) -> None:
    """UserRegistered / UserRoleChanged: note sales users; show registrations on leads."""
    payload = event.payload
    user_id = str(payload.get("user_id") or "")
    if not user_id:
        return
    try:
        user = await ctx.client("identity").get_user(user_id)
    except (LookupError, httpx.HTTPStatusError) as exc:
        # Not configured, or refused (no credential): retrying would not help.
        log.warning("sales.identity_unreachable", event_type=event.type, error=str(exc)[:200])
        return
    if user is None:
        return
    index = email_index(ctx, user.email)
    role = str(payload.get("new_role") or payload.get("role") or user.role)
    now = utcnow()
    known = await session.scalar(
        select(sales_users.c.user_id).where(sales_users.c.user_id == user_id)
    )
    # Only the people who may own leads are kept (no customer's email index is stored here).
    if role not in OWNER_ROLES:
        if known is not None:
            await session.execute(delete(sales_users).where(sales_users.c.user_id == user_id))
    elif known is None:
        await session.execute(
            insert(sales_users).values(
                user_id=user_id, role=role, email_index=index, updated_at=now
            )
        )
    else:
        await session.execute(
            update(sales_users)
            .where(sales_users.c.user_id == user_id)
            .values(role=role, email_index=index, updated_at=now)
        )
    if event.type != USER_REGISTERED:
        return
    for lead in await _leads_by_email(session, index):
        await _add_signal(
            session,
            lead.id,
            ActivityKind.REGISTERED,
            body="registered an account on the platform",
            details={"user_id": user_id},
            event=event,
        )


async def record_order(ctx: ServiceContext, session: AsyncSession, event: EventEnvelope) -> None:
    """OrderPlaced / OrderPaid: shown on the leads with the buyer's email. Only OrderPaid wins
    an open lead: a placed order may still be cancelled or expire unpaid, and won is final."""
    order_id = str(event.payload.get("order_id") or "")
    if not order_id:
        return
    email = event.payload.get("email")
    if not email:
        # Orders' events carry no email; the order itself has it.
        try:
            order = await ctx.client("orders").get_order(order_id)
        except (LookupError, NotFound, httpx.HTTPStatusError) as exc:
            log.warning("sales.order_unreachable", event_type=event.type, error=str(exc)[:200])
            return
        email = order.email
    paid = event.type == ORDER_PAID
    kind = ActivityKind.ORDER_PAID if paid else ActivityKind.ORDER_PLACED
    number = event.payload.get("number")
    total = event.payload.get("total")
    currency = event.payload.get("currency")
    now = utcnow()
    for lead in await _leads_by_email(session, email_index(ctx, str(email))):
        added = await _add_signal(
            session,
            lead.id,
            kind,
            body=f"order {number} {'paid' if paid else 'placed'}",
            details={"order_id": order_id, "number": number, "total": total, "currency": currency},
            event=event,
        )
        status = LeadStatus(lead.status)
        if not added or not paid or status in CLOSED:
            continue
        values = {"status": LeadStatus.WON.value, "closed_at": now, "updated_at": now}
        await session.execute(update(leads).where(leads.c.id == lead.id).values(**values))
        merged = {**dict(lead._mapping), **values}
        await _status_changed(
            ctx,
            session,
            merged,
            {"from": status.value, "to": LeadStatus.WON.value},
            actor=None,
            reason=event.type,
            event_id=event.id,
        )


# --- demo -------------------------------------------------------------------------------------

_FIRST = ("Ana", "Luis", "Marta", "Jorge", "Lucía", "Pablo", "Elena", "Diego", "Sara", "Hugo")
_LAST = ("García", "Martín", "López", "Sánchez", "Pérez", "Gómez", "Ruiz", "Díaz", "Moreno")
_COMPANIES = ("Acme Iberia", "Solaris", "Verde Foods", "Norte Logística", "Brisa Tech", None)
_SOURCES = ("web", "event", "referral", "import", "partner")
_CAMPAIGNS = ("spring-webinar", "trade-fair-2026", "newsletter", "retargeting")
_MESSAGES = (
    "Interested in a quote for next quarter.",
    "Please call me back about pricing.",
    "Just browsing for now.",
    "We need a demo for our team of 20.",
    None,
)
# A reference-data row's person and contact history: demo leads look like the training leads.
_ATTRIBUTES = (
    *("age", "job", "marital", "education", "default", "housing", "loan"),
    *("campaign", "pdays", "previous", "poutcome"),
)


async def seed_demo(ctx: ServiceContext) -> dict[str, Any]:
    """About fifty scored leads owned by the demo sales user; running it again adds nothing."""
    if ctx.settings.environment == "production":
        raise Conflict("Demo data is never created in production.", type="demo-in-production")
    owner = await _demo_owner(ctx)
    if owner is None:
        return {"leads": 0, "skipped": f"{DEMO_SALES_EMAIL} is not known to sales yet"}
    async with ctx.db.read() as session:
        existing = await session.scalar(
            select(func.count()).select_from(leads).where(leads.c.owner_id == owner)
        )
    if existing:
        return {"leads": int(existing), "owner_id": owner}
    from ecosistema.ml import load_reference_dataset

    sample = await asyncio.to_thread(load_reference_dataset, 400, seed=5)
    rng = random.Random(5)  # noqa: S311 - demo names, reproducible on purpose
    now = utcnow()
    rows: list[dict[str, Any]] = []
    outcomes: list[LeadStatus] = []
    for i, record in enumerate(sample.sample(DEMO_LEADS, random_state=5).to_dict("records")):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        data = LeadCreate(
            name=f"{first} {last}",
            email=f"lead{i + 1:02d}@demo.example.com",
            phone=f"+34 6{rng.randrange(10_000_000, 99_999_999)}",
            company=rng.choice(_COMPANIES),
            source=rng.choice(_SOURCES),
            channel="mobile" if record["contact"] == "cellular" else "landline",
            campaign=rng.choice(_CAMPAIGNS),
            message=rng.choice(_MESSAGES),
            attributes={k: _plain(record[k]) for k in _ATTRIBUTES},
        )
        created = now - timedelta(days=rng.randrange(0, 60), minutes=rng.randrange(0, 1440))
        rows.append(new_lead_values(ctx, data, owner_id=owner, created_by=owner, now=created))
        outcomes.append(
            rng.choices(
                [LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.QUALIFIED, LeadStatus.LOST],
                weights=[5, 3, 2, 1],
            )[0]
        )
    await score_new_leads(ctx, rows)
    async with ctx.db.transaction() as session:
        await insert_leads(ctx, session, rows)
        for row, status in zip(rows, outcomes, strict=True):
            if status != LeadStatus.NEW:
                await session.execute(
                    update(leads)
                    .where(leads.c.id == row["id"])
                    .values(
                        status=status.value,
                        closed_at=now if status in CLOSED else None,
                    )
                )
    return {"leads": len(rows), "owner_id": owner}


def _plain(value: Any) -> Any:
    """A NumPy scalar from the sample as the Python value JSON and validation expect."""
    return value.item() if hasattr(value, "item") else value


async def _demo_owner(ctx: ServiceContext) -> str | None:
    """The demo sales user's id, once identity's registration event has reached sales."""
    identity = ctx.runtime.relays.get("identity")
    if identity is not None:
        # Only identity's events matter here: the demo users' registrations.
        await identity.drain(timeout=120)
    index = email_index(ctx, DEMO_SALES_EMAIL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        async with ctx.db.read() as session:
            owner = await session.scalar(
                select(sales_users.c.user_id).where(sales_users.c.email_index == index)
            )
        if owner is not None or loop.time() > deadline or "identity" not in ctx.runtime.contexts:
            return owner
        await asyncio.sleep(0.2)


async def find_lead(ctx: ServiceContext, lead_id: str) -> Lead | None:
    """A lead by id for another service (no ownership rule: services are trusted)."""
    async with ctx.db.read() as session:
        row = (await session.execute(select(leads).where(leads.c.id == lead_id))).first()
    return lead_view(ctx, row) if row is not None else None
