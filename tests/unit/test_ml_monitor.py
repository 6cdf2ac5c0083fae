"""Drift monitoring: PSI alarms on shifted data, stays quiet on the training distribution."""

from __future__ import annotations

import pandas as pd
import pytest

from ecosistema.ml import DriftMonitor, TrainedModel, psi, train
from ecosistema.ml.synthetic import synthetic_leads, synthetic_spec


@pytest.fixture(scope="module")
def leads() -> pd.DataFrame:
    return synthetic_leads(3000, seed=5)


@pytest.fixture(scope="module")
def model(leads: pd.DataFrame) -> TrainedModel:
    return train(leads, synthetic_spec())


def test_psi_is_zero_for_equal_distributions_and_grows_with_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.4, 0.6]) < psi([0.5, 0.5], [0.1, 0.9])


def test_resample_of_training_data_raises_no_alarm(model: TrainedModel, leads) -> None:
    resample = leads.sample(n=2000, replace=True, random_state=11)
    report = DriftMonitor(model).check(resample)
    assert not report.alert, report.as_dict()
    assert report.score < 0.05


def test_shifted_data_raises_the_alarm(model: TrainedModel) -> None:
    shifted = synthetic_leads(2000, seed=6, shift=1.0)
    report = DriftMonitor(model).check(shifted)
    assert report.alert
    assert report.drifted[0] == "visits"
    assert "score" in report.drifted
    assert report.features["channel"] < 0.2


def test_observed_rows_feed_the_next_check(model: TrainedModel) -> None:
    monitor = DriftMonitor(model, window=500)
    for row in synthetic_leads(800, seed=7, shift=1.0).to_dict("records"):
        monitor.observe(row)
    report = monitor.check()
    assert report.rows == 500 and report.alert


def test_live_metrics_wait_for_both_outcomes_then_report(model: TrainedModel, leads) -> None:
    monitor = DriftMonitor(model)
    monitor.record_outcome(0.9, True)
    assert monitor.live_metrics()["complete"] is False
    fresh = synthetic_leads(500, seed=8)
    for score, label in zip(model.score_frame(fresh, explain=0), fresh["converted"], strict=True):
        monitor.record_outcome(score.probability, label == "yes")
    live = monitor.live_metrics()
    assert live["complete"] and live["rows"] == 501
    assert live["roc_auc"] > 0.6
