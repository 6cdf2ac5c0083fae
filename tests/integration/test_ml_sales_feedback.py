"""``ecosistema ml retrain --from-leads`` reads the sales service's won/lost leads from its own
database and trains on them beside the bundled data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecosistema.ml import ModelRegistry
from ecosistema.ml_cli import app as ml_app
from ecosistema.platform.app import create_app
from ecosistema.platform.auth import Principal
from ecosistema.platform.config import Settings, get_settings
from ecosistema.sales import descriptor
from ecosistema.sales.domain import LeadStatus
from ecosistema.sales.schemas import LeadCreate, LeadUpdate
from ecosistema.sales.service import create_lead, update_lead
from tests.conftest import make_settings
from tests.default_model import DefaultModelCache


async def close_some_leads(settings: Settings) -> None:
    """Six leads, four of them closed (two won, two lost)."""
    application = create_app([descriptor], settings)
    seller = Principal.for_user("u-seller", "sales")
    async with application.router.lifespan_context(application):
        ctx = application.state.runtime.contexts["sales"]
        for i in range(6):
            lead = await create_lead(
                ctx,
                seller,
                LeadCreate(name=f"L{i}", email=f"l{i}@example.com", attributes={"age": 30 + i}),
            )
            if i < 4:
                status = LeadStatus.WON if i % 2 else LeadStatus.LOST
                await update_lead(ctx, seller, lead.id, LeadUpdate(status=status))


def test_retrain_from_leads_uses_the_closed_leads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_model_cache: DefaultModelCache
) -> None:
    settings = make_settings("embedded", tmp_path)
    default_model_cache.seed(settings)
    asyncio.run(close_some_leads(settings))
    monkeypatch.setenv("ECOSISTEMA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ECOSISTEMA_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            ml_app, ["retrain", "--from-leads", "--reference-rows", "2000", "--force"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "4 won/lost leads as feedback" in result.output
    registry = ModelRegistry(settings.ml_registry_location())
    serving = registry.serving()
    assert serving is not None and serving.version == "v2"
    assert serving.rows == 2000 + 4


def test_retrain_needs_a_source_or_the_leads() -> None:
    result = CliRunner().invoke(ml_app, ["retrain"])
    assert result.exit_code == 2
