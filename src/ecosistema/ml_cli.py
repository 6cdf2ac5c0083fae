"""``ecosistema ml``: ingest, validate, train, evaluate, list, promote, check drift, retrain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecosistema.ml.errors import (
    DatasetError,
    InvalidDataset,
    NoServingModel,
    PromotionRefused,
)
from ecosistema.ml.spec import FeatureSpec

if TYPE_CHECKING:
    from ecosistema.ml import ModelRegistry
from ecosistema.ml.errors import ModelNotFound
from ecosistema.platform.config import get_settings

app = typer.Typer(
    name="ml",
    help="Lead-scoring models: ingest, validate, train, evaluate, promote, watch drift.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)

Source = Annotated[
    str | None,
    typer.Argument(help="CSV/Parquet path or URL; the bundled Bank Marketing data when omitted."),
]
Query = Annotated[
    str | None, typer.Option("--query", help="SQL to run when SOURCE is a database URL.")
]
SpecOption = Annotated[
    Path | None, typer.Option("--spec", help="Feature spec JSON; the lead-scoring spec by default.")
]
RegistryOption = Annotated[
    str | None,
    typer.Option("--registry", help="Registry path or fsspec URL (default: settings)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _registry(url: str | None, spec: FeatureSpec | None = None) -> ModelRegistry:
    from ecosistema.ml import ModelRegistry, lead_scoring_spec

    location = url or get_settings().ml_registry_location()
    return ModelRegistry(location, name=(spec or lead_scoring_spec()).name)


def _spec(path: Path | None) -> FeatureSpec:
    from ecosistema.ml import lead_scoring_spec

    if path is None:
        return lead_scoring_spec()
    try:
        return FeatureSpec.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        err.print(f"[red]cannot read feature spec {path}: {exc}[/red]")
        raise typer.Exit(2) from exc


def _load(source: str | None, query: str | None) -> Any:
    from ecosistema.ml import load_dataset, load_reference_dataset

    try:
        if source is None:
            return load_reference_dataset()
        return load_dataset(source, query=query)
    except DatasetError as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from exc


@contextmanager
def _progress(description: str, total: int) -> Iterator[Any]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)

        def step(what: str) -> None:
            progress.update(task, advance=1, description=f"{description}: {what}")

        yield step
        progress.update(task, completed=total, description=f"{description}: done")


def _steps(spec: FeatureSpec, folds: int) -> int:
    return (folds if folds >= 2 else 0) + (1 if spec.has_time_order else 0) + 1


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="CSV/Parquet path or URL, or a database URL.")],
    query: Query = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the table as Parquet here.")
    ] = None,
) -> None:
    """Read a table and show its shape and columns; optionally store it as Parquet."""
    df = _load(source, query)
    table = Table(title=f"{source}: {len(df):,} rows x {len(df.columns)} columns")
    for column in ("column", "type", "missing", "distinct", "example"):
        table.add_column(column)
    for name in df.columns:
        series = df[name]
        example = series.dropna().iloc[0] if series.notna().any() else ""
        table.add_row(
            str(name),
            str(series.dtype),
            f"{series.isna().sum():,}",
            f"{series.nunique():,}",
            str(example)[:30],
        )
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out, index=False)
        console.print(f"written {out}")


@app.command("validate")
def validate_command(
    source: Source = None, query: Query = None, spec: SpecOption = None, as_json: JsonOption = False
) -> None:
    """Check data against the feature spec; exit 1 when it cannot be trained on."""
    from ecosistema.ml import validate

    feature_spec = _spec(spec)
    report = validate(_load(source, query), feature_spec)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        console.print(report.render(), markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def train(
    source: Source = None,
    query: Query = None,
    spec: SpecOption = None,
    registry: RegistryOption = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (0 = hold-out only).")] = 5,
    promote: Annotated[bool, typer.Option(help="Promote if it beats the serving model.")] = True,
    force: Annotated[bool, typer.Option(help="Promote even if it does not.")] = False,
) -> None:
    """Validate, evaluate, train and register a model; promote it when it is better."""
    from ecosistema.ml import train_and_evaluate

    feature_spec = _spec(spec)
    df = _load(source, query)
    try:
        with _progress("training", _steps(feature_spec, folds)) as step:
            model = train_and_evaluate(df, feature_spec, folds=folds, step=step)
    except InvalidDataset as exc:
        err.print(exc.report.render(), markup=False, highlight=False)
        err.print("[red]nothing was trained or registered[/red]")
        raise typer.Exit(1) from exc
    target = _registry(registry, feature_spec)
    version = target.register(model)
    _print_metrics(model.metrics)
    console.print(f"registered {target.name} {version.version} ({model.training_seconds:.1f} s)")
    if promote:
        try:
            target.promote(version.version, force=force)
            console.print(f"[green]{version.version} now serves[/green]")
        except PromotionRefused as exc:
            console.print(f"[yellow]not promoted: {exc.detail}[/yellow]")


@app.command("evaluate")
def evaluate_command(
    source: Source = None,
    query: Query = None,
    spec: SpecOption = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Cross-validate and hold out the latest rows for each model family (hybrid, LightGBM, the
    logistic regression); prints the family training would serve."""
    from ecosistema.ml import evaluate

    feature_spec = _spec(spec)
    df = _load(source, query)
    try:
        with _progress("evaluating", _steps(feature_spec, folds) - 1) as step:
            metrics = evaluate(df, feature_spec, folds=folds, step=step)
    except InvalidDataset as exc:
        err.print(exc.report.render(), markup=False, highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        console.print_json(json.dumps(metrics))
    else:
        _print_metrics(metrics)


@app.command()
def models(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """List registered versions, the serving one marked."""
    target = _registry(registry)
    versions = target.list()
    serving = target.serving()
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "version": v.version,
                        "serving": serving is not None and v.version == serving.version,
                        "headline": v.headline,
                        "rows": v.rows,
                        "created_at": v.created_at.isoformat(),
                        "data_hash": v.data_hash,
                    }
                    for v in versions
                ]
            )
        )
        return
    table = Table(title=f"{target.name} models at {target.url}")
    for column in ("version", "serving", "hold-out/CV ROC-AUC", "rows", "trained", "data hash"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            "*" if serving and serving.version == v.version else "",
            "n/a" if v.headline is None else f"{v.headline:.4f}",
            f"{v.rows:,}",
            v.trained_at.strftime("%Y-%m-%d %H:%M"),
            v.data_hash[:12],
        )
    console.print(table)


@app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="Version to serve, e.g. v3.")],
    registry: RegistryOption = None,
    force: Annotated[bool, typer.Option(help="Promote even if it is not better.")] = False,
) -> None:
    """Make a version serve, if it beats the serving one on the hold-out (or with --force)."""
    target = _registry(registry)
    try:
        chosen = target.promote(version, force=force)
    except (PromotionRefused, ModelNotFound) as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"[green]{chosen.version} now serves[/green]")


@app.command()
def drift(
    source: Annotated[str, typer.Argument(help="Recent rows (CSV/Parquet or database URL).")],
    query: Query = None,
    registry: RegistryOption = None,
    threshold: Annotated[float | None, typer.Option(help="PSI alert threshold.")] = None,
    as_json: JsonOption = False,
) -> None:
    """PSI of recent rows against the serving model's training data; exit 3 on an alert."""
    from ecosistema.ml import DriftMonitor

    target = _registry(registry)
    try:
        model = target.load_serving()
    except ModelNotFound as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    if model is None:
        err.print(f"[red]{NoServingModel.title}: train and promote one first[/red]")
        raise typer.Exit(1)
    limit = threshold if threshold is not None else get_settings().ml_drift_threshold
    report = DriftMonitor(model, threshold=limit).check(_load(source, query))
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        table = Table(title=f"drift of {report.rows:,} rows vs {model.version} (alert > {limit})")
        table.add_column("feature")
        table.add_column("PSI", justify="right")
        for name, value in sorted(
            [*report.features.items(), ("score", report.score)], key=lambda kv: -kv[1]
        ):
            flag = "[red]ALERT[/red]" if value > limit else ""
            table.add_row(name, f"{value:.4f} {flag}")
        console.print(table)
    if report.alert:
        raise typer.Exit(3)


@app.command("retrain")
def retrain_command(
    source: Annotated[
        str | None,
        typer.Argument(help="Labelled feedback rows (CSV/Parquet/database); or --from-leads."),
    ] = None,
    query: Query = None,
    registry: RegistryOption = None,
    from_leads: Annotated[
        bool,
        typer.Option(
            "--from-leads", help="Use the sales service's won/lost leads (from the settings' DB)."
        ),
    ] = False,
    with_reference: Annotated[
        bool, typer.Option(help="Train on the bundled reference data plus the feedback.")
    ] = True,
    reference_rows: Annotated[
        int | None,
        typer.Option(help="Use a stratified sample of this many reference rows (default: all)."),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (0 = hold-out only).")] = 0,
    force: Annotated[bool, typer.Option(help="Promote even if it is not better.")] = False,
) -> None:
    """Retrain from accumulated feedback; promote the new version when it is better."""
    from ecosistema.ml import lead_scoring_spec, load_reference_dataset, retrain

    if (source is None) == (not from_leads):
        err.print("[red]give either a SOURCE or --from-leads[/red]")
        raise typer.Exit(2)
    target = _registry(registry)
    feedback = _lead_feedback() if from_leads else _load(source, query)
    if from_leads:
        console.print(f"{len(feedback):,} won/lost leads as feedback")
    reference = load_reference_dataset(reference_rows) if with_reference else None
    serving = target.serving()
    spec = serving.spec if serving else lead_scoring_spec()
    try:
        with _progress("retraining", _steps(spec, folds)) as step:
            result = retrain(
                target,
                feedback,
                reference=reference,
                spec=spec,
                folds=folds,
                force=force,
                step=step,
            )
    except InvalidDataset as exc:
        err.print(exc.report.render(), markup=False, highlight=False)
        err.print("[red]nothing was trained or registered[/red]")
        raise typer.Exit(1) from exc
    console.print(f"registered {result.version.version}: {result.reason}")


def _lead_feedback() -> Any:
    """The sales service's closed leads as labelled rows, read from its database."""
    import asyncio

    import pandas as pd

    from ecosistema.platform.runtime import Runtime
    from ecosistema.sales import descriptor
    from ecosistema.sales.scoring import feedback_rows

    settings = get_settings().model_copy(update={"sales_train_default_model": False})

    async def _read() -> list[dict[str, Any]]:
        runtime = Runtime(settings, [descriptor])
        await runtime.start(background=False)
        try:
            return await feedback_rows(runtime.contexts["sales"])
        finally:
            await runtime.stop()

    return pd.DataFrame(asyncio.run(_read()))


def _print_metrics(metrics: dict[str, Any]) -> None:
    table = Table(title=f"evaluation on {metrics.get('rows', 0):,} rows")
    table.add_column("metric")
    columns: list[tuple[str, dict[str, Any]]] = []
    names = {"hybrid": "hybrid", "lightgbm": "LightGBM", "baseline": "logistic"}
    for part, label in (
        ("cv", f"{metrics.get('cv', {}).get('folds')}-fold"),
        ("holdout", "hold-out"),
    ):
        columns += [
            (f"{label} {name}", metrics[part][key])
            for key, name in names.items()
            if key in metrics.get(part, {})
        ]
    for title, _ in columns:
        table.add_column(title, justify="right")
    for key in (
        "roc_auc",
        "pr_auc",
        "brier",
        "precision_at_10pct",
        "recall_at_10pct",
        "precision_at_5pct",
        "precision_at_20pct",
        "positive_rate",
        "rows",
    ):
        table.add_row(key, *[str(m.get(key, "")) for _, m in columns])
    console.print(table)
    if "cv" in metrics:
        console.print(
            f"mean fold ROC-AUC {metrics['cv']['roc_auc_mean']} +/- {metrics['cv']['roc_auc_std']}"
        )
    if "family" in metrics:
        console.print(f"family that would serve: {metrics['family']}")
    lift_source = metrics.get("cv", metrics.get("holdout"))
    key = {"logistic": "baseline"}.get(metrics.get("family", ""), metrics.get("family", ""))
    if lift_source and key in lift_source:
        lift = Table(title=f"lift by decile ({metrics['family']})")
        for column in ("decile", "rows", "converted", "rate", "lift", "cumulative_capture"):
            lift.add_column(column, justify="right")
        for row in lift_source[key]["lift"]:
            lift.add_row(
                *[
                    str(row[c])
                    for c in ("decile", "rows", "converted", "rate", "lift", "cumulative_capture")
                ]
            )
        console.print(lift)
