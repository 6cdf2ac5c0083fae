"""The ASGI application factory: one app hosts one or many services."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

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
        # for tens of milliseconds, the largest share of the tail latency under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await runtime.stop()

    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by _install_docs, with Swagger UI's files from this package
        redoc_url=None,
        openapi_url="/openapi.json",
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


def _install_docs(app: FastAPI, title: str) -> None:
    """Swagger UI at /docs with its JavaScript and CSS served from this package (vendored
    Swagger UI, see platform/static/swagger-ui/README.md), so it works offline."""
    from pathlib import Path

    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles

    redirect = "/docs/oauth2-redirect"
    app.mount(
        DOCS_STATIC,
        StaticFiles(directory=Path(__file__).parent / "static" / "swagger-ui"),
        name="docs-static",
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
            oauth2_redirect_url=redirect,
            # No badge fetched from the public validator either.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _install_health(app: FastAPI, runtime: Runtime) -> None:
    @app.api_route(
        "/healthz",
        methods=["GET", "HEAD"],
        tags=["operations"],
        summary="Liveness: the process answers",
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route(
        "/readyz",
        methods=["GET", "HEAD"],
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
