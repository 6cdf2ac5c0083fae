"""The service descriptor every bounded context exports, and the context its code runs with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from sqlalchemy import MetaData

from ecosistema.platform.cache import Cache
from ecosistema.platform.config import Settings
from ecosistema.platform.db import Database
from ecosistema.platform.events import EventBus, EventEnvelope, Outbox

if TYPE_CHECKING:
    from ecosistema.platform.crypto import FieldCipher
    from ecosistema.platform.runtime import Runtime

# A handler is given an ORM session, or with ``Subscription.driver`` a DriverTransaction.
EventHandler = Callable[["ServiceContext", Any, EventEnvelope], Awaitable[None]]
EventFilter = Callable[["ServiceContext", EventEnvelope], Awaitable[bool]]
JobFn = Callable[["ServiceContext"], Awaitable[None]]
StartHook = Callable[["ServiceContext"], Awaitable[None]]
DemoSeeder = Callable[["ServiceContext"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Subscription:
    """A handler for some event types; it runs in the consumer service's own transaction.

    ``wanted``, when given, is asked first and outside any transaction; an event it declines is
    one the handler would have done nothing with (no write, no record of it). With ``driver``,
    the handler is given a :class:`~ecosistema.platform.db.DriverTransaction` instead of an ORM
    session (hot paths)."""

    name: str
    types: tuple[str, ...]
    handler: EventHandler
    wanted: EventFilter | None = None
    driver: bool = False


@dataclass(frozen=True)
class Job:
    """A periodic background job (sweepers, key rotation checks, retraining)."""

    name: str
    interval_seconds: float | Callable[[Settings], float]
    run: JobFn

    def interval(self, settings: Settings) -> float:
        """Seconds between runs; a callable reads it from the hosting process's settings."""
        if callable(self.interval_seconds):
            return float(self.interval_seconds(settings))
        return float(self.interval_seconds)


@dataclass(frozen=True)
class EncryptedColumn:
    """A column of field-encrypted personal data, re-encrypted by ``ecosistema keys rotate``."""

    table: str
    column: str
    id_column: str = "id"


@dataclass
class Service:
    """What a bounded context contributes to the platform: one per service package."""

    name: str
    metadata: MetaData
    outbox: Outbox
    migrations: Path
    router: APIRouter | None = None
    root_router: APIRouter | None = None
    subscriptions: Sequence[Subscription] = ()
    jobs: Sequence[Job] = ()
    encrypted_columns: Sequence[EncryptedColumn] = ()
    on_start: StartHook | None = None
    make_client: Callable[[ServiceContext], Any] | None = None
    seed_demo: DemoSeeder | None = None


@dataclass
class ServiceContext:
    """Everything a service's use cases need at run time, owned by the runtime."""

    service: Service
    settings: Settings
    db: Database
    bus: EventBus
    cache: Cache
    runtime: Runtime
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def outbox(self) -> Outbox:
        return self.service.outbox

    @property
    def cipher(self) -> FieldCipher:
        return self.runtime.cipher

    def client(self, service: str) -> Any:
        """The typed client of another service (in process or over HTTP)."""
        return self.runtime.client(service)


def context_of(name: str) -> Callable[[Request], Awaitable[ServiceContext]]:
    """A FastAPI dependency that yields the named service's context."""

    # async: FastAPI runs a plain function dependency on a worker thread, once per request.
    async def _dependency(request: Request) -> ServiceContext:
        ctx: ServiceContext = request.app.state.runtime.contexts[name]
        return ctx

    _dependency.__name__ = f"{name}_context"
    return _dependency
