"""What the gateway answers itself when no route claims the path: liveness (``/healthz``),
readiness (``/readyz``), the merged OpenAPI document of the services it routes to
(``/openapi.json``) and Swagger UI over it (``/docs``, with its files bundled in the package so
it works offline).

In the embedded shape the route table sends these paths to the app, which serves them; a
gateway in front of separate service processes (``ecosistema up --distributed``,
``ecosistema gateway``) answers them here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecosistema.gateway.balancer import Balancer, Instance
from ecosistema.gateway.routing import Router
from ecosistema.gateway.upstream import fetch

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
DOCS_REDIRECT_PATH = "/docs/oauth2-redirect"
DOCS_STATIC = "/docs/static/"
OWN_PATHS = frozenset({HEALTH_PATH, READY_PATH, OPENAPI_PATH, DOCS_PATH, DOCS_REDIRECT_PATH})

TITLE = "Ecosistema"
# Long enough that Swagger UI's page and a burst of scrapers share one fetch per service, short
# enough that a rolled-out service's new operations show up within the minute.
OPENAPI_TTL_SECONDS = 30.0
OPENAPI_FETCH_TIMEOUT = 10.0
OPENAPI_MAX_BYTES = 32 * 1024 * 1024
_OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

_STATIC_TYPES = {
    "swagger-ui-bundle.js": b"application/javascript; charset=utf-8",
    "swagger-ui.css": b"text/css; charset=utf-8",
    "favicon-32x32.png": b"image/png",
}
_STATIC_DIR = Path(__file__).resolve().parent.parent / "platform" / "static" / "swagger-ui"


@dataclass(frozen=True)
class Asset:
    """A response body the gateway serves itself, with its content type."""

    content_type: bytes
    body: bytes
    cache_control: bytes = b"no-store"


class OpenAPIUnavailable(Exception):
    """Some routed services did not hand over their OpenAPI document."""

    def __init__(self, services: Mapping[str, str]) -> None:
        super().__init__(", ".join(sorted(services)))
        self.services = dict(services)


def readiness(balancers: Iterable[Balancer], now: float) -> dict[str, str]:
    """Each upstream service's state: ``ok`` while some instance is healthy and not refused
    by its circuit breaker."""
    return {
        balancer.name: (
            "ok"
            if any(inst.available(now) for inst in balancer.instances)
            else "error: no healthy instance"
        )
        for balancer in balancers
    }


def docs_page() -> Asset:
    """Swagger UI over ``/openapi.json``, the same page the embedded app serves."""
    from ecosistema.platform.app import swagger_ui_html

    return Asset(b"text/html; charset=utf-8", swagger_ui_html(TITLE).encode())


def docs_redirect_page() -> Asset:
    """The page Swagger UI's OAuth2 flow returns to."""
    from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html

    return Asset(b"text/html; charset=utf-8", bytes(get_swagger_ui_oauth2_redirect_html().body))


def static_asset(path: str) -> Asset | None:
    """One of Swagger UI's bundled files under ``/docs/static/``, or None for any other."""
    name = path[len(DOCS_STATIC) :]
    content_type = _STATIC_TYPES.get(name)
    if content_type is None:
        return None
    return Asset(content_type, (_STATIC_DIR / name).read_bytes(), b"public, max-age=86400")


class OpenAPIDocument:
    """The OpenAPI documents of the routed services merged into one, as the embedded app
    describes them all: each service's operations on the paths the gateway routes to it, and
    the union of their components. Fetched from one available instance of each service and
    kept for ``OPENAPI_TTL_SECONDS``."""

    def __init__(self, router: Router, balancers: Mapping[str, Balancer]) -> None:
        self._router = router
        self._balancers = balancers
        self._asset: Asset | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def routed_services(self) -> list[str]:
        """The services some route sends requests to, in the order the table names them."""
        names: dict[str, None] = {}
        for route in self._router.routes:
            if route.service in self._balancers:
                names[route.service] = None
        return list(names)

    async def asset(self) -> Asset:
        """The merged document as JSON, fetched again once it is older than its TTL."""
        async with self._lock:
            now = time.monotonic()
            if self._asset is None or now - self._fetched_at > OPENAPI_TTL_SECONDS:
                document = await self._build()
                body = json.dumps(document, separators=(",", ":")).encode()
                self._asset = Asset(b"application/json", body)
                self._fetched_at = now
            return self._asset

    async def _build(self) -> dict[str, Any]:
        names = self.routed_services()
        results = await asyncio.gather(
            *(self._fetch(self._balancers[name]) for name in names), return_exceptions=True
        )
        documents: list[tuple[str, dict[str, Any]]] = []
        failed: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                failed[name] = f"error: {result}"
            else:
                documents.append((name, result))
        if failed:
            raise OpenAPIUnavailable(failed)
        return self.merge(documents)

    async def _fetch(self, balancer: Balancer) -> dict[str, Any]:
        now = time.monotonic()
        candidates: list[Instance] = sorted(
            balancer.instances, key=lambda inst: not inst.available(now)
        )
        error = "no instance"
        for inst in candidates:
            try:
                status, _, body = await fetch(
                    inst, OPENAPI_PATH, timeout=OPENAPI_FETCH_TIMEOUT, limit=OPENAPI_MAX_BYTES
                )
            except (OSError, TimeoutError, ValueError) as exc:
                error = type(exc).__name__
                continue
            if status != 200:
                error = f"status {status}"
                continue
            try:
                document = json.loads(body)
            except ValueError:
                error = "not JSON"
                continue
            if isinstance(document, dict) and isinstance(document.get("paths"), dict):
                return document
            error = "not an OpenAPI document"
        raise LookupError(error)

    def merge(self, documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """One document from each service's: the operations the gateway routes to it (and the
        gateway's own paths once), the components and tags of all."""
        first = documents[0][1] if documents else {}
        merged: dict[str, Any] = {
            "openapi": first.get("openapi", "3.1.0"),
            "info": {"title": TITLE, "version": first.get("info", {}).get("version", "")},
            "paths": {},
        }
        paths: dict[str, dict[str, Any]] = merged["paths"]
        components: dict[str, dict[str, Any]] = {}
        tags: dict[str, Any] = {}
        for service, document in documents:
            for path, item in document.get("paths", {}).items():
                if not isinstance(item, dict):
                    continue
                own = path in OWN_PATHS
                for method, operation in item.items():
                    if method in _OPERATIONS:
                        route = self._router.route_for(method.upper(), path)
                        if own or (route is not None and route.service == service):
                            paths.setdefault(path, {}).setdefault(method, operation)
                    else:
                        paths.setdefault(path, {}).setdefault(method, operation)
            for kind, entries in document.get("components", {}).items():
                if isinstance(entries, dict):
                    bucket = components.setdefault(kind, {})
                    for name, entry in entries.items():
                        bucket.setdefault(name, entry)
            for tag in document.get("tags", []):
                if isinstance(tag, dict) and "name" in tag:
                    tags.setdefault(tag["name"], tag)
        # A path item left with parameters only (every operation routed elsewhere) is no path.
        for path in [p for p, item in paths.items() if not _OPERATIONS & item.keys()]:
            del paths[path]
        if components:
            merged["components"] = components
        if tags:
            merged["tags"] = list(tags.values())
        return merged
