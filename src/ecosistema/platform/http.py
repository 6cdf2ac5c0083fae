"""The HTTP client services use to call each other.

A callee that cannot serve the call is the platform's fault, never the end user's, so the client
turns it into a problem the caller passes on as it is: a refused credential (401, 403) or a
server error (5xx) from the callee is a 502 ``dependency-failed``, and a callee that is down,
overloaded (503) or too slow is a 503 ``dependency-unavailable`` with ``Retry-After``. Both name
the service, so a log line or a problem document says which dependency broke. Other statuses
(404, 409, 422, ...) are answers about the request and reach the calling code unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import structlog

from ecosistema.platform.errors import ProblemError
from ecosistema.platform.telemetry import outgoing_headers

log = structlog.get_logger(__name__)

# A request extension: this call's 401 and 403 are answers the caller reads (asking identity
# whether a presented key is valid), not a failure of the platform's own credential.
AUTH_ERRORS_ARE_ANSWERS = "ecosistema.auth_errors_are_answers"
RETRY_AFTER_SECONDS = 5
_DETAIL_LIMIT = 200


class DependencyFailed(ProblemError, httpx.HTTPStatusError):
    """Another service refused the platform's call or failed on it (502).

    It is also an ``httpx.HTTPStatusError`` carrying the callee's request and response, so code
    that handled ``raise_for_status()`` errors keeps handling it."""

    status, type, title = 502, "dependency-failed", "A service this request needs failed"

    def __init__(
        self, detail: str, *, request: httpx.Request, response: httpx.Response, **extra: Any
    ) -> None:
        httpx.HTTPStatusError.__init__(self, detail, request=request, response=response)
        self.detail = detail
        self.headers = {}
        self.extra = extra


class DependencyUnavailable(ProblemError):
    """Another service could not be reached in time, or said it is unavailable (503)."""

    status, type, title = 503, "dependency-unavailable", "A service this request needs is down"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        super().__init__(detail, **kwargs)


async def _propagate_context(request: httpx.Request) -> None:
    for name, value in outgoing_headers().items():
        request.headers.setdefault(name, value)


def _callee_detail(body: bytes) -> str:
    """The callee's own problem detail, when it sent one, shortened for a log or a problem."""
    try:
        problem = json.loads(body)
    except ValueError:
        return ""
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        return str(problem["detail"])[:_DETAIL_LIMIT]
    return ""


class DependencyTransport(httpx.AsyncBaseTransport):
    """Wraps a transport so the callee's failures leave as ``DependencyFailed`` (502) or
    ``DependencyUnavailable`` (503) naming ``service``."""

    def __init__(self, service: str, inner: httpx.AsyncBaseTransport) -> None:
        self.service = service
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request; raise the dependency problem for a failure of the callee."""
        where = f"{request.method} {request.url.copy_with(query=None)}"
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            self._log(where, error=repr(exc))
            raise DependencyUnavailable(
                f"{self.service} did not answer in time; try again shortly.",
                service=self.service,
            ) from exc
        except httpx.TransportError as exc:
            self._log(where, error=repr(exc))
            raise DependencyUnavailable(
                f"{self.service} cannot be reached ({type(exc).__name__}); try again shortly.",
                service=self.service,
            ) from exc
        status = response.status_code
        auth_refused = status in (401, 403) and not request.extensions.get(AUTH_ERRORS_ARE_ANSWERS)
        if not (auth_refused or status >= 500):
            return response
        try:
            said = _callee_detail(await response.aread())
        finally:
            await response.aclose()
        self._log(where, status=status, callee_detail=said)
        if status == 503:
            raise DependencyUnavailable(
                f"{self.service} is unavailable; try again shortly.", service=self.service
            )
        if auth_refused:
            detail = (
                f"{self.service} refused the platform's own credential ({status}); the API key "
                f"for calls to {self.service} is missing or lacks a scope."
            )
        else:
            detail = f"{self.service} failed to answer ({status})."
        raise DependencyFailed(
            detail,
            request=request,
            response=response,
            service=self.service,
            dependency_status=status,
        )

    def _log(self, where: str, **fields: Any) -> None:
        log.warning("dependency_failed", service=self.service, call=where, **fields)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()


def service_client(
    base_url: str,
    *,
    credential: str | None = None,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
    service: str | None = None,
) -> httpx.AsyncClient:
    """A client for another service's API: its ``/api/v1`` base, the caller's credential, and
    the current request id and trace context on every call, so one trace spans services.

    The callee's 401, 403 and 5xx answers and connection failures raise ``DependencyFailed``
    or ``DependencyUnavailable`` naming ``service`` (the log line names the callee's address
    too)."""
    name = service or "a service this request needs"
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/api/v1",
        headers={"Authorization": f"Bearer {credential}"} if credential else {},
        timeout=timeout,
        transport=DependencyTransport(name, transport or httpx.AsyncHTTPTransport()),
        event_hooks={"request": [_propagate_context]},
    )
