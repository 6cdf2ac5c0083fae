"""The default lead-scoring model is trained once per process and handed out as copies."""

from __future__ import annotations

from pathlib import Path

from ecosistema.ml import ModelRegistry, default_model, ensure_default_model


def test_default_model_is_trained_once_per_process_and_copied(tmp_path: Path) -> None:
    first, second = default_model(), default_model()
    assert first is not second and first.pipeline is second.pipeline
    first.version = "v9"
    assert default_model().version == "unregistered"
    registries = [ModelRegistry(tmp_path / name) for name in ("a", "b")]
    versions = [ensure_default_model(r) for r in registries]
    assert [v.version for v in versions] == ["v1", "v1"]
    assert versions[0].data_hash == versions[1].data_hash == first.data_hash
    assert versions[0].rows > 40_000 and versions[0].headline is not None
