"""Evaluation: stratified k-fold and a time-ordered hold-out of every model family (the hybrid of
logistic regression and LightGBM, LightGBM alone, and the logistic baseline, all through the same
pipeline, every step fitted inside each training fold); ``choose_family`` picks the one to serve."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ecosistema.ml.features import Matrix
from ecosistema.ml.model import (
    FAMILIES,
    Family,
    TrainedModel,
    TrainParams,
    _frame_columns,
    prepare,
    train,
)
from ecosistema.ml.spec import FeatureSpec
from ecosistema.ml.validation import TARGET

Step = Callable[[str], None]
TOP_SHARES = (0.05, 0.10, 0.20)
# Hold-out ROC-AUC differences below this are within its noise (its standard error on the
# reference data's 8,235-row hold-out is about 0.006): they do not decide which family serves.
HOLDOUT_TOLERANCE = 0.005


def classification_metrics(
    labels: Any, probabilities: Any, *, detailed: bool = True
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC, Brier, precision/recall at top k%; ``detailed`` adds calibration, lift."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    out: dict[str, Any] = {
        "rows": len(y),
        "positives": int(y.sum()),
        "positive_rate": round(float(y.mean()), 4) if len(y) else 0.0,
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "pr_auc": round(float(average_precision_score(y, p)), 4),
        "brier": round(float(brier_score_loss(y, p)), 4),
    }
    order = np.argsort(-p, kind="stable")
    for share in TOP_SHARES:
        k = max(1, round(len(y) * share))
        hits = int(y[order[:k]].sum())
        pct = round(share * 100)
        out[f"precision_at_{pct}pct"] = round(hits / k, 4)
        out[f"recall_at_{pct}pct"] = round(hits / max(int(y.sum()), 1), 4)
    if detailed:
        out["calibration"] = calibration_table(y, p)
        out["lift"] = lift_table(y, p)
    return out


def calibration_table(labels: Any, probabilities: Any, bins: int = 10) -> list[dict[str, Any]]:
    """Mean predicted vs observed rate, per band of equal-count predicted probability."""
    order = np.argsort(probabilities, kind="stable")
    rows: list[dict[str, Any]] = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            rows.append(
                {
                    "rows": len(chunk),
                    "predicted": round(float(np.mean(probabilities[chunk])), 4),
                    "observed": round(float(np.mean(labels[chunk])), 4),
                }
            )
    return rows


def lift_table(labels: Any, probabilities: Any, bins: int = 10) -> list[dict[str, Any]]:
    """Deciles from the highest score down: conversion rate, lift and cumulative share captured."""
    order = np.argsort(-probabilities, kind="stable")
    base = max(float(np.mean(labels)), 1e-12)
    total = max(int(np.sum(labels)), 1)
    captured = 0
    rows: list[dict[str, Any]] = []
    for i, chunk in enumerate(np.array_split(order, bins), start=1):
        hits = int(labels[chunk].sum())
        captured += hits
        rate = hits / max(len(chunk), 1)
        rows.append(
            {
                "decile": i,
                "rows": len(chunk),
                "converted": hits,
                "rate": round(rate, 4),
                "lift": round(rate / base, 2),
                "cumulative_capture": round(captured / total, 4),
            }
        )
    return rows


def evaluate(
    df: pd.DataFrame,
    spec: FeatureSpec,
    params: TrainParams | None = None,
    *,
    folds: int = 5,
    holdout_fraction: float = 0.2,
    cleaned: bool = False,
    step: Step | None = None,
    families: tuple[Family, ...] = FAMILIES,
) -> dict[str, Any]:
    """Stratified k-fold (out-of-fold metrics, and the mean and spread of the per-fold ROC-AUC)
    and, when rows have a time order, a hold-out of the latest ``holdout_fraction`` trained on
    the earlier rows; each family of ``families`` on the same folds."""
    params = params or TrainParams()
    data = df if cleaned else prepare(df, spec)
    labels = data[TARGET].to_numpy().astype(np.int64)
    started = time.perf_counter()
    report: dict[str, Any] = {"rows": len(data), "positives": int(labels.sum())}
    if folds >= 2:
        from sklearn.model_selection import StratifiedKFold

        oof = {f: np.zeros(len(data)) for f in families}
        fold_auc: dict[Family, list[float]] = {f: [] for f in families}
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=params.seed)
        for k, (fit_idx, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels), 1):
            if step:
                step(f"fold {k}/{folds}")
            scored = _fit_and_score(data, spec, params, fit_idx, test_idx, families)
            for family, probabilities in scored.items():
                oof[family][test_idx] = probabilities
                fold_auc[family].append(
                    classification_metrics(labels[test_idx], probabilities, detailed=False)[
                        "roc_auc"
                    ]
                )
        cv: dict[str, Any] = {"folds": folds}
        for family in families:
            metrics = classification_metrics(labels, oof[family])
            metrics["roc_auc_mean"] = round(float(np.mean(fold_auc[family])), 4)
            metrics["roc_auc_std"] = round(float(np.std(fold_auc[family])), 4)
            metrics["roc_auc_per_fold"] = fold_auc[family]
            cv[_KEY[family]] = metrics
        first = cv[_KEY[families[0]]]
        cv["roc_auc_mean"], cv["roc_auc_std"] = first["roc_auc_mean"], first["roc_auc_std"]
        cv["roc_auc_per_fold"] = first["roc_auc_per_fold"]
        report["cv"] = cv
    if spec.has_time_order:
        if step:
            step("time-ordered hold-out")
        cut = int(len(data) * (1 - holdout_fraction))
        fit_idx, test_idx = np.arange(cut), np.arange(cut, len(data))
        if 0 < labels[test_idx].sum() < len(test_idx) and 0 < labels[fit_idx].sum() < cut:
            scored = _fit_and_score(data, spec, params, fit_idx, test_idx, families)
            holdout: dict[str, Any] = {"rows": len(test_idx), "share": holdout_fraction}
            for family, probabilities in scored.items():
                holdout[_KEY[family]] = classification_metrics(labels[test_idx], probabilities)
            report["holdout"] = holdout
    report["families"] = list(families)
    report["family"] = choose_family(report)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


# The metrics key of each family ("baseline" is the logistic regression).
_KEY: dict[Family, str] = {"hybrid": "hybrid", "lightgbm": "lightgbm", "logistic": "baseline"}


def choose_family(report: dict[str, Any]) -> Family:
    """The family that serves: the best on the hold-out, except that families within
    ``HOLDOUT_TOLERANCE`` of it count as equal, and among equals the best cross-validated one
    wins (without cross-validation, the first in ``FAMILIES`` order).

    Without a hold-out, the best cross-validated family; without either, the first family.
    """
    families: list[Family] = [
        f for f in FAMILIES if f in report.get("families", ("lightgbm", "logistic"))
    ]
    holdout, cv = report.get("holdout"), report.get("cv")
    present = [f for f in families if (holdout or cv or {}).get(_KEY[f])]
    if not present:
        return families[0] if families else "hybrid"
    if holdout:
        best = max(holdout[_KEY[f]]["roc_auc"] for f in present)
        present = [f for f in present if holdout[_KEY[f]]["roc_auc"] >= best - HOLDOUT_TOLERANCE]
    if cv:
        return max(present, key=lambda f: (cv[_KEY[f]]["roc_auc"], -families.index(f)))
    return present[0]


def _fit_and_score(
    data: pd.DataFrame,
    spec: FeatureSpec,
    params: TrainParams,
    fit_idx: Any,
    test_idx: Any,
    families: tuple[Family, ...],
) -> dict[Family, Matrix]:
    """Each family trained on the ``fit_idx`` rows alone, scoring the ``test_idx`` rows."""
    fit_part = data.iloc[fit_idx].reset_index(drop=True)
    test_part = data.iloc[test_idx].reset_index(drop=True)
    out: dict[Family, Matrix] = {}
    for family in families:
        model = train(fit_part, spec, params, cleaned=True, family=family)
        test_x = model.pipeline.transform(_frame_columns(test_part, spec))
        out[family] = model.probabilities(test_x)
    return out


def headline(metrics: dict[str, Any]) -> float | None:
    """The number promotion compares: the serving family's hold-out ROC-AUC, else its
    cross-validated ROC-AUC."""
    key = _KEY.get(metrics.get("family", "lightgbm"), "lightgbm")
    for part in ("holdout", "cv"):
        if key in metrics.get(part, {}):
            return float(metrics[part][key]["roc_auc"])
    return None


def train_and_evaluate(
    df: pd.DataFrame,
    spec: FeatureSpec,
    params: TrainParams | None = None,
    *,
    folds: int = 5,
    step: Step | None = None,
    context: Mapping[str, float] | None = None,
) -> TrainedModel:
    """Evaluate every family, then train the one ``choose_family`` picks on every row, with the
    evaluation (``family`` names the one trained) as its metrics."""
    data = prepare(df, spec)
    metrics = evaluate(data, spec, params, folds=folds, cleaned=True, step=step)
    if step:
        step(f"final model ({metrics['family']})")
    model = train(data, spec, params, cleaned=True, context=context, family=metrics["family"])
    model.metrics = metrics
    return model
