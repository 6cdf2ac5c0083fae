"""The ML pipeline end to end on a sample of the reference data: registry, promotion, serving,
hot swap, retraining and the ``ecosistema ml`` commands."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ecosistema.ml import (
    CategoricalFeature,
    ModelRegistry,
    ModelServer,
    PromotionRefused,
    TrainedModel,
    ensure_default_model,
    lead_scoring_spec,
    load_dataset,
    load_reference_dataset,
    retrain,
    train_and_evaluate,
)
from ecosistema.ml_cli import app

SAMPLE = 3000


@pytest.fixture(scope="module")
def bank() -> pd.DataFrame:
    return load_reference_dataset(SAMPLE, seed=1)


@pytest.fixture(scope="module")
def model(bank: pd.DataFrame) -> TrainedModel:
    return train_and_evaluate(bank, lead_scoring_spec(), folds=0)


def memory_url() -> str:
    return f"memory://ml-{uuid.uuid4().hex[:8]}"


def test_reference_sample_keeps_class_balance_and_time_order(bank: pd.DataFrame) -> None:
    assert len(bank) == SAMPLE
    assert 0.10 < (bank["y"] == "yes").mean() < 0.13
    assert "duration" in bank.columns and "duration" not in lead_scoring_spec().feature_names


def test_batch_and_serving_paths_score_identically(model: TrainedModel, bank) -> None:
    server = ModelServer(model=model)
    batch = model.score_frame(bank)
    rows = bank.drop(columns=["y", "duration"]).to_dict("records")
    for i in range(0, SAMPLE, 37):
        single = server.score(rows[i])
        assert single.probability == batch[i].probability
        assert single.factors == batch[i].factors
    assert [s.probability for s in server.score_many(rows[:50])] == [
        s.probability for s in batch[:50]
    ]


def test_score_factors_read_as_sales_phrases(model: TrainedModel, bank) -> None:
    row = bank.drop(columns=["y"]).iloc[0].to_dict() | {"contact": "telephone"}
    score = model.score_rows([row])[0]
    reasons = score.reasons()
    assert 3 <= len(reasons) <= 4
    assert any(r.startswith("reachable on a landline only: -") for r in reasons), reasons


@pytest.mark.parametrize("where", ["local", "memory"])
def test_registry_round_trip(model: TrainedModel, bank, tmp_path: Path, where: str) -> None:
    url = str(tmp_path / "models") if where == "local" else memory_url()
    registry = ModelRegistry(url)
    version = registry.register(model)
    assert version.version == "v1" and registry.serving() is None
    assert version.data_hash == model.data_hash and version.rows == model.rows
    family = {"hybrid": "hybrid", "lightgbm": "lightgbm", "logistic": "baseline"}[model.family]
    assert version.metrics["holdout"][family]["roc_auc"] == version.headline
    loaded = ModelRegistry(url).load("v1")
    assert loaded.spec == model.spec
    np.testing.assert_array_equal(loaded.predict_frame(bank), model.predict_frame(bank))
    assert [v.version for v in registry.list()] == ["v1"]
    assert registry.register(model).version == "v2"


def test_corrupted_artifact_is_refused(model: TrainedModel, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.register(model)
    (tmp_path / "lead-scoring" / "v1" / "model.txt").write_text("tree\n")
    with pytest.raises(ValueError, match="does not match its manifest"):
        registry.load("v1")


def test_worse_model_is_not_promoted_unless_forced(bank: pd.DataFrame) -> None:
    spec = replace(lead_scoring_spec(), rows_in_time_order=False)
    weak_spec = replace(spec, features=(CategoricalFeature("day_of_week"),))
    registry = ModelRegistry(memory_url())
    good = registry.register(train_and_evaluate(bank, spec, folds=3))
    registry.promote(good.version)
    weak = registry.register(train_and_evaluate(bank, weak_spec, folds=3))
    assert weak.headline is not None and good.headline is not None
    assert weak.headline < good.headline
    with pytest.raises(PromotionRefused, match="does not beat serving v1"):
        registry.promote(weak.version)
    assert registry.serving().version == good.version
    registry.promote(weak.version, force=True)
    assert registry.serving().version == weak.version
    assert [(p.version, p.forced) for p in registry.history()] == [("v1", False), ("v2", True)]


def test_hot_swap_under_concurrent_scoring(model: TrainedModel, bank) -> None:
    registry = ModelRegistry(memory_url())
    registry.promote(registry.register(model).version)
    server = ModelServer(registry)
    assert server.reload() and server.version == "v1"
    rows = bank.drop(columns=["y"]).to_dict("records")[:200]
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def score_forever(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                seen.add(server.score(rows[i % len(rows)]).model_version)
            except BaseException as exc:  # any failure during a swap is the bug under test
                errors.append(exc)
                return
            i += 1

    workers = [threading.Thread(target=score_forever, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    v2 = registry.register(model)
    registry.promote(v2.version, force=True)
    assert server.reload()
    server.swap(registry.load("v1"))
    server.swap(registry.load("v2"))
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert errors == []
    assert server.score(rows[0]).model_version == "v2"
    assert server.reload() is False
    assert seen <= {"v1", "v2"}


def test_ensure_default_model_trains_once_then_reuses(bank: pd.DataFrame) -> None:
    registry = ModelRegistry(memory_url())
    first = ensure_default_model(registry, data=bank)
    assert registry.serving().version == first.version == "v1"
    again = ensure_default_model(registry, data=bank)
    assert again.version == "v1" and len(registry.list()) == 1


def test_retrain_from_labelled_feedback_registers_a_new_version(model, bank) -> None:
    registry = ModelRegistry(memory_url())
    registry.promote(registry.register(model).version)
    feedback = load_reference_dataset(1500, seed=9).to_dict("records")
    result = retrain(registry, feedback, reference=bank, force=True)
    assert result.version.version == "v2" and result.promoted
    assert result.version.rows > model.rows
    assert registry.serving().version == "v2"
    assert result.version.data_hash != model.data_hash


def test_cli_train_models_promote_and_drift(bank: pd.DataFrame, tmp_path: Path) -> None:
    data = tmp_path / "leads.parquet"
    bank.to_parquet(data)
    assert len(load_dataset(data)) == SAMPLE
    registry = str(tmp_path / "models")
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(data), "--registry", registry, "--folds", "0"])
    assert trained.exit_code == 0, trained.output
    assert "v1 now serves" in trained.output
    listed = runner.invoke(app, ["models", "--registry", registry])
    assert listed.exit_code == 0 and "v1" in listed.output
    refused = runner.invoke(app, ["promote", "v9", "--registry", registry])
    assert refused.exit_code == 1
    quiet = runner.invoke(app, ["drift", str(data), "--registry", registry])
    assert quiet.exit_code == 0, quiet.output
    shifted = bank.assign(euribor3m=bank["euribor3m"] + 3, age=bank["age"] + 25)
    shifted_path = tmp_path / "shifted.csv"
    shifted.to_csv(shifted_path, index=False)
    alarm = runner.invoke(app, ["drift", str(shifted_path), "--registry", registry])
    assert alarm.exit_code == 3 and "ALERT" in alarm.output


def test_cli_refuses_garbage_and_registers_nothing(tmp_path: Path) -> None:
    garbage = tmp_path / "leads.csv"
    garbage.write_bytes(np.random.default_rng(1).bytes(10 * 1024 * 1024))
    registry = tmp_path / "models"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(garbage), "--registry", str(registry)])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "not a CSV file" in said or "not UTF-8" in said
    assert ModelRegistry(registry).list() == []
    checked = runner.invoke(app, ["validate", str(garbage)])
    assert checked.exit_code == 2


def test_cli_validate_prints_a_readable_report(bank: pd.DataFrame, tmp_path: Path) -> None:
    broken = bank.drop(columns=["job"]).assign(age="old")
    path = tmp_path / "broken.csv"
    broken.to_csv(path, sep=";", index=False)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "missing-column" in result.output and "[job]" in result.output
    assert "values are not numbers" in result.output
