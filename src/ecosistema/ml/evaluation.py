"""Evaluation: stratified k-fold and a time-ordered hold-out of both model families (LightGBM
and the logistic baseline, through the same pipeline); the better one on the hold-out serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
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
) -> dict[str, Any]:
    """Stratified k-fold (out-of-fold metrics) and, when rows have a time order, a hold-out of the
    latest ``holdout_fraction`` trained on the earlier rows; LightGBM beside the baseline."""
    params = params or TrainParams()
    data = df if cleaned else prepare(df, spec)
    labels = data[TARGET].to_numpy().astype(np.int64)
    started = time.perf_counter()
    report: dict[str, Any] = {"rows": len(data), "positives": int(labels.sum())}
    if folds >= 2:
        from sklearn.model_selection import StratifiedKFold

        oof = np.zeros(len(data))
        oof_base = np.zeros(len(data))
        fold_auc: list[float] = []
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=params.seed)
        for k, (fit_idx, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels), 1):
            if step:
                step(f"fold {k}/{folds}")
            model, base = _fit_and_score(data, spec, params, fit_idx, test_idx)
            oof[test_idx], oof_base[test_idx] = model, base
            fold_auc.append(
                classification_metrics(labels[test_idx], model, detailed=False)["roc_auc"]
            )
        report["cv"] = {
            "folds": folds,
            "roc_auc_mean": round(float(np.mean(fold_auc)), 4),
            "roc_auc_std": round(float(np.std(fold_auc)), 4),
            "roc_auc_per_fold": fold_auc,
            "lightgbm": classification_metrics(labels, oof),
            "baseline": classification_metrics(labels, oof_base),
        }
    if spec.has_time_order:
        if step:
            step("time-ordered hold-out")
        cut = int(len(data) * (1 - holdout_fraction))
        fit_idx, test_idx = np.arange(cut), np.arange(cut, len(data))
        if 0 < labels[test_idx].sum() < len(test_idx) and 0 < labels[fit_idx].sum() < cut:
            model, base = _fit_and_score(data, spec, params, fit_idx, test_idx)
            report["holdout"] = {
                "rows": len(test_idx),
                "share": holdout_fraction,
                "lightgbm": classification_metrics(labels[test_idx], model),
                "baseline": classification_metrics(labels[test_idx], base),
            }
    report["family"] = choose_family(report)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


# The metrics key of each family ("baseline" is the logistic regression).
_KEY: dict[Family, str] = {"lightgbm": "lightgbm", "logistic": "baseline"}


def choose_family(report: dict[str, Any]) -> Family:
    """The family with the better hold-out ROC-AUC (else cross-validated); LightGBM on a tie."""
    part = report.get("holdout") or report.get("cv")
    if not part:
        return "lightgbm"
    best: Family = "lightgbm"
    for family in FAMILIES:
        if part[_KEY[family]]["roc_auc"] > part[_KEY[best]]["roc_auc"]:
            best = family
    return best


def _fit_and_score(
    data: pd.DataFrame, spec: FeatureSpec, params: TrainParams, fit_idx: Any, test_idx: Any
) -> tuple[Matrix, Matrix]:
    fit_part = data.iloc[fit_idx].reset_index(drop=True)
    test_part = data.iloc[test_idx].reset_index(drop=True)
    model = train(fit_part, spec, replace(params, seed=params.seed), cleaned=True)
    test_x = model.pipeline.transform(_frame_columns(test_part, spec))
    linear = train(fit_part, spec, params, cleaned=True, family="logistic")
    return model.probabilities(test_x), linear.probabilities(test_x)


def headline(metrics: dict[str, Any]) -> float | None:
    """The number promotion compares: the serving family's hold-out ROC-AUC, else its
    cross-validated ROC-AUC."""
    key = _KEY.get(metrics.get("family", "lightgbm"), "lightgbm")
    if "holdout" in metrics:
        return float(metrics["holdout"][key]["roc_auc"])
    if "cv" in metrics:
        return float(metrics["cv"][key]["roc_auc"])
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
    """Evaluate both families, then train the better one on every row, with the evaluation
    (``family`` names the one trained) as its metrics."""
    data = prepare(df, spec)
    metrics = evaluate(data, spec, params, folds=folds, cleaned=True, step=step)
    if step:
        step(f"final model ({metrics['family']})")
    model = train(data, spec, params, cleaned=True, context=context, family=metrics["family"])
    model.metrics = metrics
    return model
