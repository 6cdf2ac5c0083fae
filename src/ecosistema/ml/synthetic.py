"""Synthetic leads with all four feature kinds, for tests, demos and benchmarks of the pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from ecosistema.ml.spec import (
    CategoricalFeature,
    DateFeature,
    FeatureSpec,
    NumericFeature,
    TextFeature,
)

_NOTES_GOOD = ["asked for a quote", "wants a demo next week", "budget approved", "ready to buy"]
_NOTES_BAD = ["not interested", "call back next year", "wrong number", "no budget"]


def synthetic_spec() -> FeatureSpec:
    """A spec over :func:`synthetic_leads` columns: numeric, categorical, text and date."""
    return FeatureSpec(
        name="synthetic-leads",
        target="converted",
        time_column="created_at",
        features=(
            NumericFeature("visits", "site visits", minimum=0, maximum=1000),
            NumericFeature(
                "days_since_contact",
                "days since last contact",
                minimum=0,
                maximum=999,
                missing_values=(999,),
                missing_indicator=True,
                missing_phrase="never contacted",
            ),
            CategoricalFeature(
                "channel",
                "channel",
                phrases={"referral": "came through a referral"},
                min_count=5,
            ),
            TextFeature("notes", "call notes", dimensions=4),
            DateFeature("created_at", "created", parts=("month", "day_of_week")),
        ),
    )


def synthetic_leads(n: int = 3000, *, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """``n`` leads whose conversion depends on every feature; ``shift`` moves the inputs."""
    rng = np.random.default_rng(seed)
    visits = rng.poisson(3 + shift * 10, n).astype(float)
    contacted = rng.random(n) < 0.4
    days = np.where(contacted, rng.integers(1, 60, n), 999).astype(float)
    channel = rng.choice(["ads", "referral", "organic", "event"], n, p=[0.4, 0.2, 0.3, 0.1])
    good = rng.random(n) < 0.3
    notes = np.where(good, rng.choice(_NOTES_GOOD, n), rng.choice(_NOTES_BAD, n))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    created = [
        (start + timedelta(days=int(d))).isoformat() for d in np.sort(rng.integers(0, 365, n))
    ]
    logit = -2.5 + 0.25 * visits + 1.0 * contacted + 0.8 * (channel == "referral") + 1.5 * good
    converted = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "visits": visits,
            "days_since_contact": days,
            "channel": channel,
            "notes": notes,
            "created_at": created,
            "converted": np.where(converted, "yes", "no"),
        }
    )
