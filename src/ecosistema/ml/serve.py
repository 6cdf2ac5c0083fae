"""In-process serving: one model at a time, swapped atomically while requests keep scoring."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from ecosistema.ml.errors import NoServingModel
from ecosistema.ml.model import Score, TrainedModel
from ecosistema.ml.monitor import DriftMonitor
from ecosistema.ml.registry import ModelRegistry

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Serving:
    """Model and its monitor, replaced together by one reference assignment."""

    model: TrainedModel
    monitor: DriftMonitor


class ModelServer:
    """Holds the serving model; ``swap``/``reload`` replace it without stopping scoring.

    A score reads the current model once and uses it to the end, so every score is consistent
    with the version it reports, and a swap never fails an in-flight request.
    """

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        model: TrainedModel | None = None,
        *,
        explain: int = 4,
        drift_threshold: float = 0.2,
        drift_min_rows: int = 200,
        observe: bool = True,
        context: Mapping[str, float] | None = None,
    ) -> None:
        self.registry = registry
        self.drift_min_rows = drift_min_rows
        # The current values of context features (e.g. interest rates), overriding those the
        # model was trained with; a row that carries its own value keeps it.
        self.context = dict(context or {})
        self.explain = explain
        self.drift_threshold = drift_threshold
        self.observe = observe
        self._reload_lock = threading.Lock()
        self._current: _Serving | None = None
        if model is not None:
            self.swap(model)

    @property
    def model(self) -> TrainedModel:
        """The serving model; :class:`NoServingModel` when there is none."""
        current = self._current
        if current is None:
            raise NoServingModel("no lead-scoring model is serving yet")
        return current.model

    @property
    def version(self) -> str | None:
        """The serving version, None when nothing serves."""
        current = self._current
        return current.model.version if current else None

    @property
    def monitor(self) -> DriftMonitor:
        """The drift monitor of the serving model."""
        current = self._current
        if current is None:
            raise NoServingModel("no lead-scoring model is serving yet")
        return current.monitor

    def score(self, row: Mapping[str, Any], *, explain: int | None = None) -> Score:
        """Score one lead (a dict of feature values; missing keys count as unknown)."""
        return self.score_many([row], explain=explain)[0]

    def score_many(
        self, rows: Sequence[Mapping[str, Any]], *, explain: int | None = None
    ) -> list[Score]:
        """Score several leads with the same model version."""
        current = self._current
        if current is None:
            raise NoServingModel("no lead-scoring model is serving yet")
        scores = current.model.score_rows(
            rows, explain=self.explain if explain is None else explain
        )
        if self.observe:
            for row in rows:
                current.monitor.observe(row)
        return scores

    def swap(self, model: TrainedModel) -> None:
        """Serve ``model`` from the next score on; in-flight scores finish on the old one."""
        previous = self.version
        if self.context:
            model = dataclasses.replace(model, pipeline=model.pipeline.with_context(self.context))
        monitor = DriftMonitor(model, threshold=self.drift_threshold, min_rows=self.drift_min_rows)
        self._current = _Serving(model, monitor)
        log.info("ml.model_swapped", version=model.version, previous=previous)

    def reload(self) -> bool:
        """Load the registry's serving version if it changed; True when a swap happened."""
        if self.registry is None:
            raise RuntimeError("this server has no registry to reload from")
        with self._reload_lock:
            serving = self.registry.serving()
            if serving is None or serving.version == self.version:
                return False
            self.swap(self.registry.load(serving.version))
            return True
