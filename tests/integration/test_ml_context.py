"""The default model on leads that carry little: the economic context is filled from the model's
current context (never listed as a reason), missing person facts score as the data's "unknown",
drift waits for enough leads and logs once, and the family that wins the hold-out serves."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from ecosistema.ml import (
    DriftMonitor,
    ModelRegistry,
    ModelServer,
    NumericFeature,
    TrainedModel,
    lead_scoring_spec,
    load_reference_dataset,
    train,
)
from ecosistema.ml.evaluation import HOLDOUT_TOLERANCE
from ecosistema.sales import domain
from ecosistema.sales.domain import LeadFacts
from tests.default_model import DefaultModelCache

CONTEXT = {"emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed"}
PERSON = ("job", "marital", "education", "default", "housing", "loan")


@pytest.fixture(scope="module")
def model(default_model_cache: DefaultModelCache) -> TrainedModel:
    """The default model as a new install serves it: registered by ``default_model()`` and
    loaded (trained once in the session, not again in each test process)."""
    loaded = default_model_cache.registry().load_serving()
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def bank() -> pd.DataFrame:
    return load_reference_dataset()


def bare_lead() -> dict[str, object]:
    """What a lead created with only a name and an email gives the model (a Tuesday)."""
    facts = LeadFacts(
        created_at=datetime(2026, 11, 24, 10, tzinfo=UTC),
        channel=None,
        source=None,
        campaign=None,
        message=None,
        attributes={},
    )
    return dict(domain.feature_row(facts))


def test_the_spec_declares_the_economic_inputs_as_context() -> None:
    declared = {
        f.name for f in lead_scoring_spec().features if isinstance(f, NumericFeature) and f.context
    }
    assert declared == CONTEXT


def test_context_defaults_to_the_latest_values_of_the_reference_data(
    model: TrainedModel, bank: pd.DataFrame
) -> None:
    last = bank.iloc[-1]
    assert model.pipeline.context() == {name: float(last[name]) for name in CONTEXT}


def test_a_bare_lead_scores_like_recent_training_leads_without_contact_history(
    model: TrainedModel, bank: pd.DataFrame
) -> None:
    score = model.score_rows([bare_lead()])[0]
    # Training leads never contacted before, from the latest tenth (the context a bare lead is
    # scored in): the bare lead's probability lies within theirs.
    recent = bank.iloc[int(len(bank) * 0.9) :]
    peers = model.predict_frame(recent[recent["poutcome"] == "nonexistent"])
    low, high = np.quantile(peers, [0.05, 0.95])
    assert low <= score.probability <= high
    # Its score (percentile among the training leads in the same context) is unremarkable.
    assert 20 <= score.score <= 80


def test_context_features_are_never_reasons(model: TrainedModel, bank: pd.DataFrame) -> None:
    rows = bank.drop(columns=["y", "duration"]).iloc[::997].to_dict("records")
    for score in model.score_rows([bare_lead(), {}, *rows]):
        assert score.factors
        assert not {f.feature for f in score.factors} & CONTEXT


def test_missing_person_facts_score_exactly_as_the_datas_unknown(model: TrainedModel) -> None:
    explicit = {**bare_lead(), **dict.fromkeys(PERSON, "unknown")}
    missing, unknown = model.score_rows([bare_lead(), explicit])
    assert missing.probability == unknown.probability
    # A value the lead lacks and the data never lacked (age) gives no reason at all.
    assert "age" not in {f.feature for f in missing.factors}
    for factor in missing.factors:
        if factor.value is None and factor.feature in PERSON:
            assert abs(factor.contribution) < 0.75, factor  # never a "+++"


def test_configured_context_is_what_serving_fills_in(model: TrainedModel) -> None:
    current = {"euribor3m": 4.2, "nr.employed": 5200.0, "not-a-feature": 1.0}
    server = ModelServer(model=model, context=current, observe=False)
    served = server.score(bare_lead())
    carried = model.score_rows([{**bare_lead(), "euribor3m": 4.2, "nr.employed": 5200.0}])[0]
    assert served.probability == carried.probability
    assert served.probability != model.score_rows([bare_lead()])[0].probability
    assert "not-a-feature" not in server.model.pipeline.fill


def test_feedback_without_context_is_trained_with_the_values_serving_fills_in(
    bank: pd.DataFrame,
) -> None:
    reference = load_reference_dataset(3000, seed=2)
    feedback = bank.drop(columns=list(CONTEXT)).iloc[-400:].reset_index(drop=True)
    data = pd.concat([reference, feedback], ignore_index=True)
    current = {"euribor3m": 3.5}
    trained = train(data, lead_scoring_spec(), context=current)
    context = trained.pipeline.context()
    assert context["euribor3m"] == 3.5
    assert context["nr.employed"] == float(reference.iloc[-1]["nr.employed"])
    # Train/serve parity: the matrix a feedback row was trained on is the one it is served with.
    columns = {n: feedback[n].to_numpy() for n in feedback.columns if n != "y"}
    served = ModelServer(model=trained, context=current, observe=False).model.pipeline
    assert np.array_equal(
        trained.pipeline.transform(columns), served.transform(columns), equal_nan=True
    )


def test_drift_needs_enough_leads_before_it_alerts(model: TrainedModel) -> None:
    odd = [{**bare_lead(), "age": 95, "job": "student", "campaign": 40}] * 50
    monitor = DriftMonitor(model, min_rows=200)
    few = monitor.check(odd)
    assert few.status == "not_enough_data" and not few.alert and few.drifted
    many = monitor.check(odd * 5)
    assert many.status == "drift" and many.alert


def test_drift_alert_is_logged_once_per_version_and_state_change(model: TrainedModel) -> None:
    odd = [{**bare_lead(), "age": 95, "job": "student", "campaign": 40}] * 250
    mine = replace(model, version="v-drift-log")
    monitor = DriftMonitor(mine, min_rows=200)
    with capture_logs() as logs:
        for _ in range(3):
            assert monitor.check(odd).alert
    alerts = [e for e in logs if e["event"] == "ml.drift_alert"]
    assert len(alerts) == 1 and alerts[0]["version"] == "v-drift-log"


def test_the_family_that_wins_the_holdout_serves(model: TrainedModel, tmp_path: Path) -> None:
    holdout = model.metrics["holdout"]
    keys = {"hybrid": "hybrid", "lightgbm": "lightgbm", "logistic": "baseline"}
    best = max(holdout[k]["roc_auc"] for k in keys.values())
    # Within the hold-out's noise families tie; among ties the first in preference order serves.
    tied = [f for f in keys if holdout[keys[f]]["roc_auc"] >= best - HOLDOUT_TOLERANCE]
    winner = tied[0]
    assert model.metrics["family"] == model.family == winner
    assert (model.linear is not None) == (winner != "lightgbm")
    assert (model.booster is not None) == (winner != "logistic")
    registry = ModelRegistry(tmp_path)
    version = registry.register(model)
    assert version.headline == holdout[keys[winner]]["roc_auc"]
    loaded = registry.load(version.version)
    assert loaded.family == model.family
    rows = [bare_lead(), {"age": 30, "job": "student", "poutcome": "success"}]
    assert [s.probability for s in loaded.score_rows(rows)] == [
        s.probability for s in model.score_rows(rows)
    ]
