"""Which model family serves: the hold-out decides unless its differences are within its noise,
then cross-validation does; the promotion headline follows the family that serves."""

from __future__ import annotations

from typing import Any

from ecosistema.ml.evaluation import HOLDOUT_TOLERANCE, choose_family, headline


def report(holdout: dict[str, float] | None, cv: dict[str, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"families": ["hybrid", "lightgbm", "logistic"]}
    if holdout is not None:
        out["holdout"] = {k: {"roc_auc": v} for k, v in holdout.items()}
    if cv is not None:
        out["cv"] = {k: {"roc_auc": v} for k, v in cv.items()}
    return out


def test_a_clearly_better_holdout_wins_whatever_cross_validation_says() -> None:
    close = HOLDOUT_TOLERANCE * 2
    r = report(
        {"hybrid": 0.75 - close, "lightgbm": 0.69, "baseline": 0.75},
        {"hybrid": 0.805, "lightgbm": 0.806, "baseline": 0.79},
    )
    assert choose_family(r) == "logistic"


def test_holdout_ties_within_its_noise_are_settled_by_cross_validation() -> None:
    r = report(
        {"hybrid": 0.749, "lightgbm": 0.686, "baseline": 0.7507},
        {"hybrid": 0.8043, "lightgbm": 0.8051, "baseline": 0.7912},
    )
    # LightGBM has the best cross-validation but is far behind on the hold-out: not a candidate.
    assert choose_family(r) == "hybrid"
    r["family"] = "hybrid"
    assert headline(r) == 0.749


def test_without_cross_validation_ties_go_to_the_first_family() -> None:
    assert choose_family(report({"hybrid": 0.748, "lightgbm": 0.70, "baseline": 0.75}, None)) == (
        "hybrid"
    )
    assert choose_family(report({"hybrid": 0.70, "lightgbm": 0.70, "baseline": 0.75}, None)) == (
        "logistic"
    )


def test_without_a_holdout_cross_validation_decides() -> None:
    r = report(None, {"hybrid": 0.80, "lightgbm": 0.81, "baseline": 0.79})
    assert choose_family(r) == "lightgbm"
    r["family"] = "lightgbm"
    assert headline(r) == 0.81


def test_reports_of_older_versions_with_two_families_still_choose() -> None:
    old = {
        "holdout": {"lightgbm": {"roc_auc": 0.71}, "baseline": {"roc_auc": 0.745}},
        "family": "logistic",
    }
    assert choose_family(old) == "logistic"
    assert headline(old) == 0.745
