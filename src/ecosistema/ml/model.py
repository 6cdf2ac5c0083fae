"""Training (LightGBM, calibrated, imbalance-aware) and scoring with per-feature explanations."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from ecosistema.ml.dataset import data_hash
from ecosistema.ml.features import (
    Columns,
    FeaturePipeline,
    Matrix,
    rows_to_columns,
    to_category,
    to_datetime,
    to_float,
)
from ecosistema.ml.spec import (
    CategoricalFeature,
    DateFeature,
    Feature,
    FeatureSpec,
    NumericFeature,
)
from ecosistema.ml.validation import TARGET, clean, validate

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainParams:
    """LightGBM and training settings; the defaults are tuned on the reference data."""

    learning_rate: float = 0.03
    num_leaves: int = 15
    min_child_samples: int = 80
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 5.0
    cat_smooth: float = 20.0
    max_rounds: int = 800
    early_stopping_rounds: int = 60
    validation_fraction: float = 0.15
    # "sqrt" weights positives by sqrt(negatives/positives), "balanced" by the full ratio, "none"
    # not at all; probabilities are recalibrated afterwards either way.
    imbalance: Literal["sqrt", "balanced", "none"] = "sqrt"
    seed: int = 0
    # One thread by default: LightGBM's OpenMP workers spin-wait, and on a CPU shared with a web
    # server or other jobs two threads are often slower than one.
    threads: int = 1

    def lightgbm(self, positives: int, negatives: int) -> dict[str, Any]:
        """The LightGBM parameter dict for a training set with these class counts."""
        ratio = negatives / max(positives, 1)
        weight = {"sqrt": math.sqrt(ratio), "balanced": ratio, "none": 1.0}[self.imbalance]
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "cat_smooth": self.cat_smooth,
            "cat_l2": 10.0,
            "min_data_per_group": 50,
            "max_cat_to_onehot": 8,
            "scale_pos_weight": weight,
            "seed": self.seed,
            "metric": "auc",
            "num_threads": self.threads or (os.cpu_count() or 1),
            "verbose": -1,
        }


@dataclass(frozen=True)
class Factor:
    """One reason behind a score: the feature, its value, and its push in log-odds."""

    feature: str
    value: str | None
    contribution: float
    text: str

    def __str__(self) -> str:
        strength = 1 if abs(self.contribution) < 0.25 else 2 if abs(self.contribution) < 0.75 else 3
        return f"{self.text}: {('+' if self.contribution > 0 else '-') * strength}"


@dataclass(frozen=True)
class Score:
    """A lead's score: 0-100 (its percentile among training leads), probability, and why."""

    score: int
    probability: float
    model_version: str
    factors: tuple[Factor, ...] = ()

    def reasons(self) -> list[str]:
        """The factors as short phrases, strongest first."""
        return [str(f) for f in self.factors]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "score": self.score,
            "probability": self.probability,
            "model_version": self.model_version,
            "factors": [{**asdict(f), "phrase": str(f)} for f in self.factors],
        }


@dataclass
class TrainedModel:
    """A fitted model: feature pipeline, LightGBM booster, calibration and training facts."""

    spec: FeatureSpec
    pipeline: FeaturePipeline
    booster: lgb.Booster
    calibration: tuple[float, float]
    params: dict[str, Any]
    rounds: int
    rows: int
    positives: int
    data_hash: str
    trained_at: datetime
    training_seconds: float
    # Sorted training probabilities at 0..100 percentiles: turns a probability into a score.
    score_percentiles: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)
    drift_reference: dict[str, Any] = field(default_factory=dict)
    version: str = "unregistered"

    def margins(self, matrix: Matrix) -> Matrix:
        """Calibrated log-odds for a feature matrix."""
        threads = 1 if len(matrix) < 256 else int(self.params.get("num_threads", 1))
        raw = np.asarray(
            self.booster.predict(matrix, raw_score=True, num_threads=threads), dtype=np.float64
        )
        a, b = self.calibration
        return np.asarray(a * raw + b, dtype=np.float64)

    def probabilities(self, matrix: Matrix) -> Matrix:
        """Calibrated probabilities for a feature matrix."""
        return 1.0 / (1.0 + np.exp(-self.margins(matrix)))

    def predict_frame(self, df: pd.DataFrame) -> Matrix:
        """Probabilities for a DataFrame's rows (the batch path)."""
        return self.probabilities(self.pipeline.transform(_frame_columns(df, self.spec)))

    def score_columns(self, columns: Columns, *, explain: int = 4) -> list[Score]:
        """Scores, with the ``explain`` strongest factors each, for rows given as columns."""
        matrix = self.pipeline.transform(columns)
        probabilities = self.probabilities(matrix)
        percentiles = np.asarray(self.score_percentiles)
        scores = np.searchsorted(percentiles, probabilities, side="right") - 1
        scores = np.clip(scores, 0, 100)
        factors: list[tuple[Factor, ...]] = [() for _ in range(len(matrix))]
        if explain > 0 and len(matrix):
            factors = self._factors(columns, matrix, explain)
        return [
            Score(int(s), float(p), self.version, f)
            for s, p, f in zip(scores, probabilities, factors, strict=True)
        ]

    def score_rows(self, rows: Sequence[Mapping[str, Any]], *, explain: int = 4) -> list[Score]:
        """Scores for dict rows (the serving path)."""
        return self.score_columns(rows_to_columns(rows, self.spec.feature_names), explain=explain)

    def score_frame(self, df: pd.DataFrame, *, explain: int = 4) -> list[Score]:
        """Scores for a DataFrame's rows (the batch path)."""
        return self.score_columns(_frame_columns(df, self.spec), explain=explain)

    def _factors(self, columns: Columns, matrix: Matrix, top: int) -> list[tuple[Factor, ...]]:
        threads = 1 if len(matrix) < 256 else int(self.params.get("num_threads", 1))
        contrib = (
            np.asarray(
                self.booster.predict(matrix, pred_contrib=True, num_threads=threads),
                dtype=np.float64,
            )[:, :-1]
            * self.calibration[0]
        )
        groups = self.pipeline.groups
        names = self.spec.feature_names
        position = {name: i for i, name in enumerate(names)}
        index = np.fromiter((position[g] for g in groups), dtype=np.int64, count=len(groups))
        per_feature = np.zeros((len(matrix), len(names)))
        np.add.at(per_feature.T, index, contrib.T)
        absent = [None] * len(matrix)
        raw = [columns.get(name, absent) for name in names]
        features = [self.spec.feature(name) for name in names]
        order = np.argsort(-np.abs(per_feature), axis=1)[:, :top]
        out: list[tuple[Factor, ...]] = []
        for i, row in enumerate(per_feature):
            out.append(
                tuple(
                    _factor(features[j], raw[j][i], float(row[j]))
                    for j in order[i]
                    if abs(row[j]) >= 0.01
                )
            )
        return out


def _factor(feature: Feature, raw: Any, contribution: float) -> Factor:
    """A contribution in a salesperson's words, e.g. "contacted successfully before: +"."""
    name = feature.name
    label = feature.display
    value: str | None
    if isinstance(feature, NumericFeature):
        number = to_float(raw)
        if math.isnan(number) or number in feature.missing_values:
            value, text = None, feature.missing_phrase or f"{label} not known"
        else:
            value = f"{number:g}"
            text = f"{label} {value}{feature.unit}"
    elif isinstance(feature, CategoricalFeature):
        value = to_category(raw)
        if value is None:
            text = f"{label} not known"
        elif value in feature.phrases:
            text = feature.phrases[value]
        else:
            text = f"{label}: {value}"
    elif isinstance(feature, DateFeature):
        moment = to_datetime(raw)
        value = moment.date().isoformat() if moment else None
        text = f"{label} {value}" if value else f"{label} not known"
    else:
        value = None if raw is None else str(raw)[:80]
        text = f"wording of {label}"
    return Factor(name, value, round(float(contribution), 4), text)


def _frame_columns(df: pd.DataFrame, spec: FeatureSpec) -> dict[str, Any]:
    return {name: df[name].to_numpy() for name in spec.feature_names if name in df.columns}


def prepare(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Validate (raising :class:`InvalidDataset` on errors) and clean training data."""
    validate(df, spec).raise_for_errors()
    return clean(df, spec)


def train(
    df: pd.DataFrame,
    spec: FeatureSpec,
    params: TrainParams | None = None,
    *,
    cleaned: bool = False,
) -> TrainedModel:
    """Fit the feature pipeline and a calibrated LightGBM model on labelled rows."""
    params = params or TrainParams()
    data = df if cleaned else prepare(df, spec)
    started = time.perf_counter()
    columns = _frame_columns(data, spec)
    pipeline = FeaturePipeline.fit(spec, columns)
    matrix = pipeline.transform(columns)
    labels = data[TARGET].to_numpy().astype(np.int64)
    positives = int(labels.sum())
    lgb_params = params.lightgbm(positives, len(labels) - positives)

    rng = np.random.default_rng(params.seed)
    fit_idx, val_idx = _stratified_split(labels, params.validation_fraction, rng)
    categorical = pipeline.categorical_columns
    probe = lgb.train(
        lgb_params,
        _dataset(matrix[fit_idx], labels[fit_idx], pipeline, categorical),
        num_boost_round=params.max_rounds,
        valid_sets=[_dataset(matrix[val_idx], labels[val_idx], pipeline, categorical)],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )
    best = max(probe.best_iteration or params.max_rounds, 10)
    calibration = _platt(
        np.asarray(probe.predict(matrix[val_idx], raw_score=True, num_iteration=best)),
        labels[val_idx],
    )
    # The final model sees every row; more rows support proportionally more rounds.
    rounds = int(best / (1 - params.validation_fraction))
    booster = lgb.train(
        lgb_params, _dataset(matrix, labels, pipeline, categorical), num_boost_round=rounds
    )
    model = TrainedModel(
        spec=spec,
        pipeline=pipeline,
        booster=booster,
        calibration=calibration,
        params=lgb_params,
        rounds=rounds,
        rows=len(labels),
        positives=positives,
        data_hash=data_hash(data),
        trained_at=datetime.now(UTC),
        training_seconds=0.0,
        score_percentiles=[],
    )
    probabilities = model.probabilities(matrix)
    model.score_percentiles = [float(q) for q in np.quantile(probabilities, np.linspace(0, 1, 101))]
    model.score_percentiles[0] = 0.0
    from ecosistema.ml.monitor import drift_reference

    model.drift_reference = drift_reference(pipeline, matrix, probabilities)
    model.training_seconds = round(time.perf_counter() - started, 3)
    return model


def _dataset(
    matrix: Matrix, labels: Any, pipeline: FeaturePipeline, categorical: list[int]
) -> lgb.Dataset:
    return lgb.Dataset(
        matrix,
        labels,
        feature_name=[c.replace(".", "_") for c in pipeline.columns],
        categorical_feature=categorical,
        free_raw_data=True,
        params={"verbose": -1},
    )


def _stratified_split(labels: Any, fraction: float, rng: np.random.Generator) -> tuple[Any, Any]:
    held: list[Any] = []
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        held.append(idx[: max(1, round(len(idx) * fraction))])
    val = np.sort(np.concatenate(held))
    fit = np.setdiff1d(np.arange(len(labels)), val)
    return fit, val


def _platt(margins: Any, labels: Any) -> tuple[float, float]:
    """Fit p = sigmoid(a * margin + b) on held-out margins (Platt scaling)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(margins.reshape(-1, 1), labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])
