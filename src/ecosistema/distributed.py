"""The distributed shape on one machine: every service as its own processes behind the gateway.

``ecosistema up --distributed`` checks that the settings name shared backends (PostgreSQL, a
networked bus, Redis), migrates every service once, optionally seeds the demo data, provisions
the API keys services present to each other (orders reserving stock in catalog, orders looking
customers up in identity, payments reading orders), plans ports for the replicas, writes the
gateway's route table for them, gives every process the addresses of every replica it calls,
and hands the processes to the ``Supervisor``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import SecretStr

from ecosistema.platform.config import Settings
from ecosistema.services import SERVICE_NAMES, load_services
from ecosistema.supervisor import ProcessSpec

API_PREFIX = "/api/v1"
DEFAULT_BASE_PORT = 8100
# Scopes of the key orders presents to catalog for quotes and reservations.
CATALOG_KEY_SCOPES = ("inventory:write", "catalog:write")
# Scopes of the key services present to identity to look users up.
IDENTITY_KEY_SCOPES = ("users:read",)
# Scopes of the key services present to orders to read the orders they charge or follow.
ORDERS_KEY_SCOPES = ("orders:read_all",)
SERVICE_ACCOUNT_DOMAIN = "system.ecosistema.dev"
# Public catalog reads: the gateway's response cache keeps them, purged by catalog's events.
CACHED_PREFIXES = frozenset({f"{API_PREFIX}/products", f"{API_PREFIX}/categories"})


class DistributedSettingsError(ValueError):
    """The settings do not describe a distributed deployment (SQLite, in-memory bus or cache)."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One process of one service."""

    service: str
    replica: int
    host: str
    port: int

    @property
    def name(self) -> str:
        """``catalog-1``, ``catalog-2``, ..."""
        return f"{self.service}-{self.replica}"

    @property
    def url(self) -> str:
        """Where the instance listens."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def check_distributed_settings(settings: Settings) -> None:
    """Refuse settings that cannot be shared by several processes, saying what to set."""
    problems: list[str] = []
    urls = {name: settings.database_url_for(name) for name in SERVICE_NAMES}
    sqlite = sorted(name for name, url in urls.items() if url.startswith("sqlite"))
    if sqlite:
        problems.append(
            f"the database of {', '.join(sqlite)} is SQLite; set ECOSISTEMA_DATABASE_URL to "
            "PostgreSQL, e.g. postgresql+asyncpg://user:password@127.0.0.1:5432/ecosistema"
        )
    if settings.bus_url.startswith("memory://"):
        problems.append(
            "the event bus is in memory; set ECOSISTEMA_BUS_URL to nats://127.0.0.1:4222, "
            "redis://127.0.0.1:6379/0 or kafka://127.0.0.1:9092"
        )
    if settings.cache_url.startswith("memory://"):
        problems.append(
            "the cache is in memory; set ECOSISTEMA_CACHE_URL to redis://127.0.0.1:6379/0 "
            "(rate limits, lockouts and revoked sessions must be shared)"
        )
    if problems:
        raise DistributedSettingsError(
            "the distributed shape needs shared backends: " + "; ".join(problems)
        )


def parse_replicas(values: Iterable[str], default: int) -> dict[str, int]:
    """Replicas per service from ``NAME=N`` items, ``default`` for the others."""
    if default < 1:
        raise ValueError("replicas must be at least 1")
    counts = dict.fromkeys(SERVICE_NAMES, default)
    for item in values:
        name, sep, count = item.partition("=")
        if not sep or name not in counts:
            raise ValueError(f"--replicas takes SERVICE=N with a service of {SERVICE_NAMES}")
        try:
            number = int(count)
        except ValueError:
            raise ValueError(f"--replicas {item!r}: N is a whole number") from None
        if number < 1:
            raise ValueError(f"--replicas {item!r}: N is at least 1")
        counts[name] = number
    return counts


def plan_instances(
    replicas: Mapping[str, int], *, host: str = "127.0.0.1", base_port: int = DEFAULT_BASE_PORT
) -> list[Instance]:
    """One instance per replica, on consecutive ports from ``base_port``, services in order."""
    instances: list[Instance] = []
    port = base_port
    for service in SERVICE_NAMES:
        for replica in range(1, replicas.get(service, 0) + 1):
            instances.append(Instance(service, replica, host, port))
            port += 1
    if port - 1 > 65535:
        raise ValueError(f"not enough ports above {base_port} for {len(instances)} instances")
    return instances


def _needs_credentials(dependant: Dependant) -> bool:
    from ecosistema.platform.auth import current_principal

    return any(
        dep.call is current_principal or _needs_credentials(dep) for dep in dependant.dependencies
    )


def _static_prefix(path: str) -> str:
    """The path up to its first parameter: ``/api/v1/carts/{id}/items`` -> ``/api/v1/carts``."""
    kept: list[str] = []
    for segment in path.split("/")[1:]:
        if "{" in segment:
            break
        kept.append(segment)
    return "/" + "/".join(kept)


def service_routes(
    names: Sequence[str] = SERVICE_NAMES, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Gateway routes for the services' HTTP APIs, derived from their routers.

    Each route's prefix is its path up to the first path parameter; a (prefix, method) is public
    at the edge when any endpoint under it can be called without credentials (the service then
    decides, as it does when reached directly). Public sign-in, sign-up and reset routes get the
    stricter ``gateway_auth_rate``/``gateway_auth_burst``; public catalog reads are cached.
    """
    settings = settings or Settings()
    groups: dict[tuple[str, str], tuple[str, bool]] = {}
    for service in load_services(names):
        mounted = [(service.router, API_PREFIX), (service.root_router, "")]
        for router, prefix in mounted:
            if router is None:
                continue
            for endpoint in router.routes:
                if not isinstance(endpoint, APIRoute):
                    continue
                path = _static_prefix(prefix + endpoint.path)
                public = not _needs_credentials(endpoint.dependant)
                for method in endpoint.methods or ():
                    key = (path, method)
                    owner, was_public = groups.get(key, (service.name, False))
                    if owner != service.name:
                        raise ValueError(
                            f"{method} {path} is served by both {owner} and {service.name}"
                        )
                    groups[key] = (owner, was_public or public)
    merged: dict[tuple[str, str, bool], set[str]] = {}
    for (path, method), (owner, public) in groups.items():
        merged.setdefault((path, owner, public), set()).add(method)
    routes = []
    for (path, owner, public), methods in sorted(merged.items()):
        route: dict[str, Any] = {
            "prefix": path,
            "service": owner,
            "methods": sorted(methods),
            "public": public,
        }
        if public and path.startswith(f"{API_PREFIX}/auth/"):
            # Sign-in, sign-up and password reset: a tighter budget per client than the default,
            # and credentials left to identity (a client may still attach an expired access
            # token to its refresh).
            route["verify_credentials"] = False
            route["rate_limit"] = {
                "rate": settings.gateway_auth_rate,
                "burst": settings.gateway_auth_burst,
            }
        if public and path in CACHED_PREFIXES and set(methods) == {"GET"}:
            route["cache"] = {
                "ttl_seconds": settings.gateway_cache_seconds,
                "revalidate_by_events": True,
                "vary": ["accept-language"],
            }
        routes.append(route)
    return routes


def route_table(
    instances: Sequence[Instance],
    *,
    settings: Settings | None = None,
    rate_limits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The gateway's route table for these instances, with the gateway settings (rate limits,
    response cache, access log); buckets live in Redis when the cache is Redis
    (``gateway_config`` fills that in)."""
    settings = settings or Settings()
    services: dict[str, dict[str, Any]] = {}
    for instance in instances:
        entry = services.setdefault(
            instance.service,
            {
                "instances": [],
                "balancer": "least_outstanding",
                "health_path": "/readyz",
                # /readyz pings the database, bus and cache: give a busy instance time to answer
                # before ejecting it.
                "health_timeout_seconds": 5.0,
                "unhealthy_threshold": 3,
            },
        )
        entry["instances"].append(instance.url)
    names = [n for n in SERVICE_NAMES if n in services]
    table: dict[str, Any] = {
        "services": services,
        "routes": service_routes(names, settings),
        # The routes list every method of every service: a method they do not list on a path
        # is one the service refuses there, with that path's own Allow.
        "forward_unlisted_methods": True,
        "response_cache": {"max_bytes": settings.gateway_cache_max_bytes},
        "access_log": settings.gateway_access_log,
        "max_body_bytes": settings.max_body_bytes,
    }
    if "identity" in services:
        table["auth"] = {"jwks_service": "identity", "jwks_path": "/.well-known/jwks.json"}
    limits = {**settings.gateway_rate_limits, **(rate_limits or {})}
    if limits:
        table["rate_limits"] = limits
    return table


def service_urls(instances: Sequence[Instance], replica: int) -> dict[str, str]:
    """The ``ECOSISTEMA_<SERVICE>_URL`` settings for the ``replica``-th process of a service:
    every instance of each callee, comma-separated, so calls between services are balanced
    over the callee's replicas and move on from one that is down. The list starts at a
    different instance for each caller replica, so their first calls spread too."""
    by_service: dict[str, list[Instance]] = {}
    for instance in instances:
        by_service.setdefault(instance.service, []).append(instance)
    urls = {}
    for name, group in by_service.items():
        first = (replica - 1) % len(group)
        rotated = group[first:] + group[:first]
        urls[f"ECOSISTEMA_{name.upper()}_URL"] = ",".join(i.url for i in rotated)
    return urls


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """The API keys services present to each other in this deployment."""

    catalog: str
    identity: str
    orders: str


async def prepare(settings: Settings, *, demo: bool) -> tuple[ServiceKeys, dict[str, Any]]:
    """Migrate every service once, seed demo data when asked, and return the API keys services
    present to catalog, identity and orders (the configured ones, or ones provisioned and kept
    under ``data_dir``) with what the demo seeding returned."""
    from ecosistema.platform.runtime import Runtime

    runtime = Runtime(settings, load_services())
    await runtime.start(background=False)
    try:
        seeded: dict[str, Any] = {}
        if demo:
            for name, ctx in runtime.contexts.items():
                if ctx.service.seed_demo is not None:
                    seeded[name] = await ctx.service.seed_demo(ctx)
        identity = runtime.contexts["identity"]
        keys = ServiceKeys(
            catalog=await _service_api_key(
                identity, settings, settings.catalog_api_key, "catalog", CATALOG_KEY_SCOPES
            ),
            identity=await _service_api_key(
                identity, settings, settings.identity_api_key, "identity", IDENTITY_KEY_SCOPES
            ),
            orders=await _service_api_key(
                identity, settings, settings.orders_api_key, "orders", ORDERS_KEY_SCOPES
            ),
        )
        await runtime.drain_outboxes()
        return keys, seeded
    finally:
        await runtime.stop()


async def _service_api_key(
    identity: Any,
    settings: Settings,
    configured: SecretStr | None,
    callee: str,
    scopes: Sequence[str],
) -> str:
    """The configured key for calls to ``callee``, else the one kept under ``data_dir`` while it
    is still valid with ``scopes``, else a new one for a service account of its own."""
    from ecosistema.identity.service import create_admin, create_api_key, verify_api_key

    value = configured.get_secret_value() if configured is not None else ""
    if value:
        return value
    path = settings.data_dir / "service-keys" / f"{callee}.key"
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        found = await verify_api_key(identity, kept) if kept else None
        if found is not None and set(scopes) <= set(found.scopes):
            return kept
    email = f"services-to-{callee}-{secrets.token_hex(4)}@{SERVICE_ACCOUNT_DOMAIN}"
    account = await create_admin(identity, email=email, password=secrets.token_urlsafe(24))
    created = await create_api_key(
        identity,
        user_id=account.id,
        role="admin",
        name=f"services to {callee} (ecosistema up --distributed)",
        scopes=list(scopes),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(created.key, encoding="utf-8")
    return created.key


def process_specs(
    instances: Sequence[Instance],
    *,
    routes_file: Path,
    gateway_host: str,
    gateway_port: int,
    gateway_workers: int,
    env: Mapping[str, str],
    python: str = sys.executable,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> list[ProcessSpec]:
    """The command lines: ``ecosistema serve`` per instance, then ``ecosistema gateway`` (on
    HTTPS with ``certfile``/``keyfile``)."""
    tls: list[str] = []
    if certfile:
        tls += ["--certfile", str(Path(certfile).resolve())]
        if keyfile:
            tls += ["--keyfile", str(Path(keyfile).resolve())]
    scheme = "https" if certfile else "http"
    specs = []
    for instance in instances:
        specs.append(
            ProcessSpec(
                name=instance.name,
                argv=[
                    python,
                    "-m",
                    "ecosistema",
                    "serve",
                    instance.service,
                    "--host",
                    instance.host,
                    "--port",
                    str(instance.port),
                ],
                env={
                    **env,
                    **service_urls(instances, instance.replica),
                    "ECOSISTEMA_SERVICE_NAME": f"ecosistema-{instance.service}",
                },
                ready_url=f"{instance.url}/readyz",
            )
        )
    specs.append(
        ProcessSpec(
            name="gateway",
            argv=[
                python,
                "-m",
                "ecosistema",
                "gateway",
                "--routes",
                str(routes_file),
                "--host",
                gateway_host,
                "--port",
                str(gateway_port),
                "--workers",
                str(gateway_workers),
                *tls,
            ],
            env={**env, "ECOSISTEMA_SERVICE_NAME": "ecosistema-gateway"},
            # Started once the services answer, so it never meets them down (and opens no
            # breaker) on its first requests.
            after_previous_ready=True,
            ready_url=f"{scheme}://{_loopback(gateway_host)}:{gateway_port}/.well-known/jwks.json",
        )
    )
    return specs


def _loopback(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - listening everywhere; reach it on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def write_route_table(table: Mapping[str, Any], data_dir: Path) -> Path:
    """Write the generated route table under ``data_dir`` and return its path."""
    path = data_dir / "distributed" / "routes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return path


def shared_environment(
    settings: Settings, *, gateway_url: str, keys: ServiceKeys
) -> dict[str, str]:
    """Settings every child must agree on that may not be in the environment yet."""
    env: dict[str, str] = {
        "ECOSISTEMA_CATALOG_API_KEY": keys.catalog,
        "ECOSISTEMA_IDENTITY_API_KEY": keys.identity,
        "ECOSISTEMA_ORDERS_API_KEY": keys.orders,
    }
    secret = settings.gateway_secret
    if secret is None or not secret.get_secret_value():
        # One secret for this run, shared by the gateway and every service.
        env["ECOSISTEMA_GATEWAY_SECRET"] = secrets.token_urlsafe(32)
    if "public_url" not in settings.model_fields_set and "ECOSISTEMA_PUBLIC_URL" not in os.environ:
        env["ECOSISTEMA_PUBLIC_URL"] = gateway_url
    return env


def ports_in_use(ports: Iterable[tuple[str, int]]) -> list[int]:
    """Which of these ``(host, port)`` cannot be bound now."""
    import socket

    busy = []
    for host, port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def run_distributed(
    settings: Settings,
    *,
    host: str,
    port: int,
    gateway_workers: int,
    replicas: Mapping[str, int],
    base_port: int,
    demo: bool,
    ready_timeout: float = 120.0,
    on_ready: Any = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Run every service as its own processes plus the gateway (serving HTTPS when given a
    certificate), until SIGTERM or SIGINT."""
    import asyncio

    from ecosistema.supervisor import Supervisor

    check_distributed_settings(settings)
    instances = plan_instances(replicas, base_port=base_port)
    busy = ports_in_use([(i.host, i.port) for i in instances] + [(host, port)])
    if busy:
        raise DistributedSettingsError(
            f"port(s) {', '.join(map(str, busy))} are in use; choose --port / --base-port"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys, seeded = asyncio.run(prepare(settings, demo=demo))
    routes_file = write_route_table(route_table(instances), settings.data_dir)
    gateway_url = f"{'https' if certfile else 'http'}://{_loopback(host)}:{port}"
    env = shared_environment(settings, gateway_url=gateway_url, keys=keys)
    specs = process_specs(
        instances,
        routes_file=routes_file,
        gateway_host=host,
        gateway_port=port,
        gateway_workers=gateway_workers,
        env=env,
        certfile=certfile,
        keyfile=keyfile,
    )
    supervisor = Supervisor(specs)

    def ready() -> None:
        if on_ready is not None:
            on_ready(gateway_url, instances, seeded)

    supervisor.run(ready_timeout=ready_timeout, on_ready=ready)
