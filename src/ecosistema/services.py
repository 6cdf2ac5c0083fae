"""The registry of bounded-context services, imported by name when a process hosts them."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from ecosistema.platform.service import Service

SERVICE_NAMES: tuple[str, ...] = ("identity", "catalog", "orders", "payments", "sales", "webhooks")


def load_service(name: str) -> Service:
    """Import a service package and return its descriptor."""
    if name not in SERVICE_NAMES:
        raise LookupError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
    module = importlib.import_module(f"ecosistema.{name}")
    service: Service = module.descriptor
    return service


def load_services(names: Iterable[str] | None = None) -> list[Service]:
    """Descriptors for the named services, or for all of them."""
    return [load_service(n) for n in (names or SERVICE_NAMES)]
