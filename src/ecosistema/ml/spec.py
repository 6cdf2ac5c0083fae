"""The feature spec: every input column declared once, read by training and serving alike."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FeatureKind = Literal["numeric", "categorical", "text", "date"]
TextEmbedding = Literal["tfidf", "minilm"]
DatePart = Literal["month", "day_of_week", "day_of_month", "hour", "day_of_year"]


@dataclass(frozen=True)
class NumericFeature:
    """A number. ``missing_values`` are codes meaning "not known" (e.g. 999 = never contacted)."""

    name: str
    label: str = ""
    minimum: float | None = None
    maximum: float | None = None
    missing_values: tuple[float, ...] = ()
    # Adds a 0/1 column "was this value known", for codes that carry meaning of their own.
    missing_indicator: bool = False
    unit: str = ""
    # What a salesperson reads when the value is one of ``missing_values`` or absent.
    missing_phrase: str = ""
    # Context, not a property of the row (e.g. an interest rate): when absent it is filled from the
    # model's current context (the latest values in its training data, or configured ones), and
    # it is never listed as a reason for a score nor monitored for drift.
    context: bool = False
    # -1 or 1: the score may only fall (rise) as the value grows (a LightGBM constraint).
    monotone: int = 0
    kind: Literal["numeric"] = "numeric"

    @property
    def display(self) -> str:
        """The words a salesperson reads for this feature."""
        return self.label or self.name


@dataclass(frozen=True)
class CategoricalFeature:
    """A label from a small set. ``order`` (when the values are ordered) adds an ordinal column."""

    name: str
    label: str = ""
    values: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    # Phrases for a value, e.g. {"success": "contacted successfully in a previous campaign"}.
    phrases: dict[str, str] = field(default_factory=dict)
    min_count: int = 10
    # The value that means "not known" in the data (e.g. "unknown"): an absent input takes it.
    missing_value: str | None = None
    kind: Literal["categorical"] = "categorical"

    @property
    def display(self) -> str:
        """The words a salesperson reads for this feature."""
        return self.label or self.name


@dataclass(frozen=True)
class TextFeature:
    """Free text, embedded as TF-IDF + SVD (default) or with the MiniLM sentence model."""

    name: str
    label: str = ""
    embedding: TextEmbedding = "tfidf"
    dimensions: int = 16
    max_terms: int = 5000
    kind: Literal["text"] = "text"

    @property
    def display(self) -> str:
        """The words a salesperson reads for this feature."""
        return self.label or self.name


@dataclass(frozen=True)
class DateFeature:
    """A date or timestamp (ISO 8601 text or datetime), split into calendar parts."""

    name: str
    label: str = ""
    parts: tuple[DatePart, ...] = ("month", "day_of_week", "day_of_month")
    kind: Literal["date"] = "date"

    @property
    def display(self) -> str:
        """The words a salesperson reads for this feature."""
        return self.label or self.name


Feature = NumericFeature | CategoricalFeature | TextFeature | DateFeature
_KINDS: dict[str, type[Any]] = {
    "numeric": NumericFeature,
    "categorical": CategoricalFeature,
    "text": TextFeature,
    "date": DateFeature,
}


@dataclass(frozen=True)
class FeatureSpec:
    """What a model reads, what it predicts, and how its rows are ordered in time."""

    name: str
    target: str
    features: tuple[Feature, ...]
    positive_labels: tuple[str, ...] = ("1", "yes", "true")
    negative_labels: tuple[str, ...] = ("0", "no", "false")
    # A date column that orders rows in time; None with rows_in_time_order=True means the file's
    # own row order is time order. Either enables the time-ordered hold-out.
    time_column: str | None = None
    rows_in_time_order: bool = False
    # Columns known to be in the data and deliberately not used (e.g. leakage); not "unknown".
    ignored_columns: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names repeat in spec {self.name!r}")
        if self.target in names:
            raise ValueError(f"target {self.target!r} cannot also be a feature")

    @property
    def feature_names(self) -> list[str]:
        """Input column names, in declaration order."""
        return [f.name for f in self.features]

    @property
    def has_time_order(self) -> bool:
        """True when a time-ordered hold-out can be built."""
        return self.time_column is not None or self.rows_in_time_order

    def feature(self, name: str) -> Feature:
        """The declared feature of that name."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def label_of(self, value: object) -> int | None:
        """1, 0, or None when the value is missing or not a known label."""
        if value is None:
            return None
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value != value:
            return None
        text = str(value).strip().lower()
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = str(int(value)) if float(value).is_integer() else text
        if text in self.positive_labels:
            return 1
        if text in self.negative_labels:
            return 0
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The spec as JSON, as stored beside each model."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        features: list[Feature] = []
        for raw in data["features"]:
            kind = raw.get("kind", "numeric")
            if kind not in _KINDS:
                raise ValueError(f"unknown feature kind {kind!r}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
            features.append(_KINDS[kind](**values))
        return cls(
            name=data["name"],
            target=data["target"],
            features=tuple(features),
            positive_labels=tuple(data.get("positive_labels", ("1", "yes", "true"))),
            negative_labels=tuple(data.get("negative_labels", ("0", "no", "false"))),
            time_column=data.get("time_column"),
            rows_in_time_order=bool(data.get("rows_in_time_order", False)),
            ignored_columns=tuple(data.get("ignored_columns", ())),
            description=data.get("description", ""),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))
