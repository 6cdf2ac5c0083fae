"""Sales: leads, their activity timeline, and lead scoring with the ML pipeline (``ml/``)."""

from __future__ import annotations

from pathlib import Path

from ecosistema.platform.service import EncryptedColumn, Service
from ecosistema.sales import scoring
from ecosistema.sales import service as _service
from ecosistema.sales.api import router
from ecosistema.sales.client import InProcessSalesClient
from ecosistema.sales.events import SUBSCRIPTIONS
from ecosistema.sales.models import metadata, outbox

descriptor = Service(
    name="sales",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    subscriptions=SUBSCRIPTIONS,
    jobs=scoring.jobs(),
    encrypted_columns=(
        EncryptedColumn("leads", "name_encrypted"),
        EncryptedColumn("leads", "email_encrypted"),
        EncryptedColumn("leads", "phone_encrypted"),
    ),
    on_start=scoring.start_scoring,
    seed_demo=_service.seed_demo,
    make_client=InProcessSalesClient,
)

seed_demo = _service.seed_demo

__all__ = ["descriptor", "seed_demo"]
