"""A new install: the sales service, starting on an empty model registry, trains the default
lead-scoring model on the bundled data, registers and promotes it, and serves it. Other tests
start on a registry seeded with this model (tests/default_model.py); this one does not."""

from __future__ import annotations

from ecosistema.ml import ModelRegistry
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.sales import descriptor
from ecosistema.sales.scoring import scoring_of
from tests.conftest import drop_test_schemas
from tests.default_model import DefaultModelCache


async def test_a_new_install_trains_and_serves_the_default_model_at_first_start(
    settings: Settings, default_model_cache: DefaultModelCache
) -> None:
    registry = ModelRegistry(settings.ml_registry_location())
    assert registry.list() == []
    application = create_app([descriptor], settings)
    try:
        async with application.router.lifespan_context(application):
            scoring = scoring_of(application.state.runtime.contexts["sales"])
            assert scoring.server.version == "v1"
        (trained,) = registry.list()
        serving = registry.serving()
        assert serving is not None and serving.version == trained.version == "v1"
        assert trained.rows > 40_000 and trained.headline is not None
        # What the other tests start with is this model: same data, features and parameters.
        seeded = default_model_cache.registry().serving()
        assert seeded is not None
        assert (seeded.data_hash, seeded.rows, seeded.positives, seeded.spec) == (
            trained.data_hash,
            trained.rows,
            trained.positives,
            trained.spec,
        )
    finally:
        await drop_test_schemas(settings)
