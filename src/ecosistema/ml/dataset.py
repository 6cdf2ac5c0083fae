"""Ingest: read training data from CSV, Parquet (local or any fsspec URL) or a database query."""

from __future__ import annotations

import csv
import hashlib
import io
from importlib import resources
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

from ecosistema.ml.errors import DatasetError
from ecosistema.ml.spec import CategoricalFeature, FeatureSpec, NumericFeature

REFERENCE_DATA = "bank-additional-full.csv.gz"
_SNIFF_BYTES = 64 * 1024


def load_dataset(
    source: str | Path,
    *,
    query: str | None = None,
    format: str | None = None,
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a table from a CSV/Parquet path or fsspec URL, or run ``query`` on a database URL.

    CSV separators (``,`` ``;`` tab ``|``) are detected; ``.gz``/``.bz2``/``.zip``/``.xz`` are
    decompressed. Anything unreadable raises :class:`DatasetError` with the reason.
    """
    text = str(source)
    if query is not None:
        return _read_query(text, query)
    kind = (format or _format_of(text)).lower()
    try:
        if kind == "parquet":
            with fsspec.open(text, "rb") as f:
                return pd.read_parquet(f)
        with fsspec.open(text, "rb", compression="infer") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise DatasetError(f"no such file: {text}") from exc
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read {text} as {kind}: {_reason(exc)}") from exc
    return read_csv_bytes(data, name=text, sep=sep)


def read_csv_bytes(data: bytes, *, name: str = "data", sep: str | None = None) -> pd.DataFrame:
    """Parse CSV bytes (UTF-8), refusing binary or garbled input with a clear reason."""
    if not data.strip():
        raise DatasetError(f"{name} is empty")
    head = data[:_SNIFF_BYTES]
    if b"\x00" in head:
        raise DatasetError(f"{name} is not a CSV file: it holds binary data (NUL bytes)")
    try:
        head_text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a cut at the sniff boundary is not an error
            raise DatasetError(
                f"{name} is not UTF-8 text (byte {exc.start}): is it really a CSV file?"
            ) from exc
        head_text = head[: exc.start].decode("utf-8")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(head_text.split("\n", 1)[0], delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    try:
        df = pd.read_csv(io.BytesIO(data), sep=sep, encoding="utf-8", low_memory=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DatasetError(f"cannot parse {name} as CSV: {_reason(exc)}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _read_query(url: str, query: str) -> pd.DataFrame:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    # Async drivers (the platform's own URLs) are swapped for their synchronous siblings.
    sync_url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    try:
        engine = create_engine(sync_url)
    except Exception as exc:
        raise DatasetError(f"cannot connect to {url.split('@')[-1]}: {_reason(exc)}") from exc
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(text(query), conn)
    except SQLAlchemyError as exc:
        raise DatasetError(f"query failed: {_reason(exc)}") from exc
    finally:
        engine.dispose()


def _format_of(source: str) -> str:
    name = source.lower()
    for suffix in (".gz", ".bz2", ".zip", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    return "parquet" if name.endswith((".parquet", ".pq")) else "csv"


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def data_hash(df: pd.DataFrame) -> str:
    """A sha256 of a table's content (column names, then each row), recorded with each model."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, df.columns)).encode())
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    digest.update(hashed.tobytes())
    return digest.hexdigest()


def reference_data_path() -> Path:
    """Where the bundled UCI Bank Marketing file is installed."""
    return Path(str(resources.files("ecosistema") / "data" / REFERENCE_DATA))


def load_reference_dataset(rows: int | None = None, *, seed: int = 0) -> pd.DataFrame:
    """The bundled UCI Bank Marketing data (CC BY 4.0, Moro et al. 2014); a stratified sample
    of ``rows`` when given, kept in time order."""
    df = load_dataset(reference_data_path(), sep=";")
    if rows is not None and rows < len(df):
        share = rows / len(df)
        df = (
            df.groupby("y", group_keys=False)
            .sample(frac=share, random_state=seed)
            .sort_index()
            .reset_index(drop=True)
        )
    return df


_POUTCOME = {
    "success": "contacted successfully in a previous campaign",
    "failure": "a previous campaign did not convert",
    "nonexistent": "not contacted in a previous campaign",
}
_MONTHS = ("mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def lead_scoring_spec() -> FeatureSpec:
    """The default lead-scoring spec, over the Bank Marketing columns (``duration`` left out)."""

    def cat(name: str, label: str, **kw: Any) -> CategoricalFeature:
        return CategoricalFeature(name=name, label=label, **kw)

    def num(name: str, label: str, **kw: Any) -> NumericFeature:
        return NumericFeature(name=name, label=label, **kw)

    return FeatureSpec(
        name="lead-scoring",
        target="y",
        positive_labels=("yes", "1", "true"),
        negative_labels=("no", "0", "false"),
        rows_in_time_order=True,
        # Call length is known only after the call and nearly decides the outcome (leakage).
        ignored_columns=("duration",),
        description="Will this contact subscribe? UCI Bank Marketing, without call duration.",
        features=(
            num("age", "age", minimum=16, maximum=110),
            cat("job", "job", missing_value="unknown"),
            cat("marital", "marital status", missing_value="unknown"),
            cat("education", "education", missing_value="unknown"),
            cat(
                "default",
                "credit in default",
                missing_value="unknown",
                phrases={"no": "no credit in default", "unknown": "credit default status unknown"},
            ),
            cat(
                "housing",
                "housing loan",
                missing_value="unknown",
                phrases={"yes": "has a housing loan", "no": "no housing loan"},
            ),
            cat(
                "loan",
                "personal loan",
                missing_value="unknown",
                phrases={"yes": "has a personal loan", "no": "no personal loan"},
            ),
            cat(
                "contact",
                "contact channel",
                phrases={
                    "cellular": "reachable on a mobile phone",
                    "telephone": "reachable on a landline only",
                },
            ),
            cat("month", "month of contact", order=_MONTHS),
            cat("day_of_week", "day of contact", order=("mon", "tue", "wed", "thu", "fri")),
            num("campaign", "calls in this campaign", minimum=1, maximum=100),
            num(
                "pdays",
                "days since last contact",
                minimum=0,
                maximum=999,
                missing_values=(999,),
                missing_indicator=True,
                missing_phrase="not contacted before",
            ),
            num("previous", "contacts before this campaign", minimum=0, maximum=100),
            cat("poutcome", "previous campaign outcome", phrases=_POUTCOME),
            num(
                "emp.var.rate",
                "employment variation rate",
                minimum=-10,
                maximum=10,
                context=True,
                monotone=-1,
            ),
            num("cons.price.idx", "consumer price index", minimum=50, maximum=150, context=True),
            num(
                "cons.conf.idx",
                "consumer confidence index",
                minimum=-100,
                maximum=100,
                context=True,
            ),
            num(
                "euribor3m",
                "3-month Euribor rate",
                minimum=-5,
                maximum=20,
                unit="%",
                context=True,
                monotone=-1,
            ),
            num(
                "nr.employed",
                "number employed (thousands)",
                minimum=0,
                maximum=20000,
                context=True,
                monotone=-1,
            ),
        ),
    )
