"""The HTTP client services use to call each other.

A callee that cannot serve the call is the platform's fault, never the end user's, so the client
turns it into a problem the caller passes on as it is: a refused credential (401, 403) or a
server error (5xx) from the callee is a 502 ``dependency-failed``, and a callee that is down,
overloaded (503) or too slow is a 503 ``dependency-unavailable`` with ``Retry-After``. Both name
the service, so a log line or a problem document says which dependency broke. Other statuses
(404, 409, 422, ...) are answers about the request and reach the calling code unchanged.

A service running as several replicas is called through all of them: the base URL is a
comma-separated list, and ``platform.balancing`` picks the instance of each attempt. A call is
sent again to another instance when the failure guarantees the callee did not process it (the
connection was refused or not made in time: any method), and, for idempotent calls (GET, HEAD,
PUT, DELETE, OPTIONS, or any method carrying an ``Idempotency-Key``), also when the connection
was lost before an answer. Anything else (a timeout waiting for the answer, a non-idempotent call
cut off) is the 503 it was, since the callee may have acted on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import httpx
import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ecosistema.platform.balancing import ServiceInstance, ServiceInstances, base_urls
from ecosistema.platform.errors import ProblemError
from ecosistema.platform.telemetry import outgoing_headers

log = structlog.get_logger(__name__)

# A request extension: this call's 401 and 403 are answers the caller reads (asking identity
# whether a presented key is valid), not a failure of the platform's own credential.
AUTH_ERRORS_ARE_ANSWERS = "ecosistema.auth_errors_are_answers"
# A response extension: the base URL of the instance that answered.
INSTANCE = "ecosistema.instance"
# A request extension: the callee applies this call at most once whatever its method (a
# reservation keyed by its order id, a quote that only reads), so it may go to another instance
# when the connection is lost before an answer.
RETRY_SAFE = "ecosistema.retry_safe"
RETRY_AFTER_SECONDS = 5
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
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
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException as exc:
            # After the attempts, the request's URL is that of the last instance tried.
            where = f"{request.method} {request.url.copy_with(query=None)}"
            self._log(where, error=repr(exc))
            raise DependencyUnavailable(
                f"{self.service} did not answer in time; try again shortly.",
                service=self.service,
            ) from exc
        except httpx.TransportError as exc:
            where = f"{request.method} {request.url.copy_with(query=None)}"
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
        where = f"{request.method} {request.url.copy_with(query=None)}"
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


class _Tracked(httpx.AsyncByteStream):
    """A response body that tells when it is done with, so the instance's outstanding count
    covers the whole exchange."""

    def __init__(self, stream: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


def _failure_kind(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect_failed"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "reset"
    return "error"


def _idempotent(request: httpx.Request) -> bool:
    return (
        request.method in IDEMPOTENT_METHODS
        or "idempotency-key" in request.headers
        or bool(request.extensions.get(RETRY_SAFE))
    )


class BalancingTransport(httpx.AsyncBaseTransport):
    """Sends each request to one of a service's instances (``ServiceInstances`` chooses),
    ejecting an instance that refuses connections or times out, and sending a request again
    to another instance when the failure left it unprocessed (see the module's docstring).

    Requests are written against the first instance's base URL; a request for any other
    address passes through unbalanced."""

    def __init__(self, instances: ServiceInstances, inner: httpx.AsyncBaseTransport) -> None:
        self.instances = instances
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request to an instance, and to others while a retry is safe."""
        pool = self.instances
        original = request.url
        # A body already in memory can be sent again; a streamed one cannot.
        replayable = isinstance(request.stream, httpx.ByteStream)
        tried: list[ServiceInstance] = []
        while True:
            instance = pool.pick(time.monotonic(), tried)
            assert instance is not None  # a retry happens only while an instance is left
            url = pool.url_for(original, instance)
            if url is None:
                return await self._inner.handle_async_request(request)
            if url is not request.url:
                request.url = url
                request.headers["Host"] = url.netloc.decode("ascii")
            tried.append(instance)
            instance.outstanding += 1
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                instance.outstanding -= 1
                kind = _failure_kind(exc)
                instance.outcomes[kind] += 1
                if kind == "connect_failed" or (
                    kind == "timeout" and not isinstance(exc, httpx.PoolTimeout)
                ):
                    pool.eject(instance, time.monotonic())
                safe = kind == "connect_failed" or (kind == "reset" and _idempotent(request))
                retry = safe and replayable and len(tried) < len(pool.instances)
                if len(pool.instances) > 1:
                    # With one instance, the dependency problem's own log line says it all.
                    log.warning(
                        "service_instance_failed",
                        service=pool.service,
                        instance=instance.base_url,
                        call=f"{request.method} {url.copy_with(query=None)}",
                        error=repr(exc),
                        ejected=instance.ejected(time.monotonic()),
                        retried=retry,
                    )
                if not retry:
                    raise
                pool.retries += 1
                continue
            except BaseException:
                instance.outstanding -= 1
                raise
            instance.outcomes["ok"] += 1
            if len(tried) > 1:
                log.info(
                    "service_call_retried",
                    service=pool.service,
                    served_by=instance.base_url,
                    failed=[i.base_url for i in tried[:-1]],
                )

            def done(instance: ServiceInstance = instance) -> None:
                instance.outstanding -= 1

            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _Tracked(response.stream, done)
            response.extensions[INSTANCE] = instance.base_url
            return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()


# One set of instances per (service, base URLs) in a process, shared by every client of it, so
# what one client learnt (an instance refusing connections) spares the others the attempt.
_INSTANCES: dict[tuple[str, tuple[str, ...]], ServiceInstances] = {}


def service_instances(service: str, urls: str | Sequence[str]) -> ServiceInstances:
    """The process's ``ServiceInstances`` for these base URLs of ``service``."""
    found = tuple(base_urls(urls))
    key = (service, found)
    instances = _INSTANCES.get(key)
    if instances is None:
        instances = _INSTANCES[key] = ServiceInstances(service, found)
    return instances


class ServiceCallMetrics(Collector):
    """Prometheus series of the calls this process makes to other services, per instance."""

    def collect(self) -> Iterable[Metric]:
        """The current counts, read from every set of instances in the process."""
        calls = CounterMetricFamily(
            "ecosistema_service_calls",
            "Attempts of calls to other services, by service, instance and outcome (ok: an "
            "answer; connect_failed, timeout, reset, error: no answer).",
            labels=("service", "instance", "outcome"),
        )
        retries = CounterMetricFamily(
            "ecosistema_service_call_retries",
            "Calls sent again to another instance after a failure that left them unprocessed.",
            labels=("service",),
        )
        ejected = GaugeMetricFamily(
            "ecosistema_service_instance_ejected",
            "1 while an instance is left out of the rotation after a failed connection or a "
            "timeout.",
            labels=("service", "instance"),
        )
        in_flight = GaugeMetricFamily(
            "ecosistema_service_calls_in_flight",
            "Calls sent to an instance and not yet answered.",
            labels=("service", "instance"),
        )
        now = time.monotonic()
        for pool in list(_INSTANCES.values()):
            retries.add_metric((pool.service,), pool.retries)
            for instance in pool.instances:
                labels = (pool.service, instance.base_url)
                for outcome, count in sorted(instance.outcomes.items()):
                    calls.add_metric((*labels, outcome), count)
                ejected.add_metric(labels, 1.0 if instance.ejected(now) else 0.0)
                in_flight.add_metric(labels, instance.outstanding)
        return [calls, retries, ejected, in_flight]


SERVICE_CALL_METRICS = ServiceCallMetrics()


def service_client(
    base_url: str | Sequence[str],
    *,
    credential: str | None = None,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
    service: str | None = None,
) -> httpx.AsyncClient:
    """A client for another service's API: its ``/api/v1`` base, the caller's credential, and
    the current request id and trace context on every call, so one trace spans services.

    ``base_url`` may name several instances (a comma-separated string or a list): each call
    goes to one of them (``BalancingTransport``). The callee's 401, 403 and 5xx answers and
    connection failures raise ``DependencyFailed`` or ``DependencyUnavailable`` naming
    ``service`` (the log line names the instance's address too)."""
    name = service or "a service this request needs"
    instances = service_instances(name, base_url)
    balanced = BalancingTransport(instances, transport or httpx.AsyncHTTPTransport())
    return httpx.AsyncClient(
        base_url=instances.instances[0].base_url + "/api/v1",
        headers={"Authorization": f"Bearer {credential}"} if credential else {},
        timeout=timeout,
        transport=DependencyTransport(name, balanced),
        event_hooks={"request": [_propagate_context]},
    )
