"""Training (a logistic regression with LightGBM trees boosted on its log-odds, LightGBM alone, or
the logistic regression alone; calibrated, imbalance-aware) and scoring with per-feature
explanations. Every family reads the same feature pipeline."""

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
Family = Literal["hybrid", "lightgbm", "logistic"]
# In order of preference when the hold-out cannot tell them apart (see ``choose_family``).
FAMILIES: tuple[Family, ...] = ("hybrid", "lightgbm", "logistic")


@dataclass
class LinearModel:
    """Logistic regression over the pipeline's matrix: categories one-hot (a missing value is a
    level of its own), numbers imputed by the training median (plus a "was missing" column when
    training had gaps) and standardised. Stored as plain JSON; applied with numpy alone."""

    # Per matrix column: "category" (one-hot over codes 0..levels-1, then missing) or "number".
    kinds: list[str]
    levels: list[int]
    medians: list[float]
    indicators: list[bool]
    means: list[float]
    scales: list[float]
    weights: list[float]
    intercept: float
    # Mean of each design column in training: contributions are measured from the average lead.
    centre: list[float]

    def design(self, matrix: Matrix) -> tuple[Matrix, list[int]]:
        """The design matrix, and the pipeline column each design column comes from."""
        blocks: list[Matrix] = []
        owner: list[int] = []
        for j, kind in enumerate(self.kinds):
            x = matrix[:, j]
            if kind == "category":
                size = self.levels[j]
                codes = np.where(np.isnan(x), size, np.clip(np.nan_to_num(x), 0, size - 1))
                block = np.zeros((len(x), size + 1))
                block[np.arange(len(x)), codes.astype(np.int64)] = 1.0
                blocks.append(block)
                owner.extend([j] * (size + 1))
                continue
            missing = np.isnan(x)
            value = (np.where(missing, self.medians[j], x) - self.means[j]) / self.scales[j]
            blocks.append(value.reshape(-1, 1))
            owner.append(j)
            if self.indicators[j]:
                blocks.append(missing.astype(np.float64).reshape(-1, 1))
                owner.append(j)
        return (np.hstack(blocks) if blocks else np.zeros((len(matrix), 0))), owner

    def margins(self, matrix: Matrix) -> Matrix:
        """Uncalibrated log-odds."""
        design, _ = self.design(matrix)
        # A row-wise sum, not a matrix product: BLAS sums in an order that depends on how many
        # rows there are, and one lead must score exactly as it does among many.
        weighted = design * np.asarray(self.weights)
        return np.asarray(weighted.sum(axis=1) + self.intercept, dtype=np.float64)

    def contributions(self, matrix: Matrix) -> Matrix:
        """Per pipeline column: its push in log-odds, relative to the average training lead."""
        design, owner = self.design(matrix)
        pushes = (design - np.asarray(self.centre)) * np.asarray(self.weights)
        out = np.zeros((len(matrix), len(self.kinds)))
        np.add.at(out.T, np.asarray(owner, dtype=np.int64), pushes.T)
        return out

    @classmethod
    def fit(
        cls,
        pipeline: FeaturePipeline,
        matrix: Matrix,
        labels: Any,
        *,
        weight: float,
        strength: float = 0.5,
    ) -> LinearModel:
        """Fit on a training matrix; positives weigh ``weight`` (imbalance), L2 ``1/strength``."""
        from sklearn.linear_model import LogisticRegression

        categorical = set(pipeline.categorical_columns)
        kinds, levels, medians, indicators, means, scales = [], [], [], [], [], []
        for j in range(matrix.shape[1]):
            x = matrix[:, j]
            known = x[~np.isnan(x)]
            if j in categorical:
                kinds.append("category")
                levels.append(len(pipeline.categories[pipeline.groups[j]]) + 1)
                medians.append(0.0)
                indicators.append(False)
                means.append(0.0)
                scales.append(1.0)
                continue
            median = float(np.median(known)) if known.size else 0.0
            filled = np.where(np.isnan(x), median, x)
            kinds.append("number")
            levels.append(0)
            medians.append(median)
            indicators.append(bool(known.size < len(x)))
            means.append(float(filled.mean()))
            scales.append(float(filled.std()) or 1.0)
        model = cls(kinds, levels, medians, indicators, means, scales, [], 0.0, [])
        design, _ = model.design(matrix)
        sample_weight = np.where(np.asarray(labels) == 1, weight, 1.0)
        fitted = LogisticRegression(C=strength, max_iter=2000).fit(
            design, labels, sample_weight=sample_weight
        )
        model.weights = [float(w) for w in fitted.coef_[0]]
        model.intercept = float(fitted.intercept_[0])
        model.centre = [float(c) for c in design.mean(axis=0)]
        return model

    def state(self) -> dict[str, Any]:
        """JSON-ready state, as stored in the registry."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LinearModel:
        """Rebuild from :meth:`state` output."""
        return cls(
            kinds=[str(k) for k in state["kinds"]],
            levels=[int(n) for n in state["levels"]],
            medians=[float(x) for x in state["medians"]],
            indicators=[bool(x) for x in state["indicators"]],
            means=[float(x) for x in state["means"]],
            scales=[float(x) for x in state["scales"]],
            weights=[float(x) for x in state["weights"]],
            intercept=float(state["intercept"]),
            centre=[float(x) for x in state["centre"]],
        )


@dataclass(frozen=True)
class TrainParams:
    """LightGBM and training settings; the defaults are tuned on the reference data by 5-fold
    cross-validation."""

    learning_rate: float = 0.02
    num_leaves: int = 15
    min_child_samples: int = 80
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8
    lambda_l2: float = 5.0
    cat_smooth: float = 20.0
    # The number of trees is chosen by an inner stratified k-fold on the training rows (the round
    # with the best mean ROC-AUC across the inner folds, at most ``max_rounds``), then scaled to
    # the full training set; the inner folds' out-of-fold predictions calibrate the model.
    max_rounds: int = 750
    inner_folds: int = 3
    # L2 strength of the logistic regression (scikit-learn's C).
    logistic_c: float = 0.5
    # "sqrt" weights positives by sqrt(negatives/positives), "balanced" by the full ratio, "none"
    # not at all; probabilities are recalibrated afterwards either way.
    imbalance: Literal["sqrt", "balanced", "none"] = "none"
    # Apply the spec's monotone constraints to the trees. Off by default: on the reference data
    # they cost 0.005 of cross-validated ROC-AUC.
    monotone: bool = False
    seed: int = 0
    # One thread by default: LightGBM's OpenMP workers spin-wait, and on a CPU shared with a web
    # server or other jobs two threads are often slower than one.
    threads: int = 1

    def positive_weight(self, positives: int, negatives: int) -> float:
        """The weight of a positive row for a training set with these class counts."""
        ratio = negatives / max(positives, 1)
        return {"sqrt": math.sqrt(ratio), "balanced": ratio, "none": 1.0}[self.imbalance]

    def lightgbm(self, positives: int, negatives: int) -> dict[str, Any]:
        """The LightGBM parameter dict for a training set with these class counts."""
        weight = self.positive_weight(positives, negatives)
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
    """A fitted model: feature pipeline, logistic regression and/or LightGBM booster (``family``:
    "hybrid" has both, the trees adding to the regression's log-odds), calibration and training
    facts."""

    spec: FeatureSpec
    pipeline: FeaturePipeline
    booster: lgb.Booster | None
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
    linear: LinearModel | None = None
    family: Family = "lightgbm"

    def raw_margins(self, matrix: Matrix) -> Matrix:
        """Uncalibrated log-odds for a feature matrix."""
        out = np.zeros(len(matrix))
        if self.linear is not None:
            out += self.linear.margins(matrix)
        if self.booster is not None:
            threads = 1 if len(matrix) < 256 else int(self.params.get("num_threads", 1))
            out += np.asarray(
                self.booster.predict(matrix, raw_score=True, num_threads=threads), dtype=np.float64
            )
        return out

    def margins(self, matrix: Matrix) -> Matrix:
        """Calibrated log-odds for a feature matrix."""
        raw = self.raw_margins(matrix)
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
        contrib = np.zeros(matrix.shape)
        if self.linear is not None:
            contrib += self.linear.contributions(matrix)
        if self.booster is not None:
            threads = 1 if len(matrix) < 256 else int(self.params.get("num_threads", 1))
            contrib += np.asarray(
                self.booster.predict(matrix, pred_contrib=True, num_threads=threads),
                dtype=np.float64,
            )[:, :-1]
        contrib *= self.calibration[0]
        groups = self.pipeline.groups
        names = self.spec.feature_names
        position = {name: i for i, name in enumerate(names)}
        index = np.fromiter((position[g] for g in groups), dtype=np.int64, count=len(groups))
        per_feature = np.zeros((len(matrix), len(names)))
        np.add.at(per_feature.T, index, contrib.T)
        absent = [None] * len(matrix)
        raw = [columns.get(name, absent) for name in names]
        features = [self.spec.feature(name) for name in names]
        # Context (the economy, not the lead) and inputs the lead lacks are no reason a
        # salesperson can act on: they are left out, unless "not known" is a value of the data.
        pipeline = self.pipeline
        context = np.array([isinstance(f, NumericFeature) and f.context for f in features])
        declared = [
            isinstance(f, CategoricalFeature) and f.missing_value is not None for f in features
        ]
        ranked = np.abs(per_feature)
        ranked[:, context] = -1.0
        for j, name in enumerate(names):
            if name in pipeline.fill and not context[j] and not declared[j]:
                gaps = np.fromiter(
                    (pipeline.filled(name, v) for v in raw[j]), dtype=bool, count=len(matrix)
                )
                ranked[gaps, j] = -1.0
        order = np.argsort(-ranked, axis=1)[:, :top]
        out: list[tuple[Factor, ...]] = []
        for i, row in enumerate(per_feature):
            out.append(
                tuple(
                    _factor(features[j], raw[j][i], float(row[j]))
                    for j in order[i]
                    if ranked[i, j] >= 0.01
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
    context: Mapping[str, float] | None = None,
    family: Family = "hybrid",
) -> TrainedModel:
    """Fit the feature pipeline and a calibrated model of ``family`` on labelled rows.

    Everything is learnt from these rows alone: the pipeline's vocabularies and fills, the
    number of trees and the calibration (both from an inner stratified k-fold over these rows).
    ``context`` gives the current values of context features: rows without them (feedback
    leads) are trained with exactly the values serving fills in.
    """
    params = params or TrainParams()
    data = df if cleaned else prepare(df, spec)
    from threadpoolctl import threadpool_limits

    # BLAS gets the same thread budget as LightGBM: its idle workers spin, and on a shared CPU
    # the logistic regression's fits took several times the CPU with them.
    with threadpool_limits(limits=params.threads or (os.cpu_count() or 1), user_api="blas"):
        return _train(data, spec, params, context=context, family=family)


def _train(
    data: pd.DataFrame,
    spec: FeatureSpec,
    params: TrainParams,
    *,
    context: Mapping[str, float] | None,
    family: Family,
) -> TrainedModel:
    started = time.perf_counter()
    columns = _frame_columns(data, spec)
    pipeline = FeaturePipeline.fit(spec, columns, context=context)
    matrix = pipeline.transform(columns)
    labels = data[TARGET].to_numpy().astype(np.int64)
    positives = int(labels.sum())
    weight = params.positive_weight(positives, len(labels) - positives)
    lgb_params = params.lightgbm(positives, len(labels) - positives)
    if params.monotone:
        monotone = _monotone(pipeline)
        if any(monotone):
            lgb_params["monotone_constraints"] = monotone
    fitter = _Fitter(family, pipeline, params, lgb_params, weight)
    best, oof = fitter.inner_cv(matrix, labels)
    calibration = _platt(oof, labels) if oof is not None else (1.0, 0.0)
    k = max(2, params.inner_folds)
    # The final model sees every row; more rows support proportionally more rounds.
    rounds = min(params.max_rounds, round(best * k / (k - 1))) if best else 0
    linear, booster = fitter.fit(matrix, labels, rounds)
    if family == "logistic":
        stored: dict[str, Any] = {
            "family": "logistic",
            "C": params.logistic_c,
            "positive_weight": weight,
        }
    else:
        stored = {**lgb_params, "family": family, "logistic_C": params.logistic_c}
    model = TrainedModel(
        spec=spec,
        pipeline=pipeline,
        booster=booster,
        calibration=calibration,
        params=stored,
        rounds=rounds,
        rows=len(labels),
        positives=positives,
        data_hash=data_hash(data),
        trained_at=datetime.now(UTC),
        training_seconds=0.0,
        score_percentiles=[],
        linear=linear,
        family=family,
    )
    return _finish(model, matrix, started)


@dataclass
class _Fitter:
    """Fits one family's parts on a matrix: the regression, then trees on its log-odds."""

    family: Family
    pipeline: FeaturePipeline
    params: TrainParams
    lgb_params: dict[str, Any]
    weight: float

    def _linear(self, matrix: Matrix, labels: Any) -> LinearModel | None:
        if self.family == "lightgbm":
            return None
        return LinearModel.fit(
            self.pipeline, matrix, labels, weight=self.weight, strength=self.params.logistic_c
        )

    def _dataset(self, matrix: Matrix, labels: Any, linear: LinearModel | None) -> lgb.Dataset:
        init = linear.margins(matrix) if linear is not None else None
        return _dataset(matrix, labels, self.pipeline, self.pipeline.categorical_columns, init)

    def inner_cv(self, matrix: Matrix, labels: Any) -> tuple[int, Matrix | None]:
        """The best number of rounds (0 for the regression alone) and out-of-fold log-odds
        (None when a class is too rare to hold rows out)."""
        oof = np.zeros(len(labels))
        splits = _inner_splits(labels, self.params.inner_folds, self.params.seed)
        if not splits:
            return (0 if self.family == "logistic" else self.params.max_rounds // 4), None
        curves: list[list[float]] = []
        parts: list[tuple[lgb.Booster, Any, Matrix]] = []
        for fit_idx, val_idx in splits:
            linear = self._linear(matrix[fit_idx], labels[fit_idx])
            base = linear.margins(matrix[val_idx]) if linear is not None else np.zeros(len(val_idx))
            if self.family == "logistic":
                oof[val_idx] = base
                continue
            record: dict[str, Any] = {}
            booster = lgb.train(
                self.lgb_params,
                self._dataset(matrix[fit_idx], labels[fit_idx], linear),
                num_boost_round=self.params.max_rounds,
                valid_sets=[self._dataset(matrix[val_idx], labels[val_idx], linear)],
                valid_names=["inner"],
                callbacks=[lgb.record_evaluation(record)],
            )
            curves.append([float(x) for x in record["inner"]["auc"]])
            parts.append((booster, val_idx, base))
        if self.family == "logistic":
            return 0, oof
        best = int(np.argmax(np.mean(np.asarray(curves), axis=0))) + 1
        for booster, val_idx, base in parts:
            trees = booster.predict(matrix[val_idx], raw_score=True, num_iteration=best)
            oof[val_idx] = base + trees
        return best, oof

    def fit(
        self, matrix: Matrix, labels: Any, rounds: int
    ) -> tuple[LinearModel | None, lgb.Booster | None]:
        """The family's parts fitted on every row, the trees with ``rounds`` rounds."""
        linear = self._linear(matrix, labels)
        if self.family == "logistic":
            return linear, None
        booster = lgb.train(
            self.lgb_params,
            self._dataset(matrix, labels, linear),
            num_boost_round=max(rounds, 1),
        )
        return linear, booster


def _inner_splits(labels: Any, folds: int, seed: int) -> list[tuple[Any, Any]]:
    """Stratified, shuffled inner folds; none when a class has fewer rows than folds."""
    from sklearn.model_selection import StratifiedKFold

    folds = max(2, folds)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    if counts.min() < folds:
        return []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def _finish(model: TrainedModel, matrix: Matrix, started: float) -> TrainedModel:
    """Score percentiles, drift reference and training time of a fitted model."""
    pipeline = model.pipeline
    # Scores are percentiles among the training leads as if scored today: under the current
    # context (the values serving fills in), so a lead is ranked against its peers, not years.
    probabilities = model.probabilities(in_context(pipeline, matrix))
    model.score_percentiles = [float(q) for q in np.quantile(probabilities, np.linspace(0, 1, 101))]
    model.score_percentiles[0] = 0.0
    from ecosistema.ml.monitor import drift_reference

    model.drift_reference = drift_reference(pipeline, matrix, probabilities)
    model.training_seconds = round(time.perf_counter() - started, 3)
    return model


def _dataset(
    matrix: Matrix,
    labels: Any,
    pipeline: FeaturePipeline,
    categorical: list[int],
    init_score: Matrix | None = None,
) -> lgb.Dataset:
    return lgb.Dataset(
        matrix,
        labels,
        init_score=init_score,
        feature_name=[c.replace(".", "_") for c in pipeline.columns],
        categorical_feature=categorical,
        free_raw_data=True,
        params={"verbose": -1},
    )


def _monotone(pipeline: FeaturePipeline) -> list[int]:
    """LightGBM's monotone constraints per matrix column, from the spec's numeric features."""
    out: list[int] = []
    for column, group in zip(pipeline.columns, pipeline.groups, strict=True):
        feature = pipeline.spec.feature(group)
        out.append(
            feature.monotone if isinstance(feature, NumericFeature) and column == group else 0
        )
    return out


def in_context(pipeline: FeaturePipeline, matrix: Matrix) -> Matrix:
    """A copy of ``matrix`` with every context feature set to the pipeline's current value."""
    out = matrix.copy()
    for name, value in pipeline.context().items():
        for i, group in enumerate(pipeline.groups):
            if group == name and pipeline.columns[i] == name:
                out[:, i] = value
    return out


def _platt(margins: Any, labels: Any) -> tuple[float, float]:
    """Fit p = sigmoid(a * margin + b) on held-out margins (Platt scaling)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(margins.reshape(-1, 1), labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])
