"""The gateway in front of the embedded shape: ``ecosistema up``.

One process: the gateway's own HTTP server listens, and every route is served by the embedded
FastAPI app called in process (no socket between them). Edge authentication, rate limits, the
response cache, security headers, request ids, the access log and metrics apply as in the
distributed shape. The route table is generated from the services' routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import structlog

from ecosistema.gateway import native
from ecosistema.gateway.auth import ApiKeyCheck, ApiKeysUnavailable
from ecosistema.gateway.config import GatewayConfig, gateway_config
from ecosistema.gateway.inprocess import ASGIApp, LocalService
from ecosistema.gateway.server import GatewayServer, create_ssl_context, serve
from ecosistema.platform.auth import TokenVerifier
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import ServiceUnavailable, Unauthorized
from ecosistema.platform.service import Service

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"
PLATFORM = "platform"
# Served by the app itself rather than by a service's router.
_PLATFORM_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json")
# Probes are never rate limited: many may come from one address (a load balancer, a kubelet).
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Read by anyone, changed only through catalog's use cases (whose events purge the cache).
_CACHED_PREFIXES = frozenset({f"{API_PREFIX}/products", f"{API_PREFIX}/categories"})
_AUTH_PREFIX = f"{API_PREFIX}/auth"


def _route_prefixes(service: Service) -> set[str]:
    """Each first path segment of a service's API routes (``/api/v1/products``), and its root
    routes (``/.well-known/jwks.json``) as they are."""
    prefixes: set[str] = set()
    if service.router is not None:
        for route in service.router.routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            first = path.strip("/").split("/", 1)[0]
            if first and not first.startswith("{"):
                prefixes.add(f"{API_PREFIX}/{first}")
    if service.root_router is not None:
        for route in service.root_router.routes:
            path = getattr(route, "path", None)
            if isinstance(path, str) and "{" not in path:
                prefixes.add(path)
    return prefixes


def embedded_route_table(services: Sequence[Service], settings: Settings) -> dict[str, Any]:
    """The route table of ``ecosistema up``, generated from the services' routers: every
    service in process, public at the edge (each service enforces its own credentials, as it
    does when reached directly), a stricter rate limit on the auth endpoints, and the response
    cache on public catalog reads."""
    table_services: dict[str, Any] = {PLATFORM: {"in_process": True, "health_path": None}}
    # No methods on any route: the app knows which methods each path takes, so it answers a
    # method a path does not take (405 with that path's Allow), not the gateway, which only
    # sees prefixes shared by many paths.
    routes: list[dict[str, Any]] = [
        {"prefix": path, "service": PLATFORM, "public": True} for path in _PLATFORM_PATHS
    ]
    for probe in routes:
        if probe["prefix"] in _PROBE_PATHS:
            probe["rate_limited"] = False
    claimed: set[str] = set(_PLATFORM_PATHS)
    for service in services:
        table_services[service.name] = {"in_process": True, "health_path": None}
        for prefix in sorted(_route_prefixes(service)):
            if prefix in claimed:
                continue  # one app serves every service, so the first claim routes it right
            claimed.add(prefix)
            route: dict[str, Any] = {"prefix": prefix, "service": service.name, "public": True}
            if prefix == _AUTH_PREFIX:
                # Identity checks the credentials its auth endpoints read (an expired access
                # token sent along with a refresh must not stop the refresh).
                route["verify_credentials"] = False
                route["rate_limit"] = {
                    "rate": settings.gateway_auth_rate,
                    "burst": settings.gateway_auth_burst,
                }
            if prefix in _CACHED_PREFIXES:
                route["cache"] = {
                    "ttl_seconds": settings.gateway_cache_seconds,
                    "revalidate_by_events": True,
                    "vary": ["accept-language"],
                }
            routes.append(route)
    return {
        "services": table_services,
        "routes": routes,
        "auth": {"jwks_service": "identity"},
        "rate_limits": dict(settings.gateway_rate_limits),
        "response_cache": {"max_bytes": settings.gateway_cache_max_bytes},
        "access_log": settings.gateway_access_log,
        "max_body_bytes": settings.max_body_bytes,
    }


def api_key_check(verifier: TokenVerifier) -> ApiKeyCheck:
    """API keys checked at the edge exactly as the app's services check them: the same
    verifier, through identity's resolver in this process (a revoked key fails at once)."""

    async def check(key: str) -> bool:
        try:
            await verifier.verify_api_key(key)
        except Unauthorized:
            return False
        except ServiceUnavailable as exc:
            raise ApiKeysUnavailable(exc.detail) from None
        return True

    return check


@dataclass
class EmbeddedGateway:
    """The gateway serving the embedded app in the current event loop."""

    server: GatewayServer
    local: LocalService

    @property
    def port(self) -> int:
        """Where it listens."""
        return self.server.port

    async def close(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, then shut the app down."""
        try:
            await self.server.close(drain_seconds)
        finally:
            await self.local.shutdown()


async def serve_embedded(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    app: ASGIApp | None = None,
    services: Sequence[Service] | None = None,
    config: GatewayConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access_log: IO[str] | None = None,
) -> EmbeddedGateway:
    """Start the embedded app (its lifespan: migrations, relays, jobs) and the gateway in
    front of it, in the running loop."""
    from ecosistema.platform.app import create_app
    from ecosistema.services import load_services

    if services is None:
        services = load_services()
    if app is None:
        app = create_app(services, settings)
    local = LocalService(app, server=(host, port))
    await local.startup()
    try:
        if config is None:
            config = gateway_config(embedded_route_table(services, settings), settings)
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        in_process = {name for name, svc in config.services.items() if svc.in_process}
        verifier = getattr(runtime, "verifier", None)
        server = await serve(
            config,
            host,
            port,
            ssl_context=ssl_context,
            access_log=access_log,
            local_apps=dict.fromkeys(in_process, local),
            bus=getattr(runtime, "bus", None),
            api_key_check=api_key_check(verifier) if verifier is not None else None,
        )
    except BaseException:
        await local.shutdown()
        raise
    local.server = (host, server.port)
    return EmbeddedGateway(server, local)


def run_embedded(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Serve ``ecosistema up`` until SIGTERM/SIGINT, on uvloop."""
    import uvloop

    ssl_context = create_ssl_context(certfile, keyfile) if certfile else None
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    if settings.gateway_access_log:
        # The gateway writes the one access line per request (cache hits included, which the
        # app never sees), so the app's own would be a second.
        from ecosistema.platform.telemetry_http import ACCESS_LOGGER

        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)

    async def main() -> None:
        running = await serve_embedded(settings, host, port, ssl_context=ssl_context)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "embedded_gateway_started",
            host=host,
            port=running.port,
            compiled=native.active(),
            native=native.status()[0],
        )
        await stop.wait()
        await running.close()

    try:
        loop.run_until_complete(main())
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        sys.stdout.flush()
