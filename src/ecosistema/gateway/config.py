"""The gateway's declarative configuration: services and their instances, routes, limits, CORS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ecosistema.platform.config import Settings
from ecosistema.platform.proxies import proxy_networks

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitRule(_Model):
    """A token bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second."""

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class ServiceConfig(_Model):
    """One upstream service: its instances and how the gateway balances, checks and breaks them."""

    instances: list[str] = Field(default_factory=list)
    # Served by an ASGI app in the gateway's own process (the embedded shape), not over HTTP.
    in_process: bool = False
    balancer: Literal["round_robin", "least_outstanding"] = "round_robin"
    health_path: str | None = "/readyz"
    health_interval_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    unhealthy_threshold: int = Field(default=2, ge=1)
    healthy_threshold: int = Field(default=1, ge=1)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=10.0, gt=0)
    failure_statuses: frozenset[int] = frozenset({502, 503, 504})
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    max_idle_connections: int = Field(default=128, ge=0)
    # Below the 5 s keep-alive of uvicorn and most servers, so the gateway drops an idle
    # connection before the upstream does and rarely sends a request into a closing socket.
    idle_timeout_seconds: float = Field(default=4.0, gt=0)

    @field_validator("instances")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"instance {url!r} must be an http:// or https:// URL")
        return urls

    @model_validator(mode="after")
    def _somewhere(self) -> ServiceConfig:
        if not self.instances and not self.in_process:
            raise ValueError("a service needs at least one instance, or in_process: true")
        return self


class CacheRule(_Model):
    """How a route's anonymous GET responses are kept by the gateway's response cache."""

    ttl_seconds: float = Field(default=60.0, gt=0)
    # Request headers whose values select different cached copies (e.g. accept-language).
    vary: list[str] = Field(default_factory=list)
    # The upstream's ``no-cache`` asks caches to revalidate before reuse; with this on, the
    # purge on the service's events is that revalidation, so such responses are kept too.
    revalidate_by_events: bool = False
    # JSON fields whose values tag a cached response, so an event naming one purges it.
    tag_fields: list[str] = Field(default_factory=lambda: ["id", "slug", "sku"])
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1)

    @field_validator("vary")
    @classmethod
    def _lower(cls, names: list[str]) -> list[str]:
        return [n.strip().lower() for n in names if n.strip()]


class ResponseCacheConfig(_Model):
    """The response cache: memory per worker, bounded in bytes, purged by events and TTL."""

    enabled: bool = True
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Where purge events come from (``Settings.bus_url`` unless set); None: TTL only.
    bus_url: str | None = None
    bus_stream: str = "ecosistema"
    purge_events: list[str] = Field(
        default_factory=lambda: [
            "ProductCreated",
            "ProductUpdated",
            "ProductArchived",
            "CategoryCreated",
            "CategoryUpdated",
            "CategoryDeleted",
            "StockChanged",
        ]
    )
    # Payload fields whose values name the cached responses an event makes stale.
    purge_fields: list[str] = Field(
        default_factory=lambda: ["product_id", "id", "slug", "sku", "skus"]
    )


class RouteConfig(_Model):
    """A path prefix and methods sent to one service; public routes skip edge authentication."""

    prefix: str
    service: str
    methods: frozenset[str] | None = None
    public: bool = False
    # False on a public route whose service reads the request's credentials itself, or none:
    # sign-in and token refresh, where a client may still attach an expired access token.
    verify_credentials: bool = True
    name: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)
    rate_limit: RateLimitRule | None = None
    # False for probes (liveness, readiness): behind one proxy address, a limited probe would
    # read as the platform being down.
    rate_limited: bool = True
    max_body_bytes: int | None = Field(default=None, ge=0)
    cache: CacheRule | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        prefix = prefix.removesuffix("*")
        if not prefix.startswith("/"):
            raise ValueError("a route prefix starts with '/'")
        return prefix

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, methods: Any) -> Any:
        if methods is None:
            return None
        upper = frozenset(str(m).upper() for m in methods)
        unknown = upper - _METHODS
        if unknown:
            raise ValueError(f"unknown methods: {', '.join(sorted(unknown))}")
        return upper

    @model_validator(mode="after")
    def _credentials_left_to_public_routes(self) -> RouteConfig:
        if not self.verify_credentials and not self.public:
            raise ValueError("verify_credentials: false is for public routes only")
        return self

    @property
    def label(self) -> str:
        """The route's name in metrics and logs."""
        return self.name or self.prefix


class AuthConfig(_Model):
    """Edge authentication: where identity publishes its keys and how the principal is passed on."""

    jwks_service: str = "identity"
    jwks_path: str = "/.well-known/jwks.json"
    jwks_ttl_seconds: float = Field(default=300.0, gt=0)
    jwks_min_refresh_seconds: float = Field(default=10.0, ge=0)
    issuer: str = "ecosistema"
    audience: str = "ecosistema-api"
    api_key_header: str = "x-api-key"
    principal_secret: SecretStr | None = None
    principal_ttl_seconds: int = Field(default=60, ge=1)


class RateLimitConfig(_Model):
    """Token buckets per principal and route; in memory per process, or shared in Redis."""

    enabled: bool = True
    backend_url: str = "memory://"
    key_prefix: str = "eco:rl:"
    anonymous: RateLimitRule = RateLimitRule(rate=10, burst=30)
    authenticated: RateLimitRule = RateLimitRule(rate=30, burst=60)
    roles: dict[str, RateLimitRule] = Field(default_factory=dict)


class CorsConfig(_Model):
    """Which browser origins may call the API, answered at the edge."""

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "X-API-Key",
            "X-Request-ID",
            "traceparent",
        ]
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: [
            "X-Request-ID",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ]
    )
    allow_credentials: bool = False
    max_age_seconds: int = 600


class GatewayConfig(_Model):
    """Everything one gateway worker needs; built from a route-table file and ``Settings``."""

    services: dict[str, ServiceConfig]
    routes: list[RouteConfig]
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    cors: CorsConfig = CorsConfig()
    response_cache: ResponseCacheConfig = ResponseCacheConfig()
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    access_log: bool = True
    metrics_path: str | None = "/metrics"
    # Proxies (addresses or CIDR networks) in front of the gateway: from such a peer the client
    # address is read from X-Forwarded-For (ecosistema.platform.proxies), for rate limits, the
    # access log and what the services are told. Default: Settings.trusted_proxies.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Only without trusted_proxies: pass an incoming X-Forwarded-For chain on from any peer,
    # without believing it for the client address.
    trust_forwarded: bool = False
    # A method no route of the path lists goes, as public and uncached, to the one service whose
    # routes cover the path, which answers 405 with the Allow of that very path. Only for tables
    # that list every method their services serve (generated ones): none can then run anything.
    forward_unlisted_methods: bool = False

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, entries: list[str]) -> list[str]:
        proxy_networks(entries)
        return [entry.strip() for entry in entries]

    @model_validator(mode="after")
    def _services_exist(self) -> GatewayConfig:
        for route in self.routes:
            if route.service not in self.services:
                raise ValueError(f"route {route.prefix!r} names unknown service {route.service!r}")
        return self


def load_route_table(path: str | Path) -> dict[str, Any]:
    """Read a route table from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a route table is a mapping with 'services' and 'routes'")
    return data


def gateway_config(
    table: dict[str, Any] | str | Path, settings: Settings | None = None
) -> GatewayConfig:
    """Build the gateway's configuration from a route table, taking secrets and defaults from
    ``Settings`` (issuer, audience, the principal secret, CORS origins, Redis for rate limits,
    the event bus that purges the response cache)."""
    data = dict(table) if isinstance(table, dict) else load_route_table(table)
    if settings is not None:
        auth = dict(data.get("auth") or {})
        auth.setdefault("issuer", settings.jwt_issuer)
        auth.setdefault("audience", settings.jwt_audience)
        auth.setdefault("jwks_ttl_seconds", settings.jwks_cache_seconds)
        auth.setdefault("jwks_min_refresh_seconds", settings.jwks_refresh_min_interval_seconds)
        if settings.gateway_secret is not None:
            auth.setdefault("principal_secret", settings.gateway_secret)
        data["auth"] = auth
        limits = dict(data.get("rate_limits") or {})
        if settings.cache_url.startswith(("redis://", "rediss://", "unix://")):
            limits.setdefault("backend_url", settings.cache_url)
            limits.setdefault("key_prefix", f"{settings.cache_prefix}rl:")
        data["rate_limits"] = limits
        cache = dict(data.get("response_cache") or {})
        cache.setdefault("bus_url", settings.bus_url)
        cache.setdefault("bus_stream", settings.bus_stream)
        data["response_cache"] = cache
        cors = dict(data.get("cors") or {})
        cors.setdefault("allow_origins", list(settings.cors_origins))
        data["cors"] = cors
        data.setdefault("trusted_proxies", list(settings.trusted_proxies))
    return GatewayConfig.model_validate(data)


def config_problems(exc: ValidationError) -> list[str]:
    """One line per mistake in a route table: where it is and the rule it breaks."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "the table"
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return problems
