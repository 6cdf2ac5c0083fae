"""Orders: carts, checkout, the order life cycle and its history, fulfilment, vouchers, tax
rates and shipping methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecosistema.orders import service as _service
from ecosistema.orders.api import router
from ecosistema.orders.client import InProcessOrdersClient
from ecosistema.orders.events import SUBSCRIPTIONS
from ecosistema.orders.models import idempotency_keys, metadata, outbox
from ecosistema.platform.idempotency import idempotency_purge_job
from ecosistema.platform.service import EncryptedColumn, Job, Service, ServiceContext


async def _seed_demo(ctx: ServiceContext) -> dict[str, Any]:
    """The demo shop's configuration, then (once) a few weeks of past orders."""
    from ecosistema.catalog.demo import demo_skus
    from ecosistema.orders.demo import seed_order_history

    seeded = await _service.seed_demo(ctx)
    seeded["history"] = await seed_order_history(ctx, skus=demo_skus())
    return seeded


async def _send_order_emails(ctx: ServiceContext) -> None:
    from ecosistema.orders.emails import send_order_emails

    await send_order_emails(ctx)


descriptor = Service(
    name="orders",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    subscriptions=SUBSCRIPTIONS,
    jobs=(
        Job(
            "cancel-expired-orders",
            lambda settings: settings.orders_sweep_interval_seconds,
            _service.sweep_expired_orders,
        ),
        idempotency_purge_job(idempotency_keys),
        Job(
            "send-order-emails",
            lambda settings: settings.orders_email_interval_seconds,
            _send_order_emails,
        ),
    ),
    encrypted_columns=(
        EncryptedColumn("carts", "email_encrypted"),
        EncryptedColumn("carts", "shipping_address_encrypted"),
        EncryptedColumn("carts", "billing_address_encrypted"),
        EncryptedColumn("orders", "email_encrypted"),
        EncryptedColumn("orders", "shipping_address_encrypted"),
        EncryptedColumn("orders", "billing_address_encrypted"),
    ),
    seed_demo=_seed_demo,
    make_client=InProcessOrdersClient,
)

seed_demo = _service.seed_demo
cancel_expired_orders = _service.cancel_expired_orders

__all__ = ["cancel_expired_orders", "descriptor", "seed_demo"]
