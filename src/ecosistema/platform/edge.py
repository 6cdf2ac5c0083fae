"""The HTTP edge of every app: one pure ASGI middleware around everything else.

For each request it assigns the request id and W3C trace context, refuses bodies over the
configured size, adds the security headers, and once the response is sent counts it (by route
template) and writes the access log line. It wraps the whole app, outside the error handlers, so
even a 413 rejected before routing or a 500 from a bug carries ``X-Request-ID`` and
``traceparent`` and is counted.

It also serves *fast routes*: a FastAPI route whose endpoint has a fast handler registered with
:func:`serve_fast` is answered, for the requests that handler accepts, without the framework's
routing and dependency resolution. The FastAPI route stays the contract (it is in the OpenAPI
document and serves every request the fast handler declines), so both must answer alike; the fast
handler shares the route's use case and only skips the per-request machinery around it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecosistema.platform.errors import ProblemError, problem_response
from ecosistema.platform.telemetry import (
    SAMPLED,
    TraceContext,
    parse_traceparent,
    request_id_var,
    sanitize_request_id,
    trace_context_var,
    trace_id_var,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ecosistema.platform.telemetry_http import AccessLog, HttpMetrics, RouteTemplates, Tracing

log = structlog.get_logger("ecosistema.platform.errors")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
)
# Methods whose requests carry no body here; any other request without Content-Length has its
# body counted as it is read.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class FastRequest:
    """What a fast handler sees of a request: the app, its path parameters and headers."""

    app: FastAPI
    scope: Scope
    path_params: dict[str, str]

    def header(self, name: bytes) -> str | None:
        """The first value of a header (``name`` in lower case), or ``None``."""
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None


@dataclass(slots=True)
class FastResponse:
    """A complete response from a fast handler."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


FastHandler = Callable[[FastRequest], Awaitable[FastResponse | None]]
_FAST_HANDLERS: dict[Callable[..., Any], FastHandler] = {}


def serve_fast(endpoint: Callable[..., Any], handler: FastHandler) -> None:
    """Answer requests to ``endpoint``'s route with ``handler`` where it accepts them.

    ``handler`` returns ``None`` to leave a request to the route (for example one that carries
    credentials), or raises :class:`ProblemError` for a problem answer, as the route would. It
    is used for GET requests without an ``Origin`` header when CORS is configured.
    """
    _FAST_HANDLERS[endpoint] = handler


@dataclass(slots=True)
class _FastRoute:
    template: str
    prefix: str
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    methods: frozenset[str]
    handler: FastHandler
    # Earlier routes that may match the same paths: FastAPI would pick them first.
    shadowed_by: list[re.Pattern[str]]


def _segments(template: str) -> list[str | None]:
    """A template's path segments, ``None`` for any that holds a parameter."""
    return [None if "{" in s else s for s in template.split("/")]


def _may_overlap(first: str, second: str) -> bool:
    if ":path}" in first or ":path}" in second:
        return True
    a, b = _segments(first), _segments(second)
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


class FastRoutes:
    """The app's fast routes, matched by path in the order FastAPI would try them."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._route_count = -1
        self._routes: list[_FastRoute] = []

    def match(self, method: str, path: str) -> tuple[_FastRoute, dict[str, str]] | None:
        """The fast route serving ``method path``, with its path parameters, if any."""
        if len(self._app.routes) != self._route_count:
            self._rebuild()
        for route in self._routes:
            if method not in route.methods or not path.startswith(route.prefix):
                continue
            found = route.regex.match(path)
            if found is None:
                continue
            if any(earlier.match(path) for earlier in route.shadowed_by):
                return None
            params = {
                name: route.convertors[name].convert(value)
                for name, value in found.groupdict().items()
            }
            return route, params
        return None

    def _rebuild(self) -> None:
        contexts: Iterable[Any]
        try:
            from fastapi.routing import iter_route_contexts

            contexts = iter_route_contexts(self._app.routes)
        except ImportError:  # FastAPI before included routers kept their own routes
            contexts = self._app.routes
        routes: list[_FastRoute] = []
        seen: list[tuple[str, frozenset[str] | None, re.Pattern[str]]] = []
        for context in contexts:
            template = getattr(context, "path_format", None) or getattr(context, "path", None)
            if not template:
                continue
            declared = getattr(context, "methods", None)
            methods = frozenset(declared) if declared else None
            regex = compile_path(template)[0]
            endpoint = getattr(context, "endpoint", None)
            handler = _FAST_HANDLERS.get(endpoint) if endpoint is not None else None
            if handler is not None and methods:
                fast_methods = frozenset(m for m in methods if m == "GET")
                if fast_methods:
                    shadows = [
                        earlier_regex
                        for earlier_template, earlier_methods, earlier_regex in seen
                        if (earlier_methods is None or earlier_methods & fast_methods)
                        and _may_overlap(earlier_template, template)
                    ]
                    pattern, _, convertors = compile_path(template)
                    routes.append(
                        _FastRoute(
                            template=template,
                            prefix=template.split("{", 1)[0],
                            regex=pattern,
                            convertors=convertors,
                            methods=fast_methods,
                            handler=handler,
                            shadowed_by=shadows,
                        )
                    )
            seen.append((template, methods, regex))
        self._routes, self._route_count = routes, len(self._app.routes)


# Ids are unique, not secret: drawn as OpenTelemetry's own id generator draws them, from the
# process's random generator (reseeded in every forked worker), without a system call.
def _new_ids() -> tuple[str, TraceContext]:
    # A request id and a root span at once: 128 + 128 + 64 random bits.
    raw = f"{random.getrandbits(320):080x}"
    request_id, trace_id, span_id = raw[:32], raw[32:64], raw[64:]
    if trace_id == "0" * 32 or span_id == "0" * 16:  # W3C forbids all-zero ids
        return _new_ids()
    return request_id, TraceContext(trace_id, span_id, SAMPLED)


def _child_span_id() -> str:
    span_id = f"{random.getrandbits(64):016x}"
    return span_id if span_id != "0" * 16 else _child_span_id()


class HttpEdge:
    """Pure ASGI middleware: ids, trace context, body limit, security headers, fast routes,
    metrics, access log and server span, in one pass over the request headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi_app: FastAPI,
        metrics: HttpMetrics,
        access: AccessLog,
        tracing: Tracing | None,
        routes: RouteTemplates,
        max_body_bytes: int,
        cors: bool,
    ) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics = metrics
        self.access = access
        self.tracing = tracing
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.cors = cors
        self.fast = FastRoutes(fastapi_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming_request_id: bytes | None = None
        incoming_traceparent: bytes | None = None
        content_length: bytes | None = None
        chunked = credentials = origin = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming_request_id = value
            elif name == b"traceparent":
                incoming_traceparent = value
            elif name == b"content-length":
                content_length = value
            elif name == b"authorization" or name == b"x-api-key":
                credentials = True
            elif name == b"origin":
                origin = True
            elif name == b"transfer-encoding":
                chunked = True

        request_id = ""
        if incoming_request_id is not None:
            request_id = sanitize_request_id(incoming_request_id.decode("latin-1"))
        parent = None
        if incoming_traceparent is not None:
            parent = parse_traceparent(incoming_traceparent.decode("latin-1"))
        span: Any = None
        otel_token: object = None
        if self.tracing is not None:
            span, context, otel_token = self.tracing.start_span(scope, parent)
            if not request_id:
                request_id = _new_ids()[0]
        elif parent is not None:
            context = TraceContext(parent.trace_id, _child_span_id(), parent.flags)
            if not request_id:
                request_id = _new_ids()[0]
        else:
            fresh_id, context = _new_ids()
            request_id = request_id or fresh_id

        request_token = request_id_var.set(request_id)
        trace_token = trace_id_var.set(context.trace_id)
        context_token = trace_context_var.set(context)
        extra_headers = (
            (b"x-request-id", request_id.encode("latin-1")),
            (b"traceparent", context.traceparent().encode("latin-1")),
            *SECURITY_HEADERS,
        )
        status = 500
        route: str | None = None
        response_complete = False

        async def send_with_ids(message: Message) -> None:
            nonlocal status, response_complete
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                response_complete = True
            await send(message)

        method: str = scope["method"]
        try:
            if content_length is not None and self._too_long(content_length):
                await self._problem(scope, receive, send_with_ids, _too_large(self.max_body_bytes))
                return
            if (
                method == "GET"
                and not credentials
                and not (origin and self.cors)
                and not scope.get("root_path")
                and not scope.get("query_string")  # the route itself refuses unknown parameters
            ):
                matched = self.fast.match(method, scope["path"])
                if matched is not None:
                    fast_route, params = matched
                    if await self._serve_fast(fast_route, params, scope, receive, send_with_ids):
                        route = fast_route.template
                        return
            if chunked or (content_length is None and method not in _BODYLESS):
                receive = self._limited(receive)
            await self.app(scope, receive, send_with_ids)
        except Exception:
            # The error handlers have logged it and sent the 500 before re-raising for the
            # server's sake; only an unanswered request still needs the server to know.
            if not response_complete:
                raise
        finally:
            if route is None:
                route = self.routes.template(scope)
            elapsed = time.perf_counter() - start
            self.metrics.observe(method, route, status, elapsed)
            if self.access.enabled():
                client = scope.get("client")
                self.access.write(
                    method,
                    route,
                    scope["path"],
                    status,
                    elapsed,
                    client[0] if client else None,
                    request_id,
                    context.trace_id,
                )
            if span is not None:
                self.tracing.end_span(span, method, route, status, otel_token)  # type: ignore[union-attr]
            trace_context_var.reset(context_token)
            trace_id_var.reset(trace_token)
            request_id_var.reset(request_token)

    async def _serve_fast(
        self,
        route: _FastRoute,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        try:
            response = await route.handler(FastRequest(self.fastapi_app, scope, params))
        except ProblemError as exc:
            await self._problem(scope, receive, send, exc)
            return True
        except Exception as exc:
            log.exception("unhandled_error", path=scope["path"], error=type(exc).__name__)
            await self._problem(
                scope,
                receive,
                send,
                ProblemError(
                    "An unexpected error occurred; it has been logged.",
                    status=500,
                    type="internal-error",
                    title="Internal server error",
                ),
            )
            return True
        if response is None:
            return False
        headers = response.headers
        if response.status not in (204, 304):
            headers = [*headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        return True

    def _too_long(self, content_length: bytes) -> bool:
        try:
            return int(content_length) > self.max_body_bytes
        except ValueError:
            return False

    @staticmethod
    async def _problem(scope: Scope, receive: Receive, send: Send, exc: ProblemError) -> None:
        response = problem_response(
            exc.status,
            exc.type,
            exc.title,
            exc.detail,
            instance=scope.get("root_path", "") + scope["path"],
            headers=exc.headers,
            **exc.extra,
        )
        await response(scope, receive, send)

    def _limited(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    from starlette.exceptions import HTTPException

                    # An HTTPException, because FastAPI turns any other error raised while it
                    # reads the body into a 400.
                    raise HTTPException(413, detail=f"The request body exceeds {limit} bytes.")
            return message

        return limited_receive


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        f"The request body exceeds {limit} bytes.",
        status=413,
        type="payload-too-large",
        title="Request body too large",
    )


def fast_json(
    body: bytes, *, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()
) -> FastResponse:
    """A JSON fast response."""
    return FastResponse(status, body, [(b"content-type", b"application/json"), *headers])
