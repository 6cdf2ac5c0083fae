"""Typed errors of the ML pipeline; they map to problem+json where an API surfaces them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecosistema.platform.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable

if TYPE_CHECKING:
    from ecosistema.ml.validation import ValidationReport


class DatasetError(Unprocessable):
    """The data could not be read at all (missing file, not CSV/Parquet, garbage bytes)."""

    type, title = "ml-dataset-unreadable", "Dataset cannot be read"


class InvalidDataset(Unprocessable):
    """The data was read but fails validation; ``report`` says where and why."""

    type, title = "ml-dataset-invalid", "Dataset failed validation"

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.render(), errors=[i.as_dict() for i in report.errors])
        self.report = report


class ModelNotFound(NotFound):
    """No such model version in the registry."""

    type, title = "ml-model-not-found", "Model version not found"


class NoServingModel(ServiceUnavailable):
    """Nothing is promoted yet, so nothing can score."""

    type, title = "ml-no-serving-model", "No model is serving"


class PromotionRefused(Conflict):
    """The candidate does not beat the serving model on the hold-out."""

    type, title = "ml-promotion-refused", "Model does not beat the serving model"
