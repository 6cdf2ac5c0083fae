"""The HTTP client services use to call each other."""

from __future__ import annotations

import httpx

from ecosistema.platform.telemetry import outgoing_headers


async def _propagate_context(request: httpx.Request) -> None:
    for name, value in outgoing_headers().items():
        request.headers.setdefault(name, value)


def service_client(
    base_url: str,
    *,
    credential: str | None = None,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client for another service's API: its ``/api/v1`` base, the caller's credential, and
    the current request id and trace context on every call, so one trace spans services."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/api/v1",
        headers={"Authorization": f"Bearer {credential}"} if credential else {},
        timeout=timeout,
        transport=transport,
        event_hooks={"request": [_propagate_context]},
    )
