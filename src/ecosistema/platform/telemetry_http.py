"""HTTP telemetry (access log, metrics, traces, route templates) and its wiring into an app;
the per-request work happens in the edge middleware (``platform/edge.py``)."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Scope

from ecosistema.platform.config import Settings
from ecosistema.platform.http import SERVICE_CALL_METRICS
from ecosistema.platform.logging import configure_logging
from ecosistema.platform.telemetry import TraceContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from ecosistema.platform.runtime import Runtime

UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCRAPE_PROBE_TIMEOUT = 2.0

ACCESS_LOGGER = "ecosistema.access"
access_log = structlog.get_logger(ACCESS_LOGGER)
log = structlog.get_logger(__name__)


class HttpMetrics:
    """The Prometheus series of one app, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ecosistema_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "ecosistema_http_request_duration_seconds",
            "Time from request start to the end of the response, by method and route template.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "ecosistema_http_errors_total",
            "Responses with status 400 or more, by route template and status.",
            ("route", "status"),
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "ecosistema_outbox_backlog",
            "Events written to a service's outbox and not yet published.",
            ("service",),
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "ecosistema_consumer_lag",
            "Events published and not yet handled, by durable consumer.",
            ("consumer",),
            registry=self.registry,
        )

        # The labelled series of each (method, route, status) seen, so that counting a request
        # is no label lookup: routes are templates, so this stays as small as the API.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            status_label = str(status)
            series = self._series[key] = (
                self.requests.labels(method, route, status_label),
                self.duration.labels(method, route),
                self.errors.labels(route, status_label) if status >= 400 else None,
            )
        requests, duration, errors = series
        requests.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()

    async def refresh_event_gauges(self, runtime: Runtime) -> None:
        """Read outbox backlogs and consumer lag now, so a scrape sees current values."""
        backlogs: dict[str, int] = {}
        for name, relay in list(runtime.relays.items()):
            try:
                async with asyncio.timeout(SCRAPE_PROBE_TIMEOUT):
                    backlogs[name] = await relay.outbox.backlog(relay.db)
            except Exception as exc:
                log.warning("outbox_backlog_unavailable", service=name, error=repr(exc))
        self.outbox_backlog.clear()
        for name, count in backlogs.items():
            self.outbox_backlog.labels(name).set(count)

        try:
            async with asyncio.timeout(SCRAPE_PROBE_TIMEOUT):
                lags: Mapping[str, int] = await runtime.bus.lag()
        except Exception as exc:
            log.warning("consumer_lag_unavailable", error=repr(exc))
            return
        self.consumer_lag.clear()
        for consumer, lag in lags.items():
            self.consumer_lag.labels(consumer).set(lag)


class Tracing:
    """OpenTelemetry server spans exported over OTLP/HTTP; built only when configured."""

    def __init__(self, provider: TracerProvider, tracer: Tracer) -> None:
        self.provider = provider
        self.tracer = tracer

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """A tracer exporting to ``settings.otlp_endpoint``, or ``None`` when it is unset."""
        if not settings.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint)))
        )
        return cls(provider, provider.get_tracer("ecosistema.http"))

    def shutdown(self) -> None:
        """Export the spans still buffered and stop the exporter."""
        self.provider.shutdown()

    def start_span(
        self, scope: Scope, parent: TraceContext | None
    ) -> tuple[Any, TraceContext, object]:
        """Start the server span of a request (a child of ``parent`` when the caller sent one),
        and make it current."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            TraceFlags,
        )

        parent_context = None
        if parent is not None:
            remote = SpanContext(
                trace_id=int(parent.trace_id, 16),
                span_id=int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
            )
            parent_context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self.tracer.start_span(
            scope["method"],
            context=parent_context,
            kind=SpanKind.SERVER,
            attributes={"http.method": scope["method"], "url.path": scope["path"]},
        )
        ids = span.get_span_context()
        context = TraceContext(
            format(ids.trace_id, "032x"), format(ids.span_id, "016x"), int(ids.trace_flags)
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, context, token

    @staticmethod
    def end_span(span: Any, method: str, route: str, status: int, token: Any) -> None:
        """Name the span after its route, record the status, end it and detach it."""
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Status, StatusCode

        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(token)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (``http://collector:4318``)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class AccessLog:
    """The access log: one line per answered request on logger ``ecosistema.access``.

    With JSON logs (the default) the line is rendered here, with exactly the fields and the
    format of every other JSON line, and written to stdout in one call: an access line through
    the generic processor chain costs about fifteen times as much, on every request. Console logs
    go through structlog as usual. Either way the logger's level decides whether it is written.
    """

    def __init__(self, settings: Settings) -> None:
        self._json = settings.log_json
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        """Whether access lines are written at the current log level."""
        return self._logger.isEnabledFor(logging.INFO)

    def write(
        self,
        method: str,
        route: str,
        path: str,
        status: int,
        seconds: float,
        client_ip: str | None,
        request_id: str,
        trace_id: str,
    ) -> None:
        """Write one access line."""
        duration_ms = round(seconds * 1000, 3)
        if not self._json:
            access_log.info(
                "request",
                method=method,
                route=route,
                path=path,
                status=status,
                duration_ms=duration_ms,
                client_ip=client_ip,
            )
            return
        line = {
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "client_ip": client_ip,
            "event": "request",
            "request_id": request_id,
            "trace_id": trace_id,
            "logger": ACCESS_LOGGER,
            "level": "info",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        sys.stdout.write(to_json(line).decode() + "\n")


class RouteTemplates:
    """The full path template of each route, prefixes of included routers included.

    FastAPI keeps an included router's routes with their own, unprefixed paths and puts that
    route in the scope, so the full template is looked up by route rather than read from it.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._by_route: dict[int, list[tuple[str, re.Pattern[str]]]] = {}
        self._route_count = -1

    def template(self, scope: Scope) -> str:
        """The matched route's template, or ``unmatched`` when no route matched."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        if len(self.app.routes) != self._route_count:
            self._rebuild()
        candidates = self._by_route.get(id(route))
        if not candidates:
            path = getattr(route, "path", None)
            return path if isinstance(path, str) else UNMATCHED_ROUTE
        if len(candidates) == 1:
            return candidates[0][0]
        for template, regex in candidates:
            if regex.match(scope["path"]):
                return template
        return candidates[0][0]

    def _rebuild(self) -> None:
        by_route: dict[int, list[tuple[str, re.Pattern[str]]]] = {}
        try:
            from fastapi.routing import iter_route_contexts
        except ImportError:  # FastAPI before included routers kept their own routes
            self._by_route, self._route_count = by_route, len(self.app.routes)
            return
        for context in iter_route_contexts(self.app.routes):
            template = context.path_format or context.path
            if template is None:
                continue
            regex = compile_path(template)[0]
            by_route.setdefault(id(context.original_route), []).append((template, regex))
        self._by_route, self._route_count = by_route, len(self.app.routes)


def install(app: FastAPI, settings: Settings) -> None:
    """Put the HTTP edge (ids, trace context, body limit, security headers, fast routes,
    metrics, access log, tracing) around ``app``."""
    from ecosistema.platform.edge import HttpEdge

    configure_logging(settings)
    metrics = HttpMetrics()
    metrics.registry.register(SERVICE_CALL_METRICS)
    tracing = Tracing.from_settings(settings)
    access = AccessLog(settings)
    app.state.metrics = metrics
    app.state.tracing = tracing

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            await metrics.refresh_event_gauges(runtime)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Outermost, outside even Starlette's error middleware, whatever is added after this call.
    build_inner = app.build_middleware_stack
    routes = RouteTemplates(app)

    def build_middleware_stack() -> ASGIApp:
        return HttpEdge(
            build_inner(),
            fastapi_app=app,
            metrics=metrics,
            access=access,
            tracing=tracing,
            routes=routes,
            max_body_bytes=settings.max_body_bytes,
            cors=bool(settings.cors_origins),
        )

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]

    if tracing is not None:
        inner_lifespan = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan_with_tracing(application: Any) -> AsyncIterator[Any]:
            try:
                async with inner_lifespan(application) as state:
                    yield state
            finally:
                tracing.shutdown()

        lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] = lifespan_with_tracing
        app.router.lifespan_context = lifespan
