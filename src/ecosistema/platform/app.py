"""The ASGI application factory: one app hosts one or many services."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount, Router
from starlette.types import Message, Receive, Scope, Send

from ecosistema import __version__
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import install_error_handlers
from ecosistema.platform.runtime import Runtime
from ecosistema.platform.service import Service

API_PREFIX = "/api/v1"


def create_app(
    services: Sequence[Service],
    settings: Settings,
    *,
    title: str = "Ecosistema",
) -> FastAPI:
    """Build the app for the given services; the runtime starts with the app's lifespan."""
    from ecosistema.platform.logging import configure_logging

    configure_logging(settings)
    runtime = Runtime(settings, services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        # What exists now (modules, routes, schemas, pools) lives as long as the app. Frozen, a
        # full collection no longer walks it: otherwise each one stalls every request in flight
        # for tens of milliseconds, the largest share of the tail latency under load. A heap
        # someone else froze (another app of the process, or its host) is left as it was found:
        # neither collected again nor thawed when this app stops.
        freezes = gc.get_freeze_count() == 0
        if freezes:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if freezes:
                gc.unfreeze()
            await runtime.stop()

    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by _install_docs, with Swagger UI's files from this package
        redoc_url=None,
        openapi_url="/openapi.json",
        dependencies=[Depends(refuse_unknown_query_parameters)],
    )
    app.state.runtime = runtime
    app.state.settings = settings
    install_error_handlers(app)
    for service in services:
        if service.router is not None:
            app.include_router(service.router, prefix=API_PREFIX)
        if service.root_router is not None:
            app.include_router(service.root_router)
    _install_health(app, runtime)
    _install_docs(app, title)
    _install_method_semantics(app.router)
    _document_problems(app)
    from ecosistema.platform import telemetry_http

    telemetry_http.install(app, settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-API-Key",
                "X-Cart-Token",
                "X-Request-ID",
                "If-None-Match",
                "traceparent",
            ],
            expose_headers=["ETag", "X-Request-ID", "traceparent", "Retry-After", "Location"],
            max_age=600,
        )
    return app


DOCS_STATIC = "/docs/static"
DOCS_REDIRECT = "/docs/oauth2-redirect"


def swagger_ui_html(title: str) -> str:
    """The Swagger UI page over ``/openapi.json``, its files under ``/docs/static``."""
    from fastapi.openapi.docs import get_swagger_ui_html

    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
        oauth2_redirect_url=DOCS_REDIRECT,
        # No badge fetched from the public validator either.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return bytes(page.body).decode()


def _install_docs(app: FastAPI, title: str) -> None:
    """Swagger UI at /docs with its JavaScript and CSS served from this package (vendored
    Swagger UI, see platform/static/swagger-ui/README.md), so it works offline."""
    from pathlib import Path

    from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    app.mount(
        DOCS_STATIC,
        StaticFiles(directory=Path(__file__).parent / "static" / "swagger-ui"),
        name="docs-static",
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger_ui_html(title))

    @app.get(DOCS_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _install_method_semantics(router: Router) -> None:
    """HEAD wherever GET is served, answered as GET without the body (RFC 9110 section 9.3.2),
    and a 405 whose Allow names every method of the requested path (section 15.5.6).

    FastAPI routes declare HEAD only when asked to, and Starlette's 405 names the methods of the
    first route whose path matched, not of all the routes sharing that path."""
    routes = router.routes
    route = router.middleware_stack
    # Finding a path's methods tries each method on every route: keep the answers for the paths
    # refused most recently, bounded so that arbitrary paths cannot grow it.
    allow_of: dict[str, str] = {}

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "HEAD"
            and not _served(routes, scope, "HEAD")
            and _served(routes, scope, "GET")
        ):
            await route(dict(scope, method="GET"), receive, _without_body(send))
            return
        try:
            await route(scope, receive, send)
        except HTTPException as exc:
            if exc.status_code != 405:
                raise
            path = scope["path"]
            allow = allow_of.get(path)
            if allow is None:
                allowed = {m for m in _METHODS if _served(routes, scope, m)}
                if "GET" in allowed:
                    allowed.add("HEAD")
                allow = ", ".join(sorted(allowed))
                if len(allow_of) >= 1024:
                    allow_of.clear()
                allow_of[path] = allow
            if not allow:
                raise
            raise HTTPException(405, exc.detail, headers={"Allow": allow}) from None

    router.middleware_stack = routed


async def refuse_unknown_query_parameters(request: Request) -> None:
    """A query parameter an operation does not declare is refused (422, naming it), as Stripe
    does, instead of being ignored: a misspelt filter or option (``interval=week`` where the
    parameter is ``group_by``) would otherwise answer as if it had not been given. Installed as
    a dependency of every operation of the API."""
    scope = request.scope
    query: bytes = scope.get("query_string", b"")
    if not query:
        return
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not path.startswith(API_PREFIX):
        return  # probes, the key set, metrics: tolerant of whatever a monitor appends
    route = scope.get("route")
    if route is None or not getattr(route, "include_in_schema", False):
        return  # Swagger UI's OAuth2 redirect, for one, receives the provider's parameters
    declared: frozenset[str] | None = getattr(route, _DECLARED_QUERY, None)
    if declared is None:
        declared = _query_names(route.dependant)
        setattr(route, _DECLARED_QUERY, declared)  # found once: routes live as long as the app
    names = dict.fromkeys(
        name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    )
    unknown = [name for name in names if name not in declared]
    if unknown:
        takes = ", ".join(sorted(declared)) if declared else None
        message = (
            f"Unknown query parameter; this operation takes {takes}."
            if takes
            else "Unknown query parameter; this operation takes none."
        )
        raise RequestValidationError(
            [
                {"type": "unknown_parameter", "loc": ("query", name), "msg": message}
                for name in unknown
            ]
        )


_DECLARED_QUERY = "_ecosistema_declared_query"


def _query_names(dependant: Any) -> frozenset[str]:
    """The query parameters an operation reads, its dependencies' included."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        names.update(param.alias for param in current.query_params)
        pending.extend(current.dependencies)
    return frozenset(names)


# HEAD is found by GET: a route serving GET serves HEAD too.
_METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")


def _served(routes: Sequence[BaseRoute], scope: Scope, method: str) -> bool:
    """Whether a route other than a mount answers ``method`` on the request's path."""
    # A fresh scope: routing leaves the matched route in the request's, which steers matching.
    probe = {
        "type": "http",
        "method": method,
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
    }
    return any(
        not isinstance(route, Mount) and route.matches(probe)[0] is Match.FULL for route in routes
    )


def _without_body(send: Send) -> Send:
    """``send`` for a GET answering a HEAD: the same head (Content-Length included), no body."""

    async def head_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return head_only


def _install_health(app: FastAPI, runtime: Runtime) -> None:
    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness: the process answers",
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: database, bus and cache answer",
        responses={503: {"description": "A dependency is down"}},
    )
    async def readyz(request: Request) -> Any:
        checks: dict[str, str] = {}

        async def check(name: str, probe: Any) -> None:
            try:
                async with asyncio.timeout(2.0):
                    await probe()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"

        await asyncio.gather(
            *(check(f"database:{n}", c.db.ping) for n, c in runtime.contexts.items()),
            check("bus", runtime.bus.ping),
            check("cache", runtime.cache.ping),
        )
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        return JSONResponse(
            {
                "type": "https://ecosistema.dev/problems/not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": "One or more dependencies are unavailable.",
                "checks": checks,
            },
            status_code=503,
            media_type="application/problem+json",
        )


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "in": {"type": "string"},
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}


def _document_problems(app: FastAPI) -> None:
    """Describe every error response as problem+json in the OpenAPI document, as it is sent."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                for code, response in responses.items():
                    if code.startswith(("4", "5")):
                        response["content"] = ref
                # Every operation refuses a query parameter it does not take.
                responses.setdefault(
                    "422", {"description": "Unknown or invalid parameter", "content": ref}
                )
                if "requestBody" in operation:
                    for code, text in (
                        ("400", "Malformed JSON"),
                        ("413", "Body too large"),
                        ("415", "Body is not JSON"),
                    ):
                        responses.setdefault(code, {"description": text, "content": ref})
                if operation.get("security"):
                    # Any operation that reads credentials refuses bad ones, even where they are
                    # optional; and a valid principal may lack the permission.
                    for code, text in (("401", "Bad credentials"), ("403", "Not permitted")):
                        responses.setdefault(code, {"description": text, "content": ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
