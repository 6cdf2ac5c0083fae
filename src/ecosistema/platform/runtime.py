"""The runtime: builds each service's context, migrates, and runs relays, consumers and jobs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from ecosistema.platform.cache import create_cache
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from ecosistema.platform.events import IdempotentConsumer, OutboxRelay, create_bus
from ecosistema.platform.service import Job, Service, ServiceContext, Subscription

log = structlog.get_logger(__name__)


class Runtime:
    """One process's view of the platform: the services it hosts and what they share."""

    def __init__(self, settings: Settings, services: Sequence[Service]) -> None:
        from ecosistema.platform.auth import TokenVerifier
        from ecosistema.platform.crypto import load_cipher

        self.settings = settings
        self.services = {s.name: s for s in services}
        self.cache = create_cache(settings.cache_url, prefix=settings.cache_prefix)
        self.bus = create_bus(settings.bus_url, stream=settings.bus_stream)
        self.cipher = load_cipher(settings)
        self.verifier = TokenVerifier(settings, cache=self.cache)
        self.contexts: dict[str, ServiceContext] = {}
        for service in services:
            db = Database(
                service.name,
                settings.database_url_for(service.name),
                schema_prefix=settings.database_schema_prefix,
                echo=settings.database_echo,
                pool_size=settings.database_pool_size,
            )
            self.contexts[service.name] = ServiceContext(
                service=service,
                settings=settings,
                db=db,
                bus=self.bus,
                cache=self.cache,
                runtime=self,
            )
        self._clients: dict[str, Any] = {}
        self.relays: dict[str, OutboxRelay] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def client(self, name: str) -> Any:
        """A hosted service's in-process client, else its HTTP client."""
        if name not in self._clients:
            if name in self.contexts:
                service = self.services[name]
                if service.make_client is None:
                    raise LookupError(f"service {name!r} has no client")
                self._clients[name] = service.make_client(self.contexts[name])
            else:
                module = importlib.import_module(f"ecosistema.{name}.client")
                self._clients[name] = module.http_client(self.settings)
        return self._clients[name]

    def use_client(self, name: str, client: Any) -> None:
        """Reach service ``name`` through ``client`` (a service hosted elsewhere, or a test's)."""
        self._clients[name] = client

    async def migrate(self) -> None:
        """Apply every hosted service's migrations."""
        for ctx in self.contexts.values():
            try:
                await ctx.db.migrate(ctx.service.migrations, attributes={"cipher": self.cipher})
            except (OSError, DBAPIError) as exc:
                cause = getattr(exc, "orig", None) or exc
                if not isinstance(cause, OSError):
                    raise  # the database answered: a migration's own error
                setting = (
                    f"ECOSISTEMA_DATABASE_URLS[{ctx.name}]"
                    if ctx.name in self.settings.database_urls
                    else "ECOSISTEMA_DATABASE_URL"
                )
                url = _address(self.settings.database_url_for(ctx.name))
                raise BackendUnreachableError(
                    f"cannot reach the database at {setting}={url}: {one_line(cause)}"
                ) from exc

    async def start(self, *, migrate: bool = True, background: bool = True) -> None:
        """Migrate, connect the bus, run start hooks; then relays, consumers and jobs."""
        if migrate:
            await self.migrate()
        try:
            await self.bus.start()
        except Exception as exc:
            # A bus that cannot be reached (refused, no answer in time, a client's own error):
            # one line that names the setting and the address, its password left out.
            with contextlib.suppress(Exception):
                await self.bus.stop()
            # The bus's own ConnectionError says enough without its type.
            cause = one_line(exc, with_type=type(exc) is not ConnectionError)
            raise BackendUnreachableError(
                f"cannot reach the event bus at ECOSISTEMA_BUS_URL="
                f"{_address(self.settings.bus_url)}: {cause}".rstrip(": ")
            ) from exc
        for ctx in self.contexts.values():
            if ctx.service.on_start:
                await ctx.service.on_start(ctx)
        for ctx in self.contexts.values():
            for sub in ctx.service.subscriptions:
                await self._subscribe(ctx, sub)
            relay = OutboxRelay(ctx.outbox, ctx.db, self.bus)
            self.relays[ctx.name] = relay
            if background:
                relay.start()
                for job in ctx.service.jobs:
                    self._tasks.append(asyncio.create_task(self._run_job(ctx, job)))
        self.started = True

    async def _subscribe(self, ctx: ServiceContext, sub: Subscription) -> None:
        async def _handle(session: Any, envelope: Any) -> None:
            await sub.handler(ctx, session, envelope)

        wanted = sub.wanted

        async def _wanted(envelope: Any) -> bool:
            assert wanted is not None
            return await wanted(ctx, envelope)

        consumer = IdempotentConsumer(
            f"{ctx.name}.{sub.name}",
            ctx.db,
            ctx.outbox,
            _handle,
            wanted=_wanted if wanted is not None else None,
            driver=sub.driver,
        )
        await self.bus.subscribe(consumer.name, sub.types, consumer)

    async def _run_job(self, ctx: ServiceContext, job: Job) -> None:
        while True:
            await asyncio.sleep(job.interval(ctx.settings))
            try:
                await job.run(ctx)
            except Exception as exc:
                log.warning("job_failed", service=ctx.name, job=job.name, error=repr(exc))

    async def drain_outboxes(self, timeout: float = 10.0) -> None:
        """Relay every pending event now (tests, shutdown, CLI commands)."""
        for relay in self.relays.values():
            await relay.drain(timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for relay in self.relays.values():
            await relay.stop()
        await self.bus.stop()
        await self.cache.close()
        for ctx in self.contexts.values():
            await ctx.db.dispose()
        self.started = False


class BackendUnreachableError(ConnectionError):
    """A backend the runtime starts with cannot be reached; the message names its setting and
    address (credentials left out), in one line."""


def one_line(exc: BaseException, *, with_type: bool = True) -> str:
    """An exception in one line: its type and the first line of its message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ") if with_type else text


def _address(url: str) -> str:
    """A URL with its credentials (user and password, or a token) left out."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    return f"{scheme}://****@{netloc.rsplit('@', 1)[1]}{slash}{path}"
