"""The ASGI application factory: one app hosts one or many services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecosistema import __version__
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import PayloadTooLarge, install_error_handlers, problem_response
from ecosistema.platform.runtime import Runtime
from ecosistema.platform.service import Service

API_PREFIX = "/api/v1"


class BodySizeLimit:
    """Rejects bodies over the configured size with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload-too-large",
            "Request body too large",
            f"The request body exceeds {self.max_bytes} bytes.",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


def create_app(
    services: Sequence[Service],
    settings: Settings,
    *,
    title: str = "Ecosistema",
) -> FastAPI:
    """Build the app for the given services; the runtime starts with the app's lifespan."""
    runtime = Runtime(settings, services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
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
    from ecosistema.platform import telemetry_http

    telemetry_http.install(app, settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def _install_health(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
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
