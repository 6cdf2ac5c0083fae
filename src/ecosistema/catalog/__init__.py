"""Catalog: products, variants, categories, prices and price lists, inventory and reservations,
search, and bulk import and export."""

from __future__ import annotations

from pathlib import Path

from ecosistema.catalog import inventory
from ecosistema.catalog.api import router
from ecosistema.catalog.client import InProcessCatalogClient
from ecosistema.catalog.demo import seed_demo
from ecosistema.catalog.events import SUBSCRIPTIONS, follow_writes_of_other_processes
from ecosistema.catalog.models import idempotency_keys, metadata, outbox
from ecosistema.catalog.transfer import import_products_command
from ecosistema.platform.idempotency import idempotency_purge_job
from ecosistema.platform.service import Job, Service

descriptor = Service(
    name="catalog",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    subscriptions=SUBSCRIPTIONS,
    jobs=(
        Job(
            "release-expired-reservations",
            lambda settings: settings.catalog_reservation_sweep_seconds,
            inventory.sweep_expired_reservations,
        ),
        idempotency_purge_job(idempotency_keys),
    ),
    make_client=InProcessCatalogClient,
    seed_demo=seed_demo,
    on_start=follow_writes_of_other_processes,
)

__all__ = ["descriptor", "import_products_command", "seed_demo"]
