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
from sqlalchemy import Integer, String, bindparam, func, or_, select, update

from ecosistema.catalog import domain
from ecosistema.catalog.domain import InsufficientStock, MovementReason, ReservationStatus
from ecosistema.catalog.models import (
    products,
    reservation_lines,
    reservations,
    stock,
    stock_movements,
    variants,
    warehouses,
)
from ecosistema.catalog.schemas import (
    Availability,
    AvailabilityList,
    MovementPage,
    StockAdjustment,
    StockLevel,
    StockMovement,
    VariantAvailability,
)
from ecosistema.catalog.service import insert_ignoring_conflicts, invalidate
from ecosistema.platform.db import DriverTransaction, new_id, utcnow
from ecosistema.platform.errors import Conflict, NotFound, Unprocessable, field_error
from ecosistema.platform.pagination import InvalidCursor, decode_cursor, encode_cursor
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

STOCK_CHANGED = "StockChanged"
STOCK_LOW = "StockLow"
SYSTEM_ACTOR = "system"
SKU_NOT_FOUND = "No variant with this SKU."
_ALLOCATION_ATTEMPTS = 3
MAX_RESERVATION_TTL_SECONDS = 7 * 24 * 3600


# Inventory's statements, built once: each is compiled once per database and run on the driver.
_LEVELS = (
    select(stock.c.warehouse_id, (stock.c.on_hand - stock.c.reserved).label("free"))
    .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
    .where(stock.c.sku == bindparam("sku"))
    .order_by(warehouses.c.priority, warehouses.c.code)
)
_AVAILABLE = select(
    func.coalesce(func.sum(stock.c.on_hand - stock.c.reserved), 0).label("available")
).where(stock.c.sku == bindparam("sku"))
_HELD_LINES = (
    select(reservation_lines)
    .select_from(
        reservation_lines.join(warehouses, warehouses.c.id == reservation_lines.c.warehouse_id)
    )
    .where(reservation_lines.c.order_id == bindparam("order_id"))
    .order_by(reservation_lines.c.sku, warehouses.c.priority, warehouses.c.code)
)
_STATUS = select(reservations.c.status).where(reservations.c.order_id == bindparam("order_id"))
# The guarded update: it happens only while the warehouse still has ``amount`` free, so two
# reservations can never both take the last units (see the module's docstring).
_TAKE = (
    update(stock)
    .where(
        stock.c.sku == bindparam("sku"),
        stock.c.warehouse_id == bindparam("warehouse_id"),
        stock.c.on_hand - stock.c.reserved >= bindparam("amount"),
    )
    .values(reserved=stock.c.reserved + bindparam("amount"), updated_at=bindparam("at"))
)
_SETTLE = (
    update(reservations)
    .where(
        reservations.c.order_id == bindparam("order_id"),
        reservations.c.status == ReservationStatus.ACTIVE.value,
    )
    .values(status=bindparam("to"), updated_at=bindparam("at"))
)
_SETTLE_EXPIRED = _SETTLE.where(reservations.c.expires_at <= bindparam("expired_before"))
_SETTLE_STOCK = (
    update(stock)
    .where(stock.c.sku == bindparam("sku"), stock.c.warehouse_id == bindparam("warehouse_id"))
    .values(
        on_hand=stock.c.on_hand - bindparam("shipped"),
        reserved=stock.c.reserved - bindparam("quantity"),
        updated_at=bindparam("at"),
    )
)
_ADD_ON_HAND = (
    update(stock)
    .where(stock.c.sku == bindparam("sku"), stock.c.warehouse_id == bindparam("warehouse_id"))
    .values(on_hand=stock.c.on_hand + bindparam("delta"), updated_at=bindparam("at"))
)


async def _levels(tx: DriverTransaction, sku: str) -> list[tuple[str, int]]:
    """``[(warehouse_id, available)]`` for a SKU in allocation order."""
    rows = await tx.rows(_LEVELS, sku=sku)
    return [(r["warehouse_id"], max(0, int(r["free"]))) for r in rows]


async def _available(tx: DriverTransaction, sku: str) -> int:
    total = await tx.scalar(_AVAILABLE, sku=sku)
    return max(0, int(total or 0))


async def _record(tx: DriverTransaction, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await tx.insert(stock_movements, rows)


def _movement(
    sku: str,
    warehouse_id: str,
    *,
    variant_id: str,
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
        "variant_id": variant_id,
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
    tx: DriverTransaction,
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
        after = known[sku] if known is not None and sku in known else await _available(tx, sku)
        before = after - changes[sku]
        await ctx.outbox.add(
            tx,
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
                tx, STOCK_LOW, {"sku": sku, "available": after, "threshold": threshold}
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
    async with ctx.db.driver_write() as tx:
        created = await insert_ignoring_conflicts(
            tx,
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
            status = await tx.scalar(_STATUS, order_id=order_id)
            if status == ReservationStatus.RELEASED:
                raise Conflict(
                    "This order's reservation was released; place the order again.",
                    type="reservation-released",
                )
            return
        variant_of = await _variants_of_lines(tx, lines)
        report: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        movements: list[dict[str, Any]] = []
        short = False
        after: dict[str, int] = {}
        for sku, quantity in merged:
            taken = await _take(
                tx, order_id, sku, variant_of[sku], quantity, now, held, movements, actor
            )
            after[sku] = await _available(tx, sku)
            report.append({"sku": sku, "requested": quantity, "available": after[sku] + taken})
            short = short or taken < quantity
        if short:
            # Raising rolls back every guarded update this transaction made.
            raise InsufficientStock(report)
        await tx.insert(reservation_lines, held)
        await _record(tx, movements)
        await _announce(
            ctx,
            tx,
            {sku: -q for sku, q in merged},
            MovementReason.RESERVE,
            order_id,
            known=after,
        )
    await invalidate(ctx)


async def _variants_of_lines(
    tx: DriverTransaction, lines: Sequence[tuple[str, int]]
) -> dict[str, str]:
    """Each line's SKU's variant id; a 422 naming each line whose SKU no variant has
    (``lines.N.sku``): an unknown SKU is a mistake in the request, not a shortage."""
    known = {
        sku: variant_id
        for sku in sorted({sku for sku, _ in lines})
        if (variant_id := await tx.scalar(_VARIANT_OF_SKU, sku=sku)) is not None
    }
    unknown = [(index, sku) for index, (sku, _) in enumerate(lines) if sku not in known]
    if unknown:
        raise Unprocessable(
            f"Unknown SKUs: {', '.join(sorted({sku for _, sku in unknown}))}.",
            errors=[
                {
                    "field": f"lines.{index}.sku",
                    "message": f"no variant has SKU {sku}",
                    "code": "not_found",
                }
                for index, sku in unknown
            ],
        )
    return known


async def _take(
    tx: DriverTransaction,
    order_id: str,
    sku: str,
    variant_id: str,
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
        plan = domain.allocate(remaining, await _levels(tx, sku))
        raced = False
        for warehouse_id, amount in plan:
            done = await tx.execute(
                _TAKE, sku=sku, warehouse_id=warehouse_id, amount=amount, at=now
            )
            if done != 1:
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
                variant_id=variant_id,
                reserved=amount,
                reason=MovementReason.RESERVE,
                actor=actor,
                reference=order_id,
                at=now,
            )
        )
    return quantity - remaining


async def _held_lines(tx: DriverTransaction, order_id: str) -> list[dict[str, Any]]:
    return await tx.rows(_HELD_LINES, order_id=order_id)


async def _settle(
    ctx: ServiceContext,
    tx: DriverTransaction,
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
    if only_expired_before is None:
        moved = await tx.execute(_SETTLE, order_id=order_id, to=to.value, at=now)
    else:
        moved = await tx.execute(
            _SETTLE_EXPIRED,
            order_id=order_id,
            to=to.value,
            at=now,
            expired_before=only_expired_before,
        )
    if moved != 1:
        return False
    lines = await _held_lines(tx, order_id)
    movements = []
    changes: dict[str, int] = {}
    variant_of: dict[str, str | None] = {}
    for line in lines:
        sku, warehouse_id, q = line["sku"], line["warehouse_id"], line["quantity"]
        if sku not in variant_of:
            variant_of[sku] = await tx.scalar(_VARIANT_OF_SKU, sku=sku)
            if variant_of[sku] is None:
                # A variant cannot be deleted while units of it are reserved; should its stock
                # be gone all the same, there is nothing left to move or to announce.
                log.warning("reserved_sku_without_variant", order_id=order_id, sku=sku)
        variant_id = variant_of[sku]
        if variant_id is None:
            continue
        shipped = q if to is ReservationStatus.COMMITTED else 0
        await tx.execute(
            _SETTLE_STOCK, sku=sku, warehouse_id=warehouse_id, shipped=shipped, quantity=q, at=now
        )
        movements.append(
            _movement(
                sku,
                warehouse_id,
                variant_id=variant_id,
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
            changes[sku] = changes.get(sku, 0) + q
    await _record(tx, movements)
    if to is ReservationStatus.RELEASED:
        await _announce(ctx, tx, changes, reason, order_id)
    else:
        await _announce(
            ctx, tx, {line["sku"]: 0 for line in lines if variant_of[line["sku"]]}, reason, order_id
        )
    return True


async def commit_reservation_in(
    ctx: ServiceContext, tx: DriverTransaction, order_id: str, *, actor: str = SYSTEM_ACTOR
) -> bool:
    """Turn an order's reservation into shipped-from-stock, in the caller's transaction."""
    done = await _settle(
        ctx,
        tx,
        order_id,
        to=ReservationStatus.COMMITTED,
        reason=MovementReason.COMMIT,
        actor=actor,
    )
    if not done:
        status = await tx.scalar(_STATUS, order_id=order_id)
        if status == ReservationStatus.RELEASED:
            log.warning("paid_order_reservation_already_released", order_id=order_id)
    return done


async def release_reservation_in(
    ctx: ServiceContext,
    tx: DriverTransaction,
    order_id: str,
    reason: str,
    *,
    actor: str = SYSTEM_ACTOR,
) -> bool:
    """Give an order's reserved stock back, in the caller's transaction."""
    return await _settle(
        ctx,
        tx,
        order_id,
        to=ReservationStatus.RELEASED,
        reason=MovementReason.RELEASE,
        actor=actor,
        note=reason[:500],
    )


async def commit_reservation(ctx: ServiceContext, order_id: str) -> None:
    """The order was paid: its reserved stock leaves on-hand for good (idempotent)."""
    async with ctx.db.driver_write() as tx:
        changed = await commit_reservation_in(ctx, tx, order_id)
    if changed:
        await invalidate(ctx)


async def release_reservation(ctx: ServiceContext, order_id: str, reason: str) -> None:
    """The order will not be paid: its reserved stock is available again (idempotent)."""
    async with ctx.db.driver_write() as tx:
        changed = await release_reservation_in(ctx, tx, order_id, reason)
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
        async with ctx.db.driver_write() as tx:
            if await _settle(
                ctx,
                tx,
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
    async with ctx.db.driver_read() as tx:
        status: str | None = await tx.scalar(_STATUS, order_id=order_id)
    return status


# --- restock and adjustments --------------------------------------------------------------------

# Where returned units with no reservation record go: the first warehouse holding the SKU, else
# the first warehouse. Units the order's reservation took go back where they came from.
_RESTOCK_WAREHOUSES = (
    select(stock.c.warehouse_id)
    .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
    .where(stock.c.sku == bindparam("sku"))
    .order_by(warehouses.c.priority, warehouses.c.code)
    .limit(1),
    select(warehouses.c.id).order_by(warehouses.c.priority, warehouses.c.code).limit(1),
)
_STATUS_LOCKED = _STATUS.with_for_update()
_COMMITTED_UNITS = (
    select(reservation_lines.c.sku, func.sum(reservation_lines.c.quantity).label("units"))
    .where(reservation_lines.c.order_id == bindparam("order_id"))
    .group_by(reservation_lines.c.sku)
)
_RESTOCKED_UNITS = (
    select(stock_movements.c.sku, func.sum(stock_movements.c.on_hand_delta).label("units"))
    .where(
        stock_movements.c.reference == bindparam("order_id"),
        stock_movements.c.reason == MovementReason.RESTOCK.value,
    )
    .group_by(stock_movements.c.sku)
)
_RESTOCKED_BY_WAREHOUSE = (
    select(
        stock_movements.c.sku,
        stock_movements.c.warehouse_id,
        func.sum(stock_movements.c.on_hand_delta).label("units"),
    )
    .where(
        stock_movements.c.reference == bindparam("order_id"),
        stock_movements.c.reason == MovementReason.RESTOCK.value,
    )
    .group_by(stock_movements.c.sku, stock_movements.c.warehouse_id)
)
_VARIANT_OF_SKU = select(variants.c.id).where(variants.c.sku == bindparam("sku"))
# Taken by every write that may create a stock row, before it touches stock: deleting a variant
# locks its row first (FOR UPDATE), so the two run one after the other and a write that comes
# second finds the variant gone (as an unknown SKU) or its stock in place (the delete refuses).
# Locks are taken in the order variant, then stock rows. KEY SHARE does not wait for edits of
# the variant's other columns; on SQLite writers are serialized anyway.
_VARIANT_OF_SKU_LOCKED = _VARIANT_OF_SKU.with_for_update(read=True, key_share=True)
# SKUs are case-sensitive; a miss names the SKU that differs only in case, a likely typo.
_SKU_OF_OTHER_CASE = (
    select(variants.c.sku)
    .where(func.lower(variants.c.sku) == func.lower(bindparam("sku", type_=String())))
    .order_by(variants.c.sku)
    .limit(1)
)
_WAREHOUSE_OF_CODE = select(warehouses.c.id).where(warehouses.c.code == bindparam("code"))
_LEVEL_LOCKED = (
    select(stock.c.on_hand, stock.c.reserved)
    .where(stock.c.sku == bindparam("sku"), stock.c.warehouse_id == bindparam("warehouse_id"))
    .with_for_update()
)
_WAREHOUSE_LEVELS = (
    select(stock.c.warehouse_id, warehouses.c.code, stock.c.on_hand, stock.c.reserved)
    .select_from(stock.join(warehouses, warehouses.c.id == stock.c.warehouse_id))
    .where(stock.c.sku == bindparam("sku"))
    .order_by(warehouses.c.priority, warehouses.c.code)
)
# A SKU's movements are its variant's: those of a deleted variant that had the SKU are not shown.
# A movement with no variant (written by a catalog older than the column, during an upgrade)
# counts as the variant's that has the SKU now, as the migration read the older ones.
_MOVEMENTS = (
    select(stock_movements)
    .where(
        stock_movements.c.sku == bindparam("sku"),
        or_(
            stock_movements.c.variant_id == bindparam("variant_id"),
            stock_movements.c.variant_id.is_(None),
        ),
    )
    .order_by(stock_movements.c.position.desc())
    .limit(bindparam("limit", type_=Integer))
)
_MOVEMENTS_BEFORE = _MOVEMENTS.where(stock_movements.c.position < bindparam("before"))


async def _default_warehouse(tx: DriverTransaction, sku: str) -> str:
    """Where returned units of ``sku`` with no reservation record go (``_RESTOCK_WAREHOUSES``)."""
    for statement in _RESTOCK_WAREHOUSES:
        found: str | None = await tx.scalar(statement, sku=sku)
        if found is not None:
            return found
    raise Conflict("There is no warehouse to restock into.", type="no-warehouse")


async def _ensure_stock_row(tx: DriverTransaction, sku: str, warehouse_id: str) -> None:
    await insert_ignoring_conflicts(
        tx,
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


async def _restockable(tx: DriverTransaction, order_id: str) -> dict[str, int]:
    """Per SKU, the units of an order's committed reservation not restocked yet.

    Raises 404 when catalog holds no reservation for the order, 409 when it was never committed
    (nothing left stock, so nothing can come back). The reservation row is locked so two
    restocks of one order are counted one after the other."""
    status = await tx.scalar(_STATUS_LOCKED, order_id=order_id)
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
    committed = {r["sku"]: r["units"] for r in await tx.rows(_COMMITTED_UNITS, order_id=order_id)}
    restocked = {r["sku"]: r["units"] for r in await tx.rows(_RESTOCKED_UNITS, order_id=order_id)}
    return {
        sku: max(0, int(units) - int(restocked.get(sku) or 0)) for sku, units in committed.items()
    }


async def _returnable_by_warehouse(
    tx: DriverTransaction, order_id: str
) -> dict[str, list[tuple[str, int]]]:
    """Per SKU, ``[(warehouse_id, units)]``: what the order's reservation took from each
    warehouse less what restocks of the order already put back there, in allocation order.

    Call it after ``_restockable``, which locks the reservation, so concurrent restocks of one
    order count each other's movements."""
    returned = {
        (r["sku"], r["warehouse_id"]): int(r["units"] or 0)
        for r in await tx.rows(_RESTOCKED_BY_WAREHOUSE, order_id=order_id)
    }
    out: dict[str, list[tuple[str, int]]] = {}
    for line in await _held_lines(tx, order_id):
        sku, warehouse_id = line["sku"], line["warehouse_id"]
        left = int(line["quantity"]) - returned.get((sku, warehouse_id), 0)
        out.setdefault(sku, []).append((warehouse_id, max(0, left)))
    return out


def _split_restock(
    quantity: int, returnable: Sequence[tuple[str, int]]
) -> list[tuple[str | None, int]]:
    """``quantity`` units over the warehouses they came from, none getting more than it has
    left to take back; a remainder (units with no reservation record) is paired with ``None``."""
    out: list[tuple[str | None, int]] = []
    left = quantity
    for warehouse_id, room in returnable:
        if left <= 0:
            break
        units = min(left, room)
        if units > 0:
            out.append((warehouse_id, units))
            left -= units
    if left > 0:
        out.append((None, left))
    return out


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


_RESERVED_VARIANTS = (
    select(stock_movements.c.variant_id)
    .where(
        stock_movements.c.reference == bindparam("order_id"),
        stock_movements.c.reason == MovementReason.RESERVE.value,
        stock_movements.c.sku == bindparam("sku"),
    )
    .distinct()
)


async def _order_variants(
    tx: DriverTransaction, order_id: str, merged: Sequence[tuple[str, int]]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The variant of each SKU to restock, and the SKUs whose order's variant is gone, each
    with why in words and as a code: no variant has the SKU any more, or the order's was
    deleted and another made with its SKU since (that one's stock is not the order's)."""
    found: dict[str, str] = {}
    gone: dict[str, tuple[str, str]] = {}
    for sku, _ in merged:
        variant_id = await tx.scalar(_VARIANT_OF_SKU_LOCKED, sku=sku)
        if variant_id is None:
            gone[sku] = (f"no variant has SKU {sku} any more", "not_found")
            continue
        # A reservation with no variant recorded (made by a catalog older than the column,
        # during an upgrade) is taken to be of the variant that has the SKU now.
        reserved = {
            r["variant_id"] for r in await tx.rows(_RESERVED_VARIANTS, order_id=order_id, sku=sku)
        } - {None}
        if reserved and variant_id not in reserved:
            gone[sku] = (
                f"the order's variant with SKU {sku} was deleted; the SKU names another one now",
                "variant_replaced",
            )
            continue
        found[sku] = variant_id
    return found, gone


def _gone_refusal(
    lines: Sequence[tuple[str, int]], gone: dict[str, tuple[str, str]]
) -> Unprocessable:
    """A 422 naming each line whose SKU's variant (the order's) no longer exists."""
    return Unprocessable(
        "The order's variants of these SKUs no longer exist: " + ", ".join(sorted(gone)) + ".",
        errors=[
            {"field": f"lines.{index}.sku", "message": gone[sku][0], "code": gone[sku][1]}
            for index, (sku, _) in enumerate(lines)
            if sku in gone
        ],
    )


async def restock_in(
    ctx: ServiceContext,
    tx: DriverTransaction,
    order_id: str,
    lines: Sequence[tuple[str, int]],
    reason: str,
    *,
    actor: str = SYSTEM_ACTOR,
    strict: bool = True,
) -> None:
    """Put returned units back on hand where the order took them from, in the caller's
    transaction.

    Only units the order took from stock (its committed reservation) and has not had restocked
    yet can come back. ``strict`` refuses anything beyond that (404/409); otherwise (an event
    that has already happened elsewhere) the excess is left out and logged."""
    now = utcnow()
    merged = domain.merge_lines(lines)
    try:
        allowed = await _restockable(tx, order_id)
    except (NotFound, Conflict):
        if strict:
            raise
        log.warning("restock_without_committed_reservation", order_id=order_id)
        return
    variant_of, gone = await _order_variants(tx, order_id, merged)
    if gone:
        if strict:
            raise _gone_refusal(lines, gone)
        # The units belong to a variant that no longer exists: nothing holds their stock now.
        for sku, (message, _) in gone.items():
            log.warning(
                "restock_of_deleted_variant_skipped",
                order_id=order_id,
                sku=sku,
                quantity=dict(merged)[sku],
                why=message,
            )
        lines = [(sku, q) for sku, q in lines if sku not in gone]
        merged = [(sku, q) for sku, q in merged if sku not in gone]
    refused = _over_restock(lines, merged, allowed)
    if refused is not None:
        if strict:
            raise refused
        log.warning("restock_capped", order_id=order_id, lines=refused.extra["lines"])
        merged = [(sku, min(q, allowed.get(sku, 0))) for sku, q in merged]
    returnable = await _returnable_by_warehouse(tx, order_id)
    movements = []
    changes: dict[str, int] = {}
    for sku, quantity in merged:
        if quantity <= 0:
            continue
        for came_from, units in _split_restock(quantity, returnable.get(sku, [])):
            warehouse_id = came_from or await _default_warehouse(tx, sku)
            await _ensure_stock_row(tx, sku, warehouse_id)
            await tx.execute(_ADD_ON_HAND, sku=sku, warehouse_id=warehouse_id, delta=units, at=now)
            movements.append(
                _movement(
                    sku,
                    warehouse_id,
                    variant_id=variant_of[sku],
                    on_hand=units,
                    reason=MovementReason.RESTOCK,
                    actor=actor,
                    reference=order_id,
                    note=reason[:500],
                    at=now,
                )
            )
        changes[sku] = quantity
    await _record(tx, movements)
    if changes:
        await _announce(ctx, tx, changes, MovementReason.RESTOCK, order_id)


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
    async with ctx.db.driver_write() as tx:
        await restock_in(ctx, tx, order_id, lines, reason, actor=actor)
    await invalidate(ctx)


async def _require_sku(tx: DriverTransaction, sku: str, *, lock: bool = False) -> str:
    """The id of the variant with this SKU (404 when none has it); ``lock`` keeps the variant
    from being deleted until the (write) transaction ends."""
    variant_id: str | None = await tx.scalar(
        _VARIANT_OF_SKU_LOCKED if lock else _VARIANT_OF_SKU, sku=sku
    )
    if variant_id is None:
        other = await tx.scalar(_SKU_OF_OTHER_CASE, sku=sku)
        if other is not None:
            raise NotFound(f"{SKU_NOT_FOUND} SKUs are case-sensitive: {other} exists.")
        raise NotFound(SKU_NOT_FOUND)
    return variant_id


async def adjust_stock(
    ctx: ServiceContext, sku: str, data: StockAdjustment, *, actor: str
) -> Availability:
    """Change on-hand stock after a delivery, a count or a loss; never below what is reserved."""
    now = utcnow()
    async with ctx.db.driver_write() as tx:
        variant_id = await _require_sku(tx, sku, lock=True)
        warehouse_id = await tx.scalar(_WAREHOUSE_OF_CODE, code=data.warehouse)
        if warehouse_id is None:
            raise field_error("warehouse", "no warehouse with this code", "not_found")
        await _ensure_stock_row(tx, sku, warehouse_id)
        row = await tx.row(_LEVEL_LOCKED, sku=sku, warehouse_id=warehouse_id)
        if row is None:  # not expected while the variant is locked; never a 500
            raise NotFound(SKU_NOT_FOUND)
        on_hand, reserved = int(row["on_hand"]), int(row["reserved"])
        counted = data.delta is None
        delta = int(data.on_hand or 0) - on_hand if counted else int(data.delta or 0)
        if on_hand + delta < reserved:
            field = "on_hand" if counted else "delta"
            raise Conflict(
                f"On-hand stock cannot fall below the {reserved} units reserved.",
                type="below-reserved",
                reserved=reserved,
                errors=[
                    {
                        "field": field,
                        "message": f"on hand would be {on_hand + delta}, below the "
                        f"{reserved} units reserved",
                        "code": "below_reserved",
                    }
                ],
            )
        if delta:
            await tx.execute(_ADD_ON_HAND, sku=sku, warehouse_id=warehouse_id, delta=delta, at=now)
            # A count corrects the books whichever way it goes; a positive delta is a delivery.
            receive = delta > 0 and not counted
            reason = MovementReason.RECEIVE if receive else MovementReason.ADJUST
            await _record(
                tx,
                [
                    _movement(
                        sku,
                        warehouse_id,
                        variant_id=variant_id,
                        on_hand=delta,
                        reason=reason,
                        actor=actor,
                        note=data.reason,
                        at=now,
                    )
                ],
            )
            await _announce(ctx, tx, {sku: delta}, reason, None)
    await invalidate(ctx)
    return await availability(ctx, sku)


async def availability(ctx: ServiceContext, sku: str) -> Availability:
    """A SKU's stock per warehouse and in total."""
    async with ctx.db.driver_read() as tx:
        await _require_sku(tx, sku)
        rows = await tx.rows(_WAREHOUSE_LEVELS, sku=sku)
    levels = [
        StockLevel(
            warehouse_id=r["warehouse_id"],
            warehouse_code=r["code"],
            on_hand=r["on_hand"],
            reserved=r["reserved"],
            available=domain.available(r["on_hand"], r["reserved"]),
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


async def shopper_availability(ctx: ServiceContext, skus: Sequence[str]) -> AvailabilityList:
    """How many units of each SKU can be bought now, for SKUs of active products (others are
    left out, so drafts and archived products reveal nothing); one statement for them all."""
    wanted = list(dict.fromkeys(skus))
    query = (
        select(
            variants.c.sku,
            func.coalesce(func.sum(stock.c.on_hand - stock.c.reserved), 0).label("available"),
        )
        .select_from(
            variants.join(products, products.c.id == variants.c.product_id).outerjoin(
                stock, stock.c.sku == variants.c.sku
            )
        )
        .where(
            variants.c.sku.in_(wanted),
            products.c.status == domain.ProductStatus.ACTIVE.value,
        )
        .group_by(variants.c.sku)
    )
    async with ctx.db.read() as session:
        found = {sku: max(0, int(units)) for sku, units in (await session.execute(query)).all()}
    return AvailabilityList(
        items=[
            VariantAvailability(sku=sku, available=found[sku], in_stock=found[sku] > 0)
            for sku in wanted
            if sku in found
        ]
    )


async def movements(
    ctx: ServiceContext, sku: str, *, cursor: str | None = None, limit: int = 50
) -> MovementPage:
    """A SKU's stock movements, newest first. A page's cursor carries its SKU: it pages on
    through that SKU's movements only (422 at ``cursor`` on another SKU's)."""
    before = None
    if cursor:
        cursor_sku, before = decode_cursor(cursor, str, int)
        if cursor_sku != sku:
            raise InvalidCursor("The cursor belongs to another SKU's movements.")
    async with ctx.db.driver_read() as tx:
        variant_id = await _require_sku(tx, sku)
        if before is None:
            rows = await tx.rows(_MOVEMENTS, sku=sku, variant_id=variant_id, limit=limit + 1)
        else:
            rows = await tx.rows(
                _MOVEMENTS_BEFORE, sku=sku, variant_id=variant_id, before=before, limit=limit + 1
            )
    page = rows[:limit]
    return MovementPage(
        items=[StockMovement.model_validate(r) for r in page],
        next_cursor=encode_cursor(sku, page[-1]["position"]) if len(rows) > limit else None,
    )
