"""Inventory use cases: stock per SKU and warehouse, adjustments, movements, and reservations.

Overselling is prevented by the database, not by a read followed by a write: every change of
``reserved`` is a guarded ``UPDATE … WHERE on_hand - reserved >= :q`` whose row count says
whether it happened, all lines of a reservation run in one transaction (all or nothing), and
stock rows are always taken in the same order (SKU, then warehouse priority and code) so two
reservations cannot deadlock. On SQLite the write transaction is ``BEGIN IMMEDIATE``; on
PostgreSQL the guarded update re-checks its condition on the row it locked. A CHECK constraint
(``on_hand >= reserved >= 0``) backs it all up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import CursorResult, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.catalog import domain
from ecosistema.catalog.domain import InsufficientStock, MovementReason, ReservationStatus
from ecosistema.catalog.models import (
    reservation_lines,
    reservations,
    stock,
    stock_movements,
    variants,
    warehouses,
)
from ecosistema.catalog.schemas import (
    Availability,
    MovementPage,
    StockAdjustment,
    StockLevel,
    StockMovement,
)
from ecosistema.catalog.service import insert_ignoring_conflicts, invalidate
from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.errors import Conflict, NotFound, field_error
from ecosistema.platform.pagination import decode_cursor, encode_cursor
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

STOCK_CHANGED = "StockChanged"
STOCK_LOW = "StockLow"
SYSTEM_ACTOR = "system"
SKU_NOT_FOUND = "No variant with this SKU."
_ALLOCATION_ATTEMPTS = 3
MAX_RESERVATION_TTL_SECONDS = 7 * 24 * 3600


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


# Reservation paths' reads, built once (building a statement costs more than running it).
_LEVELS = (
    select(stock.c.warehouse_id, stock.c.on_hand - stock.c.reserved)
    .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
    .where(stock.c.sku == bindparam("sku"))
    .order_by(warehouses.c.priority, warehouses.c.code)
)
_AVAILABLE = select(func.coalesce(func.sum(stock.c.on_hand - stock.c.reserved), 0)).where(
    stock.c.sku == bindparam("sku")
)
_HELD_LINES = (
    select(reservation_lines)
    .select_from(
        reservation_lines.join(warehouses, warehouses.c.id == reservation_lines.c.warehouse_id)
    )
    .where(reservation_lines.c.order_id == bindparam("order_id"))
    .order_by(reservation_lines.c.sku, warehouses.c.priority, warehouses.c.code)
)


async def _levels(session: AsyncSession, sku: str) -> list[tuple[str, int]]:
    """``[(warehouse_id, available)]`` for a SKU in allocation order."""
    rows = await session.execute(_LEVELS, {"sku": sku})
    return [(wid, max(0, int(free))) for wid, free in rows.all()]


async def _available(session: AsyncSession, sku: str) -> int:
    total = await session.scalar(_AVAILABLE, {"sku": sku})
    return max(0, int(total or 0))


async def _record(
    session: AsyncSession,
    rows: Sequence[dict[str, Any]],
) -> None:
    if rows:
        await session.execute(insert(stock_movements), list(rows))


def _movement(
    sku: str,
    warehouse_id: str,
    *,
    on_hand: int = 0,
    reserved: int = 0,
    reason: MovementReason,
    actor: str,
    reference: str | None = None,
    note: str | None = None,
    at: datetime,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "sku": sku,
        "warehouse_id": warehouse_id,
        "on_hand_delta": on_hand,
        "reserved_delta": reserved,
        "reason": reason.value,
        "reference": reference,
        "note": note,
        "actor": actor,
        "occurred_at": at,
    }


async def _announce(
    ctx: ServiceContext,
    session: AsyncSession,
    changes: dict[str, int],
    reason: MovementReason,
    reference: str | None,
    *,
    known: Mapping[str, int] | None = None,
) -> None:
    """StockChanged per SKU, and StockLow when availability just fell below the threshold.

    ``changes`` maps each SKU to how much its availability moved in this transaction;
    ``known``, the availability after it of SKUs the caller has just read."""
    threshold = ctx.settings.catalog_low_stock_threshold
    for sku in sorted(changes):
        after = known[sku] if known is not None and sku in known else await _available(session, sku)
        before = after - changes[sku]
        await ctx.outbox.add(
            session,
            STOCK_CHANGED,
            {
                "sku": sku,
                "available": after,
                "delta": changes[sku],
                "reason": reason.value,
                "reference": reference,
            },
        )
        if domain.crosses_below(before, after, threshold):
            await ctx.outbox.add(
                session, STOCK_LOW, {"sku": sku, "available": after, "threshold": threshold}
            )


# --- reservations -------------------------------------------------------------------------------


async def reserve(
    ctx: ServiceContext,
    order_id: str,
    lines: Sequence[tuple[str, int]],
    ttl_seconds: int,
    *,
    actor: str = SYSTEM_ACTOR,
) -> None:
    """Hold stock for an order until it is paid, cancelled or the reservation expires.

    All lines or none; calling again with the same ``order_id`` changes nothing. Raises
    ``InsufficientStock`` with every line's requested and available quantity."""
    try:
        merged = domain.merge_lines(lines)
    except ValueError as exc:
        raise field_error("lines", str(exc)) from exc
    if not merged:
        raise field_error("lines", "a reservation needs at least one line")
    if not 0 < ttl_seconds <= MAX_RESERVATION_TTL_SECONDS:
        raise field_error("ttl_seconds", f"must be between 1 and {MAX_RESERVATION_TTL_SECONDS}")
    now = utcnow()
    async with ctx.db.transaction() as session:
        created = await insert_ignoring_conflicts(
            session,
            reservations,
            {
                "order_id": order_id,
                "status": ReservationStatus.ACTIVE.value,
                "expires_at": now + timedelta(seconds=ttl_seconds),
                "created_at": now,
                "updated_at": now,
            },
            ["order_id"],
        )
        if not created:
            status = await session.scalar(
                select(reservations.c.status).where(reservations.c.order_id == order_id)
            )
            if status == ReservationStatus.RELEASED:
                raise Conflict(
                    "This order's reservation was released; place the order again.",
                    type="reservation-released",
                )
            return
        report: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        movements: list[dict[str, Any]] = []
        short = False
        after: dict[str, int] = {}
        for sku, quantity in merged:
            taken = await _take(session, order_id, sku, quantity, now, held, movements, actor)
            after[sku] = await _available(session, sku)
            report.append({"sku": sku, "requested": quantity, "available": after[sku] + taken})
            short = short or taken < quantity
        if short:
            # Raising rolls back every guarded update this transaction made.
            raise InsufficientStock(report)
        await session.execute(insert(reservation_lines), held)
        await _record(session, movements)
        await _announce(
            ctx,
            session,
            {sku: -q for sku, q in merged},
            MovementReason.RESERVE,
            order_id,
            known=after,
        )
    await invalidate(ctx)


async def _take(
    session: AsyncSession,
    order_id: str,
    sku: str,
    quantity: int,
    now: datetime,
    held: list[dict[str, Any]],
    movements: list[dict[str, Any]],
    actor: str,
) -> int:
    """Reserve up to ``quantity`` of a SKU across warehouses; returns how much was reserved."""
    remaining = quantity
    taken_from: dict[str, int] = {}
    for _ in range(_ALLOCATION_ATTEMPTS):
        plan = domain.allocate(remaining, await _levels(session, sku))
        raced = False
        for warehouse_id, amount in plan:
            result = await session.execute(
                update(stock)
                .where(
                    stock.c.sku == sku,
                    stock.c.warehouse_id == warehouse_id,
                    stock.c.on_hand - stock.c.reserved >= amount,
                )
                .values(reserved=stock.c.reserved + amount, updated_at=now)
            )
            if _rowcount(result) != 1:
                raced = True  # another reservation took it first; plan again with fresh levels
                break
            taken_from[warehouse_id] = taken_from.get(warehouse_id, 0) + amount
            remaining -= amount
        if remaining == 0 or not raced:
            break
    for warehouse_id, amount in taken_from.items():
        held.append(
            {"order_id": order_id, "sku": sku, "warehouse_id": warehouse_id, "quantity": amount}
        )
        movements.append(
            _movement(
                sku,
                warehouse_id,
                reserved=amount,
                reason=MovementReason.RESERVE,
                actor=actor,
                reference=order_id,
                at=now,
            )
        )
    return quantity - remaining


async def _held_lines(session: AsyncSession, order_id: str) -> list[Any]:
    return list((await session.execute(_HELD_LINES, {"order_id": order_id})).all())


async def _settle(
    ctx: ServiceContext,
    session: AsyncSession,
    order_id: str,
    *,
    to: ReservationStatus,
    reason: MovementReason,
    actor: str,
    note: str | None = None,
    only_expired_before: datetime | None = None,
) -> bool:
    """Move an active reservation to committed or released; False when it was not active."""
    now = utcnow()
    guard = [
        reservations.c.order_id == order_id,
        reservations.c.status == ReservationStatus.ACTIVE.value,
    ]
    if only_expired_before is not None:
        guard.append(reservations.c.expires_at <= only_expired_before)
    result = await session.execute(
        update(reservations).where(*guard).values(status=to.value, updated_at=now)
    )
    if _rowcount(result) != 1:
        return False
    lines = await _held_lines(session, order_id)
    movements = []
    changes: dict[str, int] = {}
    for line in lines:
        q = line.quantity
        shipped = q if to is ReservationStatus.COMMITTED else 0
        await session.execute(
            update(stock)
            .where(stock.c.sku == line.sku, stock.c.warehouse_id == line.warehouse_id)
            .values(
                on_hand=stock.c.on_hand - shipped,
                reserved=stock.c.reserved - q,
                updated_at=now,
            )
        )
        movements.append(
            _movement(
                line.sku,
                line.warehouse_id,
                on_hand=-shipped,
                reserved=-q,
                reason=reason,
                actor=actor,
                reference=order_id,
                note=note,
                at=now,
            )
        )
        if to is ReservationStatus.RELEASED:
            changes[line.sku] = changes.get(line.sku, 0) + q
    await _record(session, movements)
    if to is ReservationStatus.RELEASED:
        await _announce(ctx, session, changes, reason, order_id)
    else:
        await _announce(ctx, session, {line.sku: 0 for line in lines}, reason, order_id)
    return True


async def commit_reservation_in(
    ctx: ServiceContext, session: AsyncSession, order_id: str, *, actor: str = SYSTEM_ACTOR
) -> bool:
    """Turn an order's reservation into shipped-from-stock, in the caller's transaction."""
    done = await _settle(
        ctx,
        session,
        order_id,
        to=ReservationStatus.COMMITTED,
        reason=MovementReason.COMMIT,
        actor=actor,
    )
    if not done:
        status = await session.scalar(
            select(reservations.c.status).where(reservations.c.order_id == order_id)
        )
        if status == ReservationStatus.RELEASED:
            log.warning("paid_order_reservation_already_released", order_id=order_id)
    return done


async def release_reservation_in(
    ctx: ServiceContext,
    session: AsyncSession,
    order_id: str,
    reason: str,
    *,
    actor: str = SYSTEM_ACTOR,
) -> bool:
    """Give an order's reserved stock back, in the caller's transaction."""
    return await _settle(
        ctx,
        session,
        order_id,
        to=ReservationStatus.RELEASED,
        reason=MovementReason.RELEASE,
        actor=actor,
        note=reason[:500],
    )


async def commit_reservation(ctx: ServiceContext, order_id: str) -> None:
    """The order was paid: its reserved stock leaves on-hand for good (idempotent)."""
    async with ctx.db.transaction() as session:
        changed = await commit_reservation_in(ctx, session, order_id)
    if changed:
        await invalidate(ctx)


async def release_reservation(ctx: ServiceContext, order_id: str, reason: str) -> None:
    """The order will not be paid: its reserved stock is available again (idempotent)."""
    async with ctx.db.transaction() as session:
        changed = await release_reservation_in(ctx, session, order_id, reason)
    if changed:
        await invalidate(ctx)


async def release_expired_reservations(ctx: ServiceContext, *, limit: int = 500) -> int:
    """Release reservations past their expiry (the sweeper job); returns how many."""
    now = utcnow()
    async with ctx.db.read() as session:
        due = (
            await session.scalars(
                select(reservations.c.order_id)
                .where(
                    reservations.c.status == ReservationStatus.ACTIVE.value,
                    reservations.c.expires_at <= now,
                )
                .order_by(reservations.c.expires_at)
                .limit(limit)
            )
        ).all()
    released = 0
    for order_id in due:
        async with ctx.db.transaction() as session:
            if await _settle(
                ctx,
                session,
                order_id,
                to=ReservationStatus.RELEASED,
                reason=MovementReason.EXPIRE,
                actor=SYSTEM_ACTOR,
                note="reservation expired",
                only_expired_before=now,
            ):
                released += 1
    if released:
        await invalidate(ctx)
        log.info("reservations_expired", count=released)
    return released


async def sweep_expired_reservations(ctx: ServiceContext) -> None:
    """The periodic job: release every expired reservation."""
    while await release_expired_reservations(ctx) > 0:
        pass


async def reservation_status(ctx: ServiceContext, order_id: str) -> str | None:
    """An order's reservation status, or None when it has none."""
    async with ctx.db.read() as session:
        status: str | None = await session.scalar(
            select(reservations.c.status).where(reservations.c.order_id == order_id)
        )
    return status


# --- restock and adjustments --------------------------------------------------------------------


async def _default_warehouse(session: AsyncSession, order_id: str, sku: str) -> str:
    """Where returned units go: where the order's stock came from, else the first warehouse
    holding the SKU, else the first warehouse."""
    for statement in (
        select(reservation_lines.c.warehouse_id).where(
            reservation_lines.c.order_id == order_id, reservation_lines.c.sku == sku
        ),
        select(stock.c.warehouse_id)
        .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
        .where(stock.c.sku == sku)
        .order_by(warehouses.c.priority, warehouses.c.code),
        select(warehouses.c.id).order_by(warehouses.c.priority, warehouses.c.code),
    ):
        found: str | None = await session.scalar(statement.limit(1))
        if found is not None:
            return found
    raise Conflict("There is no warehouse to restock into.", type="no-warehouse")


async def _ensure_stock_row(session: AsyncSession, sku: str, warehouse_id: str) -> None:
    await insert_ignoring_conflicts(
        session,
        stock,
        {
            "sku": sku,
            "warehouse_id": warehouse_id,
            "on_hand": 0,
            "reserved": 0,
            "updated_at": utcnow(),
        },
        ["sku", "warehouse_id"],
    )


async def _restockable(session: AsyncSession, order_id: str) -> dict[str, int]:
    """Per SKU, the units of an order's committed reservation not restocked yet.

    Raises 404 when catalog holds no reservation for the order, 409 when it was never committed
    (nothing left stock, so nothing can come back). The reservation row is locked so two
    restocks of one order are counted one after the other."""
    status = await session.scalar(
        select(reservations.c.status).where(reservations.c.order_id == order_id).with_for_update()
    )
    if status is None:
        raise NotFound(
            "No stock was reserved for this order: there is nothing to restock.",
            errors=[
                {
                    "field": "order_id",
                    "message": "no reservation for this order",
                    "code": "not_found",
                }
            ],
        )
    if status != ReservationStatus.COMMITTED:
        raise Conflict(
            f"This order's reservation is {status}, not committed: none of its units left "
            "stock, so none can be restocked.",
            type="order-not-committed",
            errors=[
                {
                    "field": "order_id",
                    "message": f"the order's reservation is {status}",
                    "code": "not_committed",
                }
            ],
        )
    committed = dict(
        (
            await session.execute(
                select(reservation_lines.c.sku, func.sum(reservation_lines.c.quantity))
                .where(reservation_lines.c.order_id == order_id)
                .group_by(reservation_lines.c.sku)
            )
        ).all()
    )
    restocked = dict(
        (
            await session.execute(
                select(stock_movements.c.sku, func.sum(stock_movements.c.on_hand_delta))
                .where(
                    stock_movements.c.reference == order_id,
                    stock_movements.c.reason == MovementReason.RESTOCK.value,
                )
                .group_by(stock_movements.c.sku)
            )
        ).all()
    )
    return {
        sku: max(0, int(units) - int(restocked.get(sku) or 0)) for sku, units in committed.items()
    }


def _over_restock(
    lines: Sequence[tuple[str, int]], merged: Sequence[tuple[str, int]], allowed: dict[str, int]
) -> Conflict | None:
    """A 409 naming every line that asks for more than the order has left to restock."""
    over = [(sku, q) for sku, q in merged if q > allowed.get(sku, 0)]
    if not over:
        return None
    first: dict[str, int] = {}
    for index, (sku, _) in enumerate(lines):
        first.setdefault(sku, index)
    return Conflict(
        "More units than the order has left to restock: "
        + ", ".join(f"{sku} ({q} requested, {allowed.get(sku, 0)} restockable)" for sku, q in over)
        + ".",
        type="restock-exceeds-order",
        lines=[{"sku": sku, "requested": q, "restockable": allowed.get(sku, 0)} for sku, q in over],
        errors=[
            {
                "field": f"lines.{first[sku]}.quantity",
                "message": f"{q} requested, {allowed.get(sku, 0)} restockable for this order",
                "code": "exceeds_restockable",
            }
            for sku, q in over
        ],
    )


async def restock_in(
    ctx: ServiceContext,
    session: AsyncSession,
    order_id: str,
    lines: Sequence[tuple[str, int]],
    reason: str,
    *,
    actor: str = SYSTEM_ACTOR,
    strict: bool = True,
) -> None:
    """Put returned units back on hand, in the caller's transaction.

    Only units the order took from stock (its committed reservation) and has not had restocked
    yet can come back. ``strict`` refuses anything beyond that (404/409); otherwise (an event
    that has already happened elsewhere) the excess is left out and logged."""
    now = utcnow()
    merged = domain.merge_lines(lines)
    try:
        allowed = await _restockable(session, order_id)
    except (NotFound, Conflict):
        if strict:
            raise
        log.warning("restock_without_committed_reservation", order_id=order_id)
        return
    refused = _over_restock(lines, merged, allowed)
    if refused is not None:
        if strict:
            raise refused
        log.warning("restock_capped", order_id=order_id, lines=refused.extra["lines"])
        merged = [(sku, min(q, allowed.get(sku, 0))) for sku, q in merged]
    movements = []
    changes: dict[str, int] = {}
    for sku, quantity in merged:
        if quantity <= 0:
            continue
        warehouse_id = await _default_warehouse(session, order_id, sku)
        await _ensure_stock_row(session, sku, warehouse_id)
        await session.execute(
            update(stock)
            .where(stock.c.sku == sku, stock.c.warehouse_id == warehouse_id)
            .values(on_hand=stock.c.on_hand + quantity, updated_at=now)
        )
        movements.append(
            _movement(
                sku,
                warehouse_id,
                on_hand=quantity,
                reason=MovementReason.RESTOCK,
                actor=actor,
                reference=order_id,
                note=reason[:500],
                at=now,
            )
        )
        changes[sku] = quantity
    await _record(session, movements)
    await _announce(ctx, session, changes, MovementReason.RESTOCK, order_id)


async def restock(
    ctx: ServiceContext,
    order_id: str,
    lines: Sequence[tuple[str, int]],
    reason: str,
    *,
    actor: str = SYSTEM_ACTOR,
) -> None:
    """Returned units (a refund with restock) go back on hand, at most what the order took."""
    try:
        domain.merge_lines(lines)
    except ValueError as exc:
        raise field_error("lines", str(exc)) from exc
    async with ctx.db.transaction() as session:
        await restock_in(ctx, session, order_id, lines, reason, actor=actor)
    await invalidate(ctx)


async def _require_sku(session: AsyncSession, sku: str) -> None:
    if not await session.scalar(select(variants.c.id).where(variants.c.sku == sku)):
        raise NotFound(SKU_NOT_FOUND)


async def adjust_stock(
    ctx: ServiceContext, sku: str, data: StockAdjustment, *, actor: str
) -> Availability:
    """Change on-hand stock after a delivery, a count or a loss; never below what is reserved."""
    now = utcnow()
    async with ctx.db.transaction() as session:
        await _require_sku(session, sku)
        warehouse_id = await session.scalar(
            select(warehouses.c.id).where(warehouses.c.code == data.warehouse)
        )
        if warehouse_id is None:
            raise field_error("warehouse", "no warehouse with this code", "not_found")
        await _ensure_stock_row(session, sku, warehouse_id)
        row = (
            await session.execute(
                select(stock.c.on_hand, stock.c.reserved)
                .where(stock.c.sku == sku, stock.c.warehouse_id == warehouse_id)
                .with_for_update()
            )
        ).one()
        counted = data.delta is None
        delta = int(data.on_hand or 0) - row.on_hand if counted else int(data.delta or 0)
        if row.on_hand + delta < row.reserved:
            field = "on_hand" if counted else "delta"
            raise Conflict(
                f"On-hand stock cannot fall below the {row.reserved} units reserved.",
                type="below-reserved",
                reserved=row.reserved,
                errors=[
                    {
                        "field": field,
                        "message": f"on hand would be {row.on_hand + delta}, below the "
                        f"{row.reserved} units reserved",
                        "code": "below_reserved",
                    }
                ],
            )
        if delta:
            await session.execute(
                update(stock)
                .where(stock.c.sku == sku, stock.c.warehouse_id == warehouse_id)
                .values(on_hand=stock.c.on_hand + delta, updated_at=now)
            )
            # A count corrects the books whichever way it goes; a positive delta is a delivery.
            receive = delta > 0 and not counted
            reason = MovementReason.RECEIVE if receive else MovementReason.ADJUST
            await _record(
                session,
                [
                    _movement(
                        sku,
                        warehouse_id,
                        on_hand=delta,
                        reason=reason,
                        actor=actor,
                        note=data.reason,
                        at=now,
                    )
                ],
            )
            await _announce(ctx, session, {sku: delta}, reason, None)
    await invalidate(ctx)
    return await availability(ctx, sku)


async def availability(ctx: ServiceContext, sku: str) -> Availability:
    """A SKU's stock per warehouse and in total."""
    async with ctx.db.read() as session:
        await _require_sku(session, sku)
        rows = (
            await session.execute(
                select(
                    stock.c.warehouse_id,
                    warehouses.c.code,
                    stock.c.on_hand,
                    stock.c.reserved,
                )
                .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
                .where(stock.c.sku == sku)
                .order_by(warehouses.c.priority, warehouses.c.code)
            )
        ).all()
    levels = [
        StockLevel(
            warehouse_id=r.warehouse_id,
            warehouse_code=r.code,
            on_hand=r.on_hand,
            reserved=r.reserved,
            available=domain.available(r.on_hand, r.reserved),
        )
        for r in rows
    ]
    on_hand = sum(level.on_hand for level in levels)
    reserved = sum(level.reserved for level in levels)
    return Availability(
        sku=sku,
        on_hand=on_hand,
        reserved=reserved,
        available=sum(level.available for level in levels),
        warehouses=levels,
    )


async def movements(
    ctx: ServiceContext, sku: str, *, cursor: str | None = None, limit: int = 50
) -> MovementPage:
    """A SKU's stock movements, newest first."""
    t = stock_movements
    statement = select(t).where(t.c.sku == sku)
    if cursor:
        statement = statement.where(t.c.position < decode_cursor(cursor, int)[0])
    async with ctx.db.read() as session:
        await _require_sku(session, sku)
        rows = (
            await session.execute(statement.order_by(t.c.position.desc()).limit(limit + 1))
        ).all()
    page = rows[:limit]
    return MovementPage(
        items=[StockMovement.model_validate(r._mapping) for r in page],
        next_cursor=encode_cursor(page[-1].position) if len(rows) > limit else None,
    )
