"""The ML pipeline: ingest, validate, features, train, evaluate, register, serve, monitor, retrain.

Reused by the sales service (lead scoring) and, later, marketing and documents. See docs/ml.md.
"""

# Names load on first use, so importing one light module of the pipeline (its errors, its spec)
# does not pull in LightGBM, scikit-learn and pandas: the API server and the CLI start faster.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecosistema.ml.dataset import (
        data_hash,
        lead_scoring_spec,
        load_dataset,
        load_reference_dataset,
    )
    from ecosistema.ml.errors import (
        DatasetError,
        InvalidDataset,
        ModelNotFound,
        NoServingModel,
        PromotionRefused,
    )
    from ecosistema.ml.evaluation import classification_metrics, evaluate, train_and_evaluate
    from ecosistema.ml.features import FeaturePipeline, minilm_available
    from ecosistema.ml.lease import Lease
    from ecosistema.ml.lifecycle import (
        RetrainResult,
        default_model,
        ensure_default_model,
        ensure_default_model_once,
        reload_job,
        retrain,
        retrain_job,
    )
    from ecosistema.ml.model import Factor, Score, TrainedModel, TrainParams, train
    from ecosistema.ml.monitor import DriftMonitor, DriftReport, psi
    from ecosistema.ml.registry import ModelRegistry, ModelVersion, Promotion
    from ecosistema.ml.serve import ModelServer
    from ecosistema.ml.spec import (
        CategoricalFeature,
        DateFeature,
        FeatureSpec,
        NumericFeature,
        TextFeature,
    )
    from ecosistema.ml.validation import Issue, ValidationReport, clean, validate

_EXPORTS: dict[str, str] = {
    "CategoricalFeature": "ecosistema.ml.spec",
    "DatasetError": "ecosistema.ml.errors",
    "DateFeature": "ecosistema.ml.spec",
    "DriftMonitor": "ecosistema.ml.monitor",
    "DriftReport": "ecosistema.ml.monitor",
    "Factor": "ecosistema.ml.model",
    "FeaturePipeline": "ecosistema.ml.features",
    "FeatureSpec": "ecosistema.ml.spec",
    "InvalidDataset": "ecosistema.ml.errors",
    "Issue": "ecosistema.ml.validation",
    "ModelNotFound": "ecosistema.ml.errors",
    "ModelRegistry": "ecosistema.ml.registry",
    "ModelServer": "ecosistema.ml.serve",
    "ModelVersion": "ecosistema.ml.registry",
    "NoServingModel": "ecosistema.ml.errors",
    "NumericFeature": "ecosistema.ml.spec",
    "Promotion": "ecosistema.ml.registry",
    "PromotionRefused": "ecosistema.ml.errors",
    "RetrainResult": "ecosistema.ml.lifecycle",
    "Score": "ecosistema.ml.model",
    "TextFeature": "ecosistema.ml.spec",
    "TrainParams": "ecosistema.ml.model",
    "TrainedModel": "ecosistema.ml.model",
    "ValidationReport": "ecosistema.ml.validation",
    "classification_metrics": "ecosistema.ml.evaluation",
    "clean": "ecosistema.ml.validation",
    "data_hash": "ecosistema.ml.dataset",
    "default_model": "ecosistema.ml.lifecycle",
    "ensure_default_model": "ecosistema.ml.lifecycle",
    "ensure_default_model_once": "ecosistema.ml.lifecycle",
    "Lease": "ecosistema.ml.lease",
    "evaluate": "ecosistema.ml.evaluation",
    "lead_scoring_spec": "ecosistema.ml.dataset",
    "load_dataset": "ecosistema.ml.dataset",
    "load_reference_dataset": "ecosistema.ml.dataset",
    "minilm_available": "ecosistema.ml.features",
    "psi": "ecosistema.ml.monitor",
    "reload_job": "ecosistema.ml.lifecycle",
    "retrain": "ecosistema.ml.lifecycle",
    "retrain_job": "ecosistema.ml.lifecycle",
    "train": "ecosistema.ml.model",
    "train_and_evaluate": "ecosistema.ml.evaluation",
    "validate": "ecosistema.ml.validation",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecosistema.ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CategoricalFeature",
    "DatasetError",
    "DateFeature",
    "DriftMonitor",
    "DriftReport",
    "Factor",
    "FeaturePipeline",
    "FeatureSpec",
    "InvalidDataset",
    "Issue",
    "Lease",
    "ModelNotFound",
    "ModelRegistry",
    "ModelServer",
    "ModelVersion",
    "NoServingModel",
    "NumericFeature",
    "Promotion",
    "PromotionRefused",
    "RetrainResult",
    "Score",
    "TextFeature",
    "TrainParams",
    "TrainedModel",
    "ValidationReport",
    "classification_metrics",
    "clean",
    "data_hash",
    "default_model",
    "ensure_default_model",
    "ensure_default_model_once",
    "evaluate",
    "lead_scoring_spec",
    "load_dataset",
    "load_reference_dataset",
    "minilm_available",
    "psi",
    "reload_job",
    "retrain",
    "retrain_job",
    "train",
    "train_and_evaluate",
    "validate",
]
