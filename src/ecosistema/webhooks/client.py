"""How other services (and operators' tools) ask webhooks about deliveries: in process, or
over HTTP with a staff API key."""

from __future__ import annotations

from typing import Protocol

from ecosistema.platform.config import Settings
from ecosistema.platform.errors import NotFound
from ecosistema.platform.http import service_client
from ecosistema.platform.service import ServiceContext
from ecosistema.webhooks import service
from ecosistema.webhooks.schemas import DeliveryDetail, DeliveryPage


class WebhooksClient(Protocol):
    """Webhooks' interface for other services."""

    async def deliveries_of_event(self, event_id: str) -> DeliveryPage:
        """Every delivery (to any subscription) of one bus event, newest first."""
        ...

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """A delivery with its attempts; ``NotFound`` if there is none."""
        ...


class InProcessWebhooksClient:
    """Calls webhooks' use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def deliveries_of_event(self, event_id: str) -> DeliveryPage:
        """Every delivery (to any subscription) of one bus event, newest first."""
        return await service.list_deliveries(self._ctx, event_id=event_id, limit=100)

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """A delivery with its attempts; ``NotFound`` if there is none."""
        return await service.get_delivery(self._ctx, delivery_id=delivery_id)


class HttpWebhooksClient:
    """Calls webhooks over HTTP; ``credential`` is an API key whose creator may manage
    webhooks (staff or admin)."""

    def __init__(
        self, base_url: str, *, credential: str | None = None, timeout: float = 5.0
    ) -> None:
        self._http = service_client(base_url, credential=credential, timeout=timeout)

    async def deliveries_of_event(self, event_id: str) -> DeliveryPage:
        """Every delivery (to any subscription) of one bus event, newest first."""
        response = await self._http.get(
            "/webhook-deliveries", params={"event_id": event_id, "limit": 100}
        )
        response.raise_for_status()
        return DeliveryPage.model_validate(response.json())

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """A delivery with its attempts; ``NotFound`` if there is none."""
        response = await self._http.get(f"/webhook-deliveries/{delivery_id}")
        if response.status_code == 404:
            raise NotFound(service.DELIVERY_NOT_FOUND)
        response.raise_for_status()
        return DeliveryDetail.model_validate(response.json())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def http_client(settings: Settings) -> HttpWebhooksClient:
    """The HTTP client the runtime would use when webhooks runs elsewhere: through the public
    URL (the gateway), which needs a staff credential, so callers build it themselves."""
    raise LookupError(
        "webhooks is not hosted here; build HttpWebhooksClient(base_url, credential=...) "
        f"with a staff API key (public URL: {settings.public_url})"
    )
