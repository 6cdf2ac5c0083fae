"""How other services ask orders about an order: in process, or over HTTP."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from ecosistema.orders.api import CART_TOKEN_HEADER
from ecosistema.orders.schemas import OrderSummary
from ecosistema.orders.service import ORDER_NOT_FOUND, get_order, get_order_summary
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import NotFound
from ecosistema.platform.http import service_client
from ecosistema.platform.service import ServiceContext


class OrdersClient(Protocol):
    """Orders' interface for other services."""

    async def get_order(self, order_id: str, *, cart_token: str | None = None) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order.

        With ``cart_token``, the order only as the guest holding that token may read it: a
        guest order placed from the cart with that token, else ``NotFound`` as for a missing id.
        """
        ...


class InProcessOrdersClient:
    """Calls orders' use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def get_order(self, order_id: str, *, cart_token: str | None = None) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order (or,
        with ``cart_token``, if that guest may not read it)."""
        if cart_token is not None:
            return await get_order(
                self._ctx, order_id=order_id, principal=None, token=cart_token, check_access=True
            )
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

    async def get_order(self, order_id: str, *, cart_token: str | None = None) -> OrderSummary:
        """The order's amounts, buyer and lines; ``NotFound`` if there is no such order (or,
        with ``cart_token``, if that guest may not read it)."""
        request = self._http.build_request("GET", f"/orders/{quote(order_id, safe='')}")
        if cart_token is not None:
            # Asked as the guest: the service credential would reach every order, so it stays
            # behind and orders checks the cart token as it does for the guest's own requests.
            request.headers.pop("Authorization", None)
            request.headers[CART_TOKEN_HEADER] = cart_token
        response = await self._http.send(request)
        # 422: an id orders could never have issued (too long).
        if response.status_code in (404, 422):
            raise NotFound(ORDER_NOT_FOUND)
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
