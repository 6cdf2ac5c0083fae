"""How other services ask sales about a lead: in process, or over HTTP."""

from __future__ import annotations

from typing import Protocol

from ecosistema.platform.config import Settings
from ecosistema.platform.http import service_client
from ecosistema.platform.service import ServiceContext
from ecosistema.sales.schemas import Lead


class SalesClient(Protocol):
    """Sales' interface for other services."""

    async def get_lead(self, lead_id: str) -> Lead | None:
        """The lead with its score, or None."""
        ...


class InProcessSalesClient:
    """Calls sales' use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def get_lead(self, lead_id: str) -> Lead | None:
        """The lead with its score, or None."""
        from ecosistema.sales.service import find_lead

        return await find_lead(self._ctx, lead_id)


class HttpSalesClient:
    """Calls sales over HTTP; ``credential`` (an API key with ``leads:read_all``) authorises
    reading any lead."""

    def __init__(
        self, base_url: str, *, credential: str | None = None, timeout: float = 5.0
    ) -> None:
        self._http = service_client(
            base_url, credential=credential, timeout=timeout, service="sales"
        )

    async def get_lead(self, lead_id: str) -> Lead | None:
        """The lead with its score, or None."""
        response = await self._http.get(f"/leads/{lead_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return Lead.model_validate(response.json())

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def http_client(settings: Settings) -> HttpSalesClient:
    """The HTTP client the runtime uses when sales runs in another process."""
    if not settings.sales_url:
        raise LookupError("sales is not hosted here and ECOSISTEMA_SALES_URL is not set")
    return HttpSalesClient(settings.sales_url)
