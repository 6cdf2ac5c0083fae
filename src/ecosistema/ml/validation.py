"""Validation (schema, types, ranges, missing values, duplicates) and cleaning of training data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ecosistema.ml.errors import InvalidDataset
from ecosistema.ml.features import categories_of, to_datetime
from ecosistema.ml.spec import (
    CategoricalFeature,
    DateFeature,
    FeatureSpec,
    NumericFeature,
)

Severity = Literal["error", "warning"]
TARGET = "__label__"
# Rows with a bad value are dropped by cleaning; above this share of rows it is an error instead.
MAX_BAD_FRACTION = 0.05
_MISSING_TOKENS = ["", "na", "n/a", "nan", "null", "none"]


@dataclass(frozen=True)
class Issue:
    """One finding: what is wrong, where, how often, with a few examples."""

    severity: Severity
    check: str
    column: str | None
    message: str
    rows: int = 0
    examples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, also used as a problem+json ``errors`` entry."""
        return {
            "severity": self.severity,
            "check": self.check,
            "field": self.column or "",
            "message": self.message,
            "rows": self.rows,
            "examples": list(self.examples),
        }


@dataclass
class ValidationReport:
    """The outcome of :func:`validate`: row and column counts and every issue found."""

    spec_name: str
    rows: int
    columns: int
    issues: list[Issue] = field(default_factory=list)
    positives: int = 0
    negatives: int = 0

    @property
    def errors(self) -> list[Issue]:
        """Issues that block training."""
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Issues that cleaning repairs by dropping rows, or that only inform."""
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise :class:`InvalidDataset` when the data cannot be trained on."""
        if not self.ok:
            raise InvalidDataset(self)

    def render(self) -> str:
        """A plain-text report a person can read."""
        head = (
            f"Validation against spec {self.spec_name!r}: {self.rows:,} rows x {self.columns} "
            f"columns; {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        )
        if self.positives or self.negatives:
            total = self.positives + self.negatives
            head += f"; target: {self.positives:,} positive of {total:,} labelled"
            head += f" ({self.positives / total:.1%})"
        lines = [head]
        for issue in sorted(self.issues, key=lambda i: (i.severity != "error", i.column or "")):
            where = f"[{issue.column}] " if issue.column else ""
            line = f"  {issue.severity.upper():7} {issue.check:15} {where}{issue.message}"
            if issue.examples:
                line += f" (e.g. {', '.join(issue.examples)})"
            lines.append(line)
        if self.ok:
            lines.append(
                "  OK: the data can be trained on" + (" after cleaning" if self.issues else "")
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "spec": self.spec_name,
            "rows": self.rows,
            "columns": self.columns,
            "ok": self.ok,
            "positives": self.positives,
            "negatives": self.negatives,
            "issues": [i.as_dict() for i in self.issues],
        }


def validate(
    df: pd.DataFrame, spec: FeatureSpec, *, require_target: bool = True
) -> ValidationReport:
    """Check data against the spec and say, readably, everything that is wrong with it."""
    report = ValidationReport(spec.name, len(df), len(df.columns))
    if len(df.columns) == 0 or len(df) == 0:
        report.issues.append(Issue("error", "empty", None, "the data has no rows"))
        return report
    n = len(df)
    bad_rows = np.zeros(n, dtype=bool)

    def severity(count: int) -> Severity:
        return "error" if count > MAX_BAD_FRACTION * n else "warning"

    expected = [*spec.feature_names, *([spec.target] if require_target else [])]
    if spec.time_column and spec.time_column not in spec.feature_names:
        expected.append(spec.time_column)
    missing_columns = [c for c in expected if c not in df.columns]
    for column in missing_columns:
        report.issues.append(
            Issue("error", "missing-column", column, "required column is absent from the data")
        )
    known = {*expected, spec.target, *spec.ignored_columns}
    unknown = [str(c) for c in df.columns if c not in known]
    if unknown:
        shown = ", ".join(repr(c[:40]) for c in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        report.issues.append(
            Issue(
                "warning",
                "unknown-column",
                None,
                f"{len(unknown)} column(s) not in the spec will be ignored: {shown}{more}",
            )
        )

    for feature in spec.features:
        if feature.name not in df.columns:
            continue
        raw = df[feature.name]
        missing = _missing_mask(raw)
        if missing.all():
            report.issues.append(
                Issue("error", "missing-values", feature.name, "every value is missing", n)
            )
            continue
        if missing.any():
            report.issues.append(
                Issue(
                    "warning",
                    "missing-values",
                    feature.name,
                    f"{missing.sum():,} rows ({missing.mean():.1%}) have no value; "
                    "the model treats them as unknown",
                    int(missing.sum()),
                )
            )
        if isinstance(feature, NumericFeature):
            values = pd.to_numeric(raw.where(~missing), errors="coerce")
            wrong = (values.isna() & ~missing).to_numpy()
            if wrong.any():
                report.issues.append(
                    _examples_issue(
                        severity(int(wrong.sum())),
                        "wrong-type",
                        feature.name,
                        "values are not numbers",
                        raw,
                        wrong,
                    )
                )
                bad_rows |= wrong
            in_use = ~values.isin(feature.missing_values)
            low = values < feature.minimum if feature.minimum is not None else values < -np.inf
            high = values > feature.maximum if feature.maximum is not None else values > np.inf
            out = ((low | high) & in_use).to_numpy()
            if out.any():
                bounds = f"[{_fmt(feature.minimum, '-inf')}, {_fmt(feature.maximum, 'inf')}]"
                report.issues.append(
                    _examples_issue(
                        severity(int(out.sum())),
                        "out-of-range",
                        feature.name,
                        f"values outside {bounds}",
                        raw,
                        out,
                    )
                )
                bad_rows |= out
        elif isinstance(feature, DateFeature):
            unreadable = (
                np.array([to_datetime(v) is None for v in raw], dtype=bool) & ~missing.to_numpy()
            )
            if unreadable.any():
                report.issues.append(
                    _examples_issue(
                        severity(int(unreadable.sum())),
                        "wrong-type",
                        feature.name,
                        "values are not dates",
                        raw,
                        unreadable,
                    )
                )
                bad_rows |= unreadable
        elif isinstance(feature, CategoricalFeature) and feature.values:
            allowed = set(feature.values)
            novel = np.array(
                [c is not None and c not in allowed for c in categories_of(raw.to_numpy())],
                dtype=bool,
            )
            if novel.any():
                report.issues.append(
                    _examples_issue(
                        "warning",
                        "unknown-value",
                        feature.name,
                        "values not among the declared ones are scored as '(other)'",
                        raw,
                        novel,
                    )
                )

    if require_target and spec.target in df.columns:
        labels = _labels(df[spec.target], spec)
        target_missing = _missing_mask(df[spec.target]).to_numpy()
        unknown_label = labels.isna().to_numpy() & ~target_missing
        if target_missing.any():
            report.issues.append(
                Issue(
                    severity(int(target_missing.sum())),
                    "missing-target",
                    spec.target,
                    f"{target_missing.sum():,} rows have no outcome and are dropped",
                    int(target_missing.sum()),
                )
            )
        if unknown_label.any():
            accepted = "/".join([*spec.positive_labels, *spec.negative_labels])
            report.issues.append(
                _examples_issue(
                    severity(int(unknown_label.sum())),
                    "unknown-label",
                    spec.target,
                    f"outcomes are not one of {accepted}",
                    df[spec.target],
                    unknown_label,
                )
            )
        report.positives = int((labels == 1).sum())
        report.negatives = int((labels == 0).sum())
        if report.positives == 0 or report.negatives == 0:
            report.issues.append(
                Issue(
                    "error",
                    "single-class",
                    spec.target,
                    "a model needs both outcomes among the labelled rows "
                    f"({report.positives} positive, {report.negatives} negative)",
                )
            )

    # A whole record repeated is a data error; equal features alone are different people alike.
    duplicated = df.duplicated().to_numpy()
    if duplicated.any():
        rows = [str(i + 1) for i in np.flatnonzero(duplicated)[:3]]
        report.issues.append(
            Issue(
                severity(int(duplicated.sum())),
                "duplicates",
                None,
                f"{duplicated.sum():,} rows repeat an earlier row and are dropped",
                int(duplicated.sum()),
                tuple(f"row {r}" for r in rows),
            )
        )
    bad = int(bad_rows.sum())
    if bad > MAX_BAD_FRACTION * n and not any(i.severity == "error" for i in report.issues):
        report.issues.append(
            Issue("error", "bad-rows", None, f"{bad:,} rows ({bad / n:.1%}) have a bad value", bad)
        )
    return report


def clean(df: pd.DataFrame, spec: FeatureSpec, *, require_target: bool = True) -> pd.DataFrame:
    """The trainable rows: typed columns, bad/unlabelled/duplicate rows dropped, ``__label__`` 0/1.

    Order is kept (or set by ``spec.time_column``), so a time-ordered hold-out stays meaningful.
    """
    columns = [c for c in spec.feature_names if c in df.columns]
    if spec.time_column and spec.time_column in df.columns and spec.time_column not in columns:
        columns.append(spec.time_column)
    out = df[columns].copy()
    keep = np.ones(len(out), dtype=bool)
    for feature in spec.features:
        if feature.name not in out.columns:
            continue
        raw = out[feature.name]
        missing = _missing_mask(raw)
        if isinstance(feature, NumericFeature):
            values = pd.to_numeric(raw.where(~missing), errors="coerce")
            keep &= ~(values.isna() & ~missing).to_numpy()
            in_use = ~values.isin(feature.missing_values)
            if feature.minimum is not None:
                keep &= ~((values < feature.minimum) & in_use).to_numpy()
            if feature.maximum is not None:
                keep &= ~((values > feature.maximum) & in_use).to_numpy()
            out[feature.name] = values.astype(np.float64)
        elif isinstance(feature, DateFeature):
            parsed = [to_datetime(v) for v in raw]
            keep &= ~(np.array([p is None for p in parsed], dtype=bool) & ~missing.to_numpy())
        elif isinstance(feature, CategoricalFeature):
            out[feature.name] = pd.Series(
                categories_of(raw.to_numpy()), index=out.index, dtype=object
            )
        else:
            out[feature.name] = pd.Series(
                [None if m else str(v) for v, m in zip(raw, missing, strict=True)],
                index=out.index,
                dtype=object,
            )
    if require_target:
        labels = _labels(df[spec.target], spec)
        keep &= labels.notna().to_numpy()
        out[TARGET] = labels.fillna(0).astype(np.int8)
    keep &= ~df.duplicated().to_numpy()
    out = out[keep]
    if spec.time_column and spec.time_column in out.columns:
        moments = pd.to_datetime(out[spec.time_column], errors="coerce", utc=True, format="mixed")
        out = out.iloc[np.argsort(moments.to_numpy(), kind="stable")]
    return out.reset_index(drop=True)


def _labels(series: pd.Series, spec: FeatureSpec) -> pd.Series:
    mapping = {value: spec.label_of(value) for value in series.dropna().unique()}
    return series.map(mapping).astype("Float64")


def _missing_mask(series: pd.Series) -> pd.Series:
    missing = series.isna()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        text = series.astype(str).str.strip().str.lower()
        missing |= text.isin(_MISSING_TOKENS)
    return missing


def _examples_issue(
    severity: Severity, check: str, column: str, what: str, raw: pd.Series, mask: Any
) -> Issue:
    count = int(np.sum(mask))
    idx = np.flatnonzero(mask)[:3]
    examples = tuple(f"row {i + 1}: {str(raw.iloc[i])[:30]!r}" for i in idx)
    return Issue(
        severity, check, column, f"{count:,} rows ({count / len(raw):.1%}) {what}", count, examples
    )


def _fmt(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"
