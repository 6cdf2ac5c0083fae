"""How other services ask payments about payments: in process, or over HTTP."""

from __future__ import annotations

from typing import Protocol

from ecosistema.payments.schemas import Payment, PaymentPage
from ecosistema.platform.auth import Principal
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import NotFound
from ecosistema.platform.http import service_client
from ecosistema.platform.service import ServiceContext

_SYSTEM = Principal(
    subject="system:payments-client",
    kind="api_key",
    role="admin",
    permissions=frozenset({"payments:read_all"}),
)


class PaymentsClient(Protocol):
    """Payments' interface for other services."""

    async def get_payment(self, payment_id: str) -> Payment:
        """The payment with this id; raises ``NotFound``."""
        ...

    async def payments_for_order(self, order_id: str) -> list[Payment]:
        """Every payment made for an order, newest first."""
        ...


class InProcessPaymentsClient:
    """Calls payments' use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def get_payment(self, payment_id: str) -> Payment:
        """The payment with this id; raises ``NotFound``."""
        from ecosistema.payments.service import get_payment

        return await get_payment(self._ctx, principal=_SYSTEM, payment_id=payment_id)

    async def payments_for_order(self, order_id: str) -> list[Payment]:
        """Every payment made for an order, newest first."""
        from ecosistema.payments.service import list_payments

        page = await list_payments(self._ctx, principal=_SYSTEM, order_id=order_id, limit=100)
        return page.items


class HttpPaymentsClient:
    """Calls payments over HTTP with a credential holding ``payments:read_all``."""

    def __init__(
        self, base_url: str, *, credential: str | None = None, timeout: float = 5.0
    ) -> None:
        self._http = service_client(
            base_url, credential=credential, timeout=timeout, service="payments"
        )

    async def get_payment(self, payment_id: str) -> Payment:
        """The payment with this id; raises ``NotFound``."""
        response = await self._http.get(f"/payments/{payment_id}")
        if response.status_code == 404:
            raise NotFound("No payment with this id.")
        response.raise_for_status()
        return Payment.model_validate(response.json())

    async def payments_for_order(self, order_id: str) -> list[Payment]:
        """Every payment made for an order, newest first."""
        response = await self._http.get("/payments", params={"order_id": order_id, "limit": 100})
        response.raise_for_status()
        return PaymentPage.model_validate(response.json()).items

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def http_client(settings: Settings) -> HttpPaymentsClient:
    """The HTTP client the runtime uses when payments runs in another process."""
    if not settings.payments_url:
        raise LookupError("payments is not hosted here and ECOSISTEMA_PAYMENTS_URL is not set")
    return HttpPaymentsClient(settings.payments_url)
