"""How other services ask orders about an order: in process, or over HTTP."""

from __future__ import annotations

from typing import Protocol

from ecosistema.orders.schemas import OrderSummary
from ecosistema.orders.service import get_order_summary
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import NotFound
from ecosistema.platform.http import service_client
from ecosistema.platform.service import ServiceContext


class OrdersClient(Protocol):
    """Orders' interface for other services."""

    async def get_order(self, order_id: str) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order."""
        ...


class InProcessOrdersClient:
    """Calls orders' use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def get_order(self, order_id: str) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order."""
        return await get_order_summary(self._ctx, order_id=order_id)


class HttpOrdersClient:
    """Calls orders over HTTP; ``credential`` (an API key with ``orders:read_all``) authorises
    reading any order."""

    def __init__(
        self, base_url: str, *, credential: str | None = None, timeout: float = 5.0
    ) -> None:
        self._http = service_client(
            base_url, credential=credential, timeout=timeout, service="orders"
        )

    async def get_order(self, order_id: str) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order."""
        response = await self._http.get(f"/orders/{order_id}")
        if response.status_code == 404:
            raise NotFound("No order with this id.")
        response.raise_for_status()
        return OrderSummary.model_validate(response.json())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def http_client(settings: Settings) -> HttpOrdersClient:
    """The HTTP client the runtime uses when orders runs in another process."""
    if not settings.orders_url:
        raise LookupError("orders is not hosted here and ECOSISTEMA_ORDERS_URL is not set")
    key = settings.orders_api_key
    return HttpOrdersClient(settings.orders_url, credential=key.get_secret_value() if key else None)
