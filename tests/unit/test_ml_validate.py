"""Validation catches bad data with a report a person can read; cleaning drops what it flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecosistema.ml import DatasetError, InvalidDataset, clean, train, validate
from ecosistema.ml.dataset import read_csv_bytes
from ecosistema.ml.synthetic import synthetic_leads, synthetic_spec
from ecosistema.ml.validation import TARGET

SPEC = synthetic_spec()


@pytest.fixture
def leads() -> pd.DataFrame:
    return synthetic_leads(400, seed=3).drop_duplicates().reset_index(drop=True)


def checks(report) -> dict[tuple[str, str | None], str]:
    return {(i.check, i.column): i.severity for i in report.issues}


def test_clean_data_passes(leads: pd.DataFrame) -> None:
    report = validate(leads, SPEC)
    assert report.ok and report.issues == []
    assert "0 error(s)" in report.render()


def test_wrong_types_are_errors_with_row_examples(leads: pd.DataFrame) -> None:
    leads["visits"] = leads["visits"].astype(object)
    leads.loc[::2, "visits"] = "lots"
    report = validate(leads, SPEC)
    assert checks(report)[("wrong-type", "visits")] == "error"
    assert "values are not numbers" in report.render()
    assert "row 1: 'lots'" in report.render()
    with pytest.raises(InvalidDataset) as raised:
        report.raise_for_errors()
    assert raised.value.extra["errors"][0]["field"] == "visits"


def test_a_few_wrong_values_are_a_warning_and_cleaned_away(leads: pd.DataFrame) -> None:
    leads["visits"] = leads["visits"].astype(object)
    leads.loc[[5, 9], "visits"] = "n.a.x"
    report = validate(leads, SPEC)
    assert checks(report)[("wrong-type", "visits")] == "warning" and report.ok
    cleaned = clean(leads, SPEC)
    assert len(cleaned) == len(leads) - 2
    assert cleaned["visits"].dtype == np.float64


def test_unknown_columns_are_reported(leads: pd.DataFrame) -> None:
    leads["favourite_colour"] = "blue"
    report = validate(leads, SPEC)
    assert ("unknown-column", None) in checks(report)
    assert "'favourite_colour'" in report.render()
    assert "favourite_colour" not in clean(leads, SPEC).columns


def test_out_of_range_values_are_reported(leads: pd.DataFrame) -> None:
    leads.loc[: len(leads) // 2, "visits"] = -5
    report = validate(leads, SPEC)
    assert checks(report)[("out-of-range", "visits")] == "error"
    assert "values outside [0, 1000]" in report.render()


def test_sentinel_is_not_out_of_range(leads: pd.DataFrame) -> None:
    assert (leads["days_since_contact"] == 999).any()
    assert ("out-of-range", "days_since_contact") not in checks(validate(leads, SPEC))


def test_missing_target_column_is_an_error(leads: pd.DataFrame) -> None:
    report = validate(leads.drop(columns=["converted"]), SPEC)
    assert checks(report)[("missing-column", "converted")] == "error"


def test_missing_target_values_are_dropped(leads: pd.DataFrame) -> None:
    leads.loc[[1, 2, 3], "converted"] = None
    report = validate(leads, SPEC)
    assert checks(report)[("missing-target", "converted")] == "warning"
    assert "3 rows have no outcome" in report.render()
    assert len(clean(leads, SPEC)) == len(leads) - 3


def test_unknown_labels_are_reported(leads: pd.DataFrame) -> None:
    leads["converted"] = "maybe"
    report = validate(leads, SPEC)
    assert checks(report)[("unknown-label", "converted")] == "error"
    assert checks(report)[("single-class", "converted")] == "error"


def test_duplicates_are_reported_and_dropped(leads: pd.DataFrame) -> None:
    doubled = pd.concat([leads, leads.iloc[:10]], ignore_index=True)
    report = validate(doubled, SPEC)
    assert checks(report)[("duplicates", None)] == "warning"
    assert "10 rows repeat an earlier row" in report.render()
    assert len(clean(doubled, SPEC)) == len(leads)


def test_empty_data_is_an_error() -> None:
    report = validate(pd.DataFrame(), SPEC)
    assert not report.ok and report.errors[0].check == "empty"
    with pytest.raises(DatasetError, match="empty"):
        read_csv_bytes(b"  \n")


def test_random_bytes_are_refused_with_a_clear_error() -> None:
    garbage = np.random.default_rng(0).bytes(10 * 1024 * 1024)
    with pytest.raises(DatasetError, match=r"not a CSV file|not UTF-8"):
        read_csv_bytes(garbage, name="upload.csv")


def test_training_refuses_invalid_data(leads: pd.DataFrame) -> None:
    with pytest.raises(InvalidDataset, match="missing-column"):
        train(leads.drop(columns=["channel"]), SPEC)


def test_clean_orders_rows_by_time_column(leads: pd.DataFrame) -> None:
    shuffled = leads.sample(frac=1.0, random_state=0)
    cleaned = clean(shuffled, SPEC)
    assert list(cleaned["created_at"]) == sorted(cleaned["created_at"])
    assert set(cleaned[TARGET]) == {0, 1}
