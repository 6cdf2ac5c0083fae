"""Monitoring: feature and score drift (PSI against the training data) and live metrics."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import structlog
from prometheus_client import Gauge

from ecosistema.ml.features import FeaturePipeline, Matrix, rows_to_columns
from ecosistema.ml.spec import CategoricalFeature, NumericFeature

if TYPE_CHECKING:
    from ecosistema.ml.model import TrainedModel

log = structlog.get_logger(__name__)
PSI_GAUGE = Gauge(
    "ecosistema_ml_drift_psi",
    "Population stability index against training data",
    ["model", "feature"],
)
SCORE = "__score__"
_FLOOR = 1e-4
_BINS = 10


def drift_reference(
    pipeline: FeaturePipeline, matrix: Matrix, probabilities: Matrix
) -> dict[str, Any]:
    """Bin edges and training proportions per feature and for the score (stored with the model).

    Context features (the same value for every lead scored now) are not monitored; the score's
    reference is the training leads scored under the current context, as live leads are.
    """
    reference: dict[str, Any] = {}
    for name, column in _feature_columns(pipeline).items():
        values = matrix[:, column]
        if isinstance(pipeline.spec.feature(name), CategoricalFeature):
            edges = [i + 0.5 for i in range(len(pipeline.categories[name]))]
        else:
            edges = _quantile_edges(values)
        reference[name] = {"edges": edges, "expected": _proportions(values, edges)}
    edges = _quantile_edges(probabilities)
    reference[SCORE] = {"edges": edges, "expected": _proportions(probabilities, edges)}
    return reference


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two binned distributions."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


DriftStatus = Literal["drift", "stable", "not_enough_data"]


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature and for the score, and which exceed the alert threshold."""

    model_version: str
    rows: int
    threshold: float
    features: dict[str, float]
    score: float
    # Below this many rows PSI is too noisy to alert on (the status says "not_enough_data").
    min_rows: int = 0

    @property
    def enough_data(self) -> bool:
        """True when there are enough rows for an alert to mean something."""
        return self.rows >= max(self.min_rows, 1)

    @property
    def status(self) -> DriftStatus:
        """``drift``, ``stable``, or ``not_enough_data``."""
        if not self.enough_data:
            return "not_enough_data"
        return "drift" if self.drifted else "stable"

    @property
    def drifted(self) -> list[str]:
        """Features (and ``score``) whose PSI is above the threshold, worst first."""
        over = {k: v for k, v in self.features.items() if v > self.threshold}
        if self.score > self.threshold:
            over["score"] = self.score
        return sorted(over, key=lambda k: -over[k])

    @property
    def alert(self) -> bool:
        """True when there are enough rows and anything drifted past the threshold."""
        return self.enough_data and bool(self.drifted)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "model_version": self.model_version,
            "rows": self.rows,
            "threshold": self.threshold,
            "min_rows": self.min_rows,
            "status": self.status,
            "alert": self.alert,
            "drifted": self.drifted,
            "score_psi": self.score,
            "feature_psi": self.features,
        }


@dataclass
class DriftMonitor:
    """Compares recent rows with the serving model's training data; 0.2 PSI is the usual alarm.

    ``observe`` keeps a rolling window of scored rows; ``record_outcome`` collects labels as they
    arrive so :meth:`live_metrics` can say how the model does on real outcomes.
    """

    model: TrainedModel
    threshold: float = 0.2
    window: int = 10_000
    min_rows: int = 200
    _rows: deque[Mapping[str, Any]] = field(init=False)
    _outcomes: deque[tuple[float, int]] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rows = deque(maxlen=self.window)
        self._outcomes = deque(maxlen=self.window)

    def observe(self, row: Mapping[str, Any]) -> None:
        """Remember a scored row for the next :meth:`check`."""
        with self._lock:
            self._rows.append(row)

    def record_outcome(self, probability: float, converted: bool) -> None:
        """Remember a real outcome for a scored lead."""
        with self._lock:
            self._outcomes.append((probability, int(converted)))

    def check(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None) -> DriftReport:
        """PSI of the given rows (or the observed window) against the training data."""
        spec = self.model.spec
        if rows is None:
            with self._lock:
                rows = list(self._rows)
        if isinstance(rows, pd.DataFrame):
            columns: Mapping[str, Any] = {
                n: rows[n].to_numpy() for n in spec.feature_names if n in rows.columns
            }
            count = len(rows)
        else:
            columns = rows_to_columns(rows, spec.feature_names)
            count = len(rows)
        if count == 0:
            return DriftReport(self.model.version, 0, self.threshold, {}, 0.0, self.min_rows)
        matrix = self.model.pipeline.transform(columns)
        reference = self.model.drift_reference
        features: dict[str, float] = {}
        for name, column in _feature_columns(self.model.pipeline).items():
            ref = reference.get(name)
            if ref is not None:
                actual = _proportions(matrix[:, column], ref["edges"])
                features[name] = round(psi(ref["expected"], actual), 4)
        # Scored as the reference was: every lead in the current context, so a file of past
        # leads that carries its own economic values compares like for like.
        from ecosistema.ml.model import in_context

        probabilities = self.model.probabilities(in_context(self.model.pipeline, matrix))
        ref = reference[SCORE]
        score = round(psi(ref["expected"], _proportions(probabilities, ref["edges"])), 4)
        report = DriftReport(
            self.model.version, count, self.threshold, features, score, self.min_rows
        )
        if report.enough_data:
            for name, value in [*features.items(), ("score", score)]:
                PSI_GAUGE.labels(model=spec.name, feature=name).set(value)
        _log_state_change(spec.name, report)
        return report

    def live_metrics(self) -> dict[str, Any]:
        """ROC-AUC, PR-AUC and Brier score on the outcomes recorded so far."""
        from ecosistema.ml.evaluation import classification_metrics

        with self._lock:
            pairs = list(self._outcomes)
        labels = np.array([y for _, y in pairs], dtype=np.int64)
        if len(pairs) == 0 or labels.min() == labels.max():
            return {"rows": len(pairs), "positives": int(labels.sum()), "complete": False}
        probabilities = np.array([p for p, _ in pairs])
        metrics = classification_metrics(labels, probabilities, detailed=False)
        return {**metrics, "complete": True}


_states_lock = threading.Lock()
_states: dict[tuple[str, str], DriftStatus] = {}


def _log_state_change(model: str, report: DriftReport) -> None:
    """Log ``ml.drift_alert`` once when a version starts drifting, ``ml.drift_cleared`` when it
    stops; checks that find the same state again stay quiet."""
    key = (model, report.model_version)
    with _states_lock:
        previous = _states.get(key)
        _states[key] = report.status
    if report.status == previous:
        return
    if report.status == "drift":
        log.warning(
            "ml.drift_alert",
            model=model,
            version=report.model_version,
            drifted=report.drifted,
            threshold=report.threshold,
            rows=report.rows,
        )
    elif previous == "drift":
        log.info(
            "ml.drift_cleared", model=model, version=report.model_version, status=report.status
        )


def _feature_columns(pipeline: FeaturePipeline) -> dict[str, int]:
    """The first matrix column of each monitored feature (context features are not)."""
    first: dict[str, int] = {}
    for i, group in enumerate(pipeline.groups):
        feature = pipeline.spec.feature(group)
        if not (isinstance(feature, NumericFeature) and feature.context):
            first.setdefault(group, i)
    return first


def _quantile_edges(values: Matrix) -> list[float]:
    known = values[~np.isnan(values)]
    if known.size == 0:
        return []
    edges = np.unique(np.quantile(known, np.linspace(0, 1, _BINS + 1)[1:-1]))
    return [float(e) for e in edges]


def _proportions(values: Matrix, edges: Sequence[float]) -> list[float]:
    """Shares per bin (values <= edge[0], ..., > edge[-1]), then the share of missing values."""
    missing = np.isnan(values)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values[~missing], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.float64)
    counts = np.append(counts, missing.sum())
    total = max(len(values), 1)
    return [float(c / total) for c in counts]
