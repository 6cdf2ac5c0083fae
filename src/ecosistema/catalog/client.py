"""How other services ask catalog for prices and stock: one protocol, in process or over HTTP.

Orders calls ``quote`` to price a cart and ``reserve`` at checkout; payments and orders events
drive ``commit_reservation``, ``release_reservation`` and ``restock``. Commit and release are
idempotent, so a direct call and an event for the same order do no harm; a restock is capped at
the units the order took from stock and has not had restocked yet (beyond that, 409).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import httpx

from ecosistema.catalog import inventory, service
from ecosistema.catalog.domain import InsufficientStock
from ecosistema.catalog.schemas import VariantQuote
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import ProblemError
from ecosistema.platform.http import RETRY_SAFE, service_client
from ecosistema.platform.idempotency import request_fingerprint
from ecosistema.platform.service import ServiceContext

# Quotes only read, reservations are idempotent per order id, and a restock carries an
# Idempotency-Key made of its content: a call lost with a catalog instance may be sent again
# to another.
_ONCE = {RETRY_SAFE: True}

__all__ = [
    "CatalogClient",
    "HttpCatalogClient",
    "InProcessCatalogClient",
    "InsufficientStock",
    "http_client",
]


class CatalogClient(Protocol):
    """Catalog's interface for other services."""

    async def quote(
        self,
        skus: list[str],
        *,
        currency: str,
        customer_id: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, VariantQuote]:
        """Price and availability per known SKU for this customer; unknown SKUs are absent."""
        ...

    async def reserve(
        self,
        order_id: str,
        lines: list[tuple[str, int]],
        ttl_seconds: int,
        *,
        actor: str | None = None,
    ) -> None:
        """Hold stock for an order, all lines or none; raises ``InsufficientStock`` (409).
        ``actor`` is who the movements name (the buyer at checkout); left out, the caller."""
        ...

    async def commit_reservation(self, order_id: str) -> None:
        """The order was paid: reserved stock leaves for good (idempotent)."""
        ...

    async def release_reservation(self, order_id: str, reason: str) -> None:
        """The order will not be paid: reserved stock is free again (idempotent)."""
        ...

    async def restock(self, order_id: str, lines: list[tuple[str, int]], reason: str) -> None:
        """Refunded units go back on hand."""
        ...


class InProcessCatalogClient:
    """Calls catalog's use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def quote(
        self,
        skus: Sequence[str],
        *,
        currency: str,
        customer_id: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, VariantQuote]:
        """Price and availability per known SKU for this customer; unknown SKUs are absent.

        As a service over HTTP (which holds ``catalog:write``), the caller sees drafts: a
        draft's line is quoted as not purchasable (reason ``draft``), not as unknown."""
        return await service.quote(
            self._ctx, skus, currency=currency, customer_id=customer_id, at=at, staff=True
        )

    async def reserve(
        self,
        order_id: str,
        lines: Sequence[tuple[str, int]],
        ttl_seconds: int,
        *,
        actor: str | None = None,
    ) -> None:
        """Hold stock for an order, all lines or none; raises ``InsufficientStock`` (409).
        ``actor`` is who the movements name (the buyer at checkout); left out, ``system``."""
        await inventory.reserve(
            self._ctx, order_id, lines, ttl_seconds, actor=actor or inventory.SYSTEM_ACTOR
        )

    async def commit_reservation(self, order_id: str) -> None:
        """The order was paid: reserved stock leaves for good (idempotent)."""
        await inventory.commit_reservation(self._ctx, order_id)

    async def release_reservation(self, order_id: str, reason: str) -> None:
        """The order will not be paid: reserved stock is free again (idempotent)."""
        await inventory.release_reservation(self._ctx, order_id, reason)

    async def restock(self, order_id: str, lines: Sequence[tuple[str, int]], reason: str) -> None:
        """Refunded units go back on hand."""
        await inventory.restock(self._ctx, order_id, lines, reason)


class HttpCatalogClient:
    """Calls catalog over HTTP; ``credential`` (an API key with ``inventory:write`` and
    ``catalog:write``) authorises reservations and quotes for any customer."""

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = service_client(
            base_url, credential=credential, timeout=timeout, transport=transport, service="catalog"
        )

    async def quote(
        self,
        skus: Sequence[str],
        *,
        currency: str,
        customer_id: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, VariantQuote]:
        """Price and availability per known SKU for this customer; unknown SKUs are absent."""
        body = {
            "skus": list(skus),
            "currency": currency,
            "customer_id": customer_id,
            "at": at.isoformat() if at else None,
        }
        response = await self._http.post("/quotes", json=body, extensions=_ONCE)
        _raise_for_problem(response)
        return {sku: VariantQuote.model_validate(q) for sku, q in response.json().items()}

    async def reserve(
        self,
        order_id: str,
        lines: Sequence[tuple[str, int]],
        ttl_seconds: int,
        *,
        actor: str | None = None,
    ) -> None:
        """Hold stock for an order, all lines or none; raises ``InsufficientStock`` (409).
        ``actor`` is who the movements name (the buyer at checkout); left out, the credential's
        holder."""
        body: dict[str, Any] = {
            "order_id": order_id,
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
            "ttl_seconds": ttl_seconds,
        }
        if actor is not None:
            body["actor"] = actor
        _raise_for_problem(await self._http.post("/reservations", json=body, extensions=_ONCE))

    async def commit_reservation(self, order_id: str) -> None:
        """The order was paid: reserved stock leaves for good (idempotent)."""
        response = await self._http.post(f"/reservations/{order_id}/commit", extensions=_ONCE)
        _raise_for_problem(response)

    async def release_reservation(self, order_id: str, reason: str) -> None:
        """The order will not be paid: reserved stock is free again (idempotent)."""
        response = await self._http.post(
            f"/reservations/{order_id}/release", json={"reason": reason}, extensions=_ONCE
        )
        _raise_for_problem(response)

    async def restock(self, order_id: str, lines: Sequence[tuple[str, int]], reason: str) -> None:
        """Refunded units go back on hand."""
        body = {
            "order_id": order_id,
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
            "reason": reason,
        }
        # The same restock sent again (a retry after a lost answer) replays the first answer.
        key = "restock-" + request_fingerprint("POST", "/restocks", body)
        response = await self._http.post(
            "/restocks", json=body, headers={"Idempotency-Key": key}, extensions=_ONCE
        )
        _raise_for_problem(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def _raise_for_problem(response: httpx.Response) -> None:
    """Turn catalog's problem+json back into the error it was, so callers see no difference."""
    if response.is_success:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
    if response.status_code == 409 and kind == InsufficientStock.type:
        raise InsufficientStock(problem.get("lines") or [], detail=problem.get("detail"))
    raise ProblemError(
        str(problem.get("detail") or f"catalog answered {response.status_code}"),
        type=kind or "catalog-error",
        title=str(problem.get("title") or "Catalog error"),
        status=response.status_code,
    )


def http_client(settings: Settings) -> HttpCatalogClient:
    """The HTTP client the runtime uses when catalog runs in another process."""
    if not settings.catalog_url:
        raise LookupError("catalog is not hosted here and ECOSISTEMA_CATALOG_URL is not set")
    key = settings.catalog_api_key
    return HttpCatalogClient(
        settings.catalog_url, credential=key.get_secret_value() if key else None
    )
