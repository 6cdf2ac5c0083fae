"""Webhooks: staff subscribe URLs to platform events; deliveries are signed, retried with
backoff for a day, recorded attempt by attempt, and can be replayed."""

from __future__ import annotations

from pathlib import Path

from ecosistema.platform.service import EncryptedColumn, Job, Service
from ecosistema.platform.signatures import sign, signature_header
from ecosistema.webhooks import delivery as _delivery
from ecosistema.webhooks import service as _service
from ecosistema.webhooks.api import router
from ecosistema.webhooks.client import InProcessWebhooksClient
from ecosistema.webhooks.domain import verify_signature
from ecosistema.webhooks.events import SUBSCRIPTIONS
from ecosistema.webhooks.models import metadata, outbox

descriptor = Service(
    name="webhooks",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    subscriptions=SUBSCRIPTIONS,
    jobs=(
        Job(
            "send-due-deliveries",
            lambda settings: settings.webhooks_dispatch_interval_seconds,
            _delivery.dispatch_job,
        ),
        Job("purge-finished-deliveries", 3600.0, _service.purge_job),
    ),
    encrypted_columns=(
        EncryptedColumn("webhook_subscriptions", "secret_encrypted"),
        EncryptedColumn("webhook_subscriptions", "previous_secret_encrypted"),
    ),
    make_client=InProcessWebhooksClient,
)

dispatch_due = _delivery.dispatch_due

__all__ = ["descriptor", "dispatch_due", "sign", "signature_header", "verify_signature"]
