"""The ML pipeline: ingest, validate, features, train, evaluate, register, serve, monitor, retrain.

Reused by the sales service (lead scoring) and, later, marketing and documents. See docs/ml.md.
"""

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
from ecosistema.ml.evaluate import classification_metrics, evaluate, train_and_evaluate
from ecosistema.ml.features import FeaturePipeline, minilm_available
from ecosistema.ml.lifecycle import (
    RetrainResult,
    ensure_default_model,
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
from ecosistema.ml.validate import Issue, ValidationReport, clean, validate

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
    "ensure_default_model",
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
