"""Lead scoring in the sales service: the model server it hosts, scoring leads as they change,
re-scoring them when another model version starts serving, and the staff's ML operations
(train, evaluate, promote, drift) on the same registry the ``ecosistema ml`` commands use."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import bindparam, func, or_, select, update

from ecosistema.platform.db import new_id, utcnow
from ecosistema.platform.errors import Conflict, NotFound, Unprocessable
from ecosistema.platform.service import Job, ServiceContext
from ecosistema.sales.domain import OUTCOMES, LeadStatus
from ecosistema.sales.models import leads, training_runs
from ecosistema.sales.schemas import (
    DriftInfo,
    ModelInfo,
    ServingInfo,
    TrainingRun,
    TrainRequest,
)

if TYPE_CHECKING:
    from ecosistema.ml import ModelRegistry, ModelServer, Score

log = structlog.get_logger(__name__)
EXPLAIN = 4
RUN_NOT_FOUND = "No training run with this id."
DRIFT_WINDOW = 10_000
DEFAULT_MODEL_LEASE = "lead-scoring:default-model"
UNFINISHED = ("queued", "running")


@dataclass
class LeadScoring:
    """The registry and the in-process model server of one hosted sales service."""

    registry: ModelRegistry
    server: ModelServer
    run_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rescore_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def score(self, rows: Sequence[Mapping[str, Any]]) -> list[Score] | None:
        """Scores for model-input rows; None while no model serves (the leads wait unscored)."""
        from ecosistema.ml import NoServingModel

        try:
            return self.server.score_many(rows, explain=EXPLAIN)
        except NoServingModel:
            return None

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def scoring_of(ctx: ServiceContext) -> LeadScoring:
    """The service's scoring state, created by its start hook."""
    scoring: LeadScoring | None = ctx.extras.get("scoring")
    if scoring is None:
        raise RuntimeError("the sales service has not started")
    return scoring


async def start_scoring(ctx: ServiceContext) -> None:
    """Open the registry; on a new install train and promote the default model (one replica
    trains, holding a lease in the service's database; the others wait for it); load it.
    Runs left unfinished by a process that died are settled as failed."""
    from ecosistema.ml import Lease, ModelRegistry, ModelServer, ensure_default_model_once

    registry = ModelRegistry(ctx.settings.ml_registry_location())
    context = ctx.settings.sales_macro_indicators
    server = ModelServer(
        registry,
        drift_threshold=ctx.settings.ml_drift_threshold,
        drift_min_rows=ctx.settings.ml_drift_min_rows,
        context=context,
    )
    ctx.extras["scoring"] = LeadScoring(registry, server)
    await settle_stale_runs(ctx)
    if ctx.settings.sales_train_default_model:
        lease = Lease(ctx.db, DEFAULT_MODEL_LEASE, seconds=ctx.settings.ml_lease_seconds)
        await ensure_default_model_once(registry, lease, context=context)
    await asyncio.to_thread(server.reload)
    log.info("sales.scoring_ready", version=server.version)


def score_values(score: Score | None, *, now: Any) -> dict[str, Any]:
    """The lead columns a score (or its absence) sets."""
    if score is None:
        return {
            "score": None,
            "score_rank": -1,
            "probability": None,
            "model_version": None,
            "factors": [],
            "scored_at": None,
        }
    return {
        "score": score.score,
        "score_rank": score.score,
        "probability": round(score.probability, 6),
        "model_version": score.model_version,
        "factors": [
            {
                "feature": f.feature,
                "value": f.value,
                "contribution": f.contribution,
                "phrase": str(f),
            }
            for f in score.factors
        ],
        "scored_at": now,
    }


# --- re-scoring --------------------------------------------------------------------------------


async def rescore_stale_leads(ctx: ServiceContext) -> int:
    """Re-score, in batches, every lead not scored by the serving version; returns how many."""
    scoring = scoring_of(ctx)
    async with scoring.rescore_lock:
        version = scoring.server.version
        if version is None:
            return 0
        batch = max(1, ctx.settings.sales_rescore_batch_size)
        done = 0
        after = ""
        while True:
            async with ctx.db.read() as session:
                rows = (
                    await session.execute(
                        select(leads.c.id, leads.c.features, leads.c.updated_at)
                        .where(
                            or_(leads.c.model_version.is_(None), leads.c.model_version != version),
                            leads.c.id > after,
                        )
                        .order_by(leads.c.id)
                        .limit(batch)
                    )
                ).all()
            if not rows:
                break
            after = rows[-1].id
            scores = await asyncio.to_thread(
                scoring.server.score_many, [r.features for r in rows], explain=EXPLAIN
            )
            now = utcnow()
            params = [
                {"b_id": r.id, "b_seen": r.updated_at, **_bind(score_values(s, now=now))}
                for r, s in zip(rows, scores, strict=True)
            ]
            async with ctx.db.transaction() as session:
                # A lead changed meanwhile keeps the score its own update gave it.
                await session.execute(
                    update(leads)
                    .where(
                        leads.c.id == bindparam("b_id"), leads.c.updated_at == bindparam("b_seen")
                    )
                    .values({k: bindparam(f"b_{k}") for k in _SCORE_COLUMNS}),
                    params,
                )
            done += len(rows)
        if done:
            log.info("sales.leads_rescored", version=version, leads=done)
        return done


_SCORE_COLUMNS = ("score", "score_rank", "probability", "model_version", "factors", "scored_at")


def _bind(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"b_{k}": v for k, v in values.items()}


async def refresh_serving_model(ctx: ServiceContext) -> None:
    """The periodic job: pick up a version promoted elsewhere, settle runs whose process died,
    then re-score stale leads."""
    scoring = scoring_of(ctx)
    await asyncio.to_thread(scoring.server.reload)
    await settle_stale_runs(ctx)
    await rescore_stale_leads(ctx)


async def retrain_from_feedback(ctx: ServiceContext) -> None:
    """The scheduled retraining: the bundled data plus closed leads, promoted only if better."""
    from ecosistema.ml import retrain_job

    scoring = scoring_of(ctx)
    job = retrain_job(
        scoring.registry,
        feedback_rows,
        min_rows=ctx.settings.sales_retrain_min_rows,
        server=scoring.server,
        context=ctx.settings.sales_macro_indicators,
    )
    await job.run(ctx)
    await rescore_stale_leads(ctx)


def jobs() -> tuple[Job, ...]:
    """The service's ML jobs."""
    return (
        Job(
            "ml-reload-and-rescore",
            lambda s: s.sales_rescore_interval_seconds,
            refresh_serving_model,
        ),
        Job("ml-retrain", lambda s: s.sales_retrain_interval_seconds, retrain_from_feedback),
    )


# --- feedback ----------------------------------------------------------------------------------


async def feedback_rows(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Won and lost leads as labelled training rows (model inputs plus ``y``), oldest first."""
    from ecosistema.ml import lead_scoring_spec

    scoring = ctx.extras.get("scoring")
    serving = scoring.server.model.spec if scoring and scoring.server.version else None
    spec = serving or lead_scoring_spec()
    names = spec.feature_names
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(leads.c.features, leads.c.status)
                .where(leads.c.status.in_([s.value for s in OUTCOMES]))
                .order_by(leads.c.closed_at, leads.c.id)
            )
        ).all()
    out = []
    for r in rows:
        features = r.features or {}
        row: dict[str, Any] = {name: features.get(name) for name in names}
        row[spec.target] = (
            spec.positive_labels[0] if r.status == LeadStatus.WON else spec.negative_labels[0]
        )
        out.append(row)
    return out


# --- ML operations (staff) -----------------------------------------------------------------------


def _model_info(version: Any, serving: str | None) -> ModelInfo:
    return ModelInfo(
        version=version.version,
        serving=version.version == serving,
        created_at=version.created_at,
        trained_at=version.trained_at,
        rows=version.rows,
        positives=version.positives,
        training_seconds=version.training_seconds,
        data_hash=version.data_hash,
        headline_roc_auc=version.headline,
        metrics=version.metrics,
    )


async def list_models(ctx: ServiceContext) -> list[ModelInfo]:
    """Every registered version with its metrics, the serving one flagged."""
    registry = scoring_of(ctx).registry

    def _read() -> list[ModelInfo]:
        serving = registry.serving()
        name = serving.version if serving else None
        return [_model_info(v, name) for v in registry.list()]

    return await asyncio.to_thread(_read)


async def serving_info(ctx: ServiceContext) -> ServingInfo:
    """Which version serves here and in the registry, and how the leads stand."""
    scoring = scoring_of(ctx)
    registry_serving = await asyncio.to_thread(scoring.registry.serving)
    version = scoring.server.version
    async with ctx.db.read() as session:
        scored = await session.scalar(
            select(func.count()).select_from(leads).where(leads.c.model_version.is_not(None))
        )
        stale = await session.scalar(
            select(func.count())
            .select_from(leads)
            .where(or_(leads.c.model_version.is_(None), leads.c.model_version != (version or "")))
        )
        closed = await session.scalar(
            select(func.count())
            .select_from(leads)
            .where(leads.c.status.in_([s.value for s in OUTCOMES]))
        )
    return ServingInfo(
        version=version,
        registry_version=registry_serving.version if registry_serving else None,
        registry_url=scoring.registry.url,
        leads_scored=int(scored or 0),
        leads_stale=int(stale or 0),
        feedback_rows=int(closed or 0),
        live_metrics=scoring.server.monitor.live_metrics() if version else {"rows": 0},
    )


async def promote_model(ctx: ServiceContext, version: str, *, force: bool) -> ModelInfo:
    """Make ``version`` serve (if better, or forced), swap it in, and re-score in the background."""
    scoring = scoring_of(ctx)
    chosen = await asyncio.to_thread(scoring.registry.promote, version, force=force)
    await asyncio.to_thread(scoring.server.reload)
    scoring.spawn(rescore_stale_leads(ctx))
    return _model_info(chosen, chosen.version)


async def drift_report(ctx: ServiceContext) -> DriftInfo:
    """PSI of the latest leads' model inputs (and scores) against the serving model's training."""
    scoring = scoring_of(ctx)
    from ecosistema.ml import DriftMonitor

    model = scoring.server.model
    async with ctx.db.read() as session:
        rows = (
            await session.scalars(
                select(leads.c.features)
                .order_by(leads.c.created_at.desc(), leads.c.id.desc())
                .limit(DRIFT_WINDOW)
            )
        ).all()
    if not rows:
        raise Conflict(
            "There are no leads to compare with the training data yet.", type="no-leads-yet"
        )
    monitor = DriftMonitor(
        model, threshold=ctx.settings.ml_drift_threshold, min_rows=ctx.settings.ml_drift_min_rows
    )
    report = await asyncio.to_thread(monitor.check, list(rows))
    return DriftInfo(
        model_version=report.model_version,
        rows=report.rows,
        threshold=report.threshold,
        min_rows=report.min_rows,
        status=report.status,
        alert=report.alert,
        score=report.score,
        features=report.features,
        drifted=report.drifted,
    )


def _run_view(row: Any) -> TrainingRun:
    m = row._mapping
    return TrainingRun(**{k: m[k] for k in TrainingRun.model_fields})


async def start_run(
    ctx: ServiceContext, kind: str, request: TrainRequest, *, requested_by: str
) -> TrainingRun:
    """Queue a training or evaluation run and start it in the background."""
    if not request.include_reference and not request.include_feedback:
        raise Unprocessable(
            "Choose some data: the bundled reference data, the leads' outcomes, or both.",
            errors=[
                {
                    "field": "include_reference",
                    "message": "include_reference and include_feedback cannot both be false",
                    "code": "no_data",
                }
            ],
        )
    scoring = scoring_of(ctx)
    run_id = new_id()
    now = utcnow()
    async with ctx.db.transaction() as session:
        await session.execute(
            training_runs.insert().values(
                id=run_id,
                kind=kind,
                status="queued",
                params=request.model_dump(),
                result=None,
                error=None,
                requested_by=requested_by,
                created_at=now,
            )
        )
    scoring.spawn(_execute_run(ctx, run_id, kind, request))
    return await get_run(ctx, run_id)


async def settle_stale_runs(ctx: ServiceContext) -> int:
    """Mark as failed, with the reason, every run still queued or running longer than
    ``ml_run_timeout_seconds`` after it started: the process running it is gone. Returns how
    many were settled."""
    timeout = ctx.settings.ml_run_timeout_seconds
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout)
    began = func.coalesce(training_runs.c.started_at, training_runs.c.created_at)
    async with ctx.db.read() as session:
        stale = (
            await session.scalars(
                select(training_runs.c.id).where(
                    training_runs.c.status.in_(UNFINISHED), began < cutoff
                )
            )
        ).all()
    if not stale:
        return 0
    reason = (
        f"No result {timeout:g} s after the run started: the process running it stopped "
        "(restart, crash or lost host). Start a new run."
    )
    async with ctx.db.transaction() as session:
        result = await session.execute(
            update(training_runs)
            .where(
                training_runs.c.id.in_(list(stale)),
                training_runs.c.status.in_(UNFINISHED),
            )
            .values(status="failed", error=reason, finished_at=now)
        )
    settled = int(getattr(result, "rowcount", 0) or 0)
    if settled:
        log.warning("sales.training_runs_settled_as_failed", runs=list(stale), reason=reason)
    return settled


async def get_run(ctx: ServiceContext, run_id: str) -> TrainingRun:
    """A training run by id (settled as failed first if its process is gone)."""
    await settle_stale_runs(ctx)
    async with ctx.db.read() as session:
        row = (
            await session.execute(select(training_runs).where(training_runs.c.id == run_id))
        ).first()
    if row is None:
        raise NotFound(RUN_NOT_FOUND)
    return _run_view(row)


async def list_runs(ctx: ServiceContext, *, limit: int = 50) -> list[TrainingRun]:
    """The latest training runs, newest first (stale ones settled as failed first)."""
    await settle_stale_runs(ctx)
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(training_runs)
                .order_by(training_runs.c.created_at.desc(), training_runs.c.id.desc())
                .limit(limit)
            )
        ).all()
    return [_run_view(r) for r in rows]


async def _set_run(ctx: ServiceContext, run_id: str, **values: Any) -> None:
    async with ctx.db.transaction() as session:
        await session.execute(
            update(training_runs).where(training_runs.c.id == run_id).values(**values)
        )


async def _execute_run(ctx: ServiceContext, run_id: str, kind: str, request: TrainRequest) -> None:
    scoring = scoring_of(ctx)
    async with scoring.run_lock:
        await _set_run(ctx, run_id, status="running", started_at=utcnow())
        try:
            feedback = await feedback_rows(ctx) if request.include_feedback else []
            if kind == "train":
                result = await asyncio.to_thread(
                    _train, scoring, request, feedback, ctx.settings.sales_macro_indicators
                )
                if result["promoted"]:
                    await asyncio.to_thread(scoring.server.reload)
                    result["rescored"] = await rescore_stale_leads(ctx)
            else:
                result = await asyncio.to_thread(_evaluate, scoring, request, feedback)
        except Exception as exc:
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            report = getattr(exc, "report", None)
            if report is not None:
                detail = f"{detail}\n{report.render()}"
            log.warning("sales.training_run_failed", run=run_id, error=detail[:500])
            await _set_run(
                ctx, run_id, status="failed", error=detail[:10_000], finished_at=utcnow()
            )
            return
        await _set_run(ctx, run_id, status="succeeded", result=result, finished_at=utcnow())


def _reference(request: TrainRequest) -> Any:
    from ecosistema.ml import load_reference_dataset

    if not request.include_reference:
        return None
    return load_reference_dataset(request.reference_rows)


def _train(
    scoring: LeadScoring,
    request: TrainRequest,
    feedback: list[dict[str, Any]],
    context: Mapping[str, float],
) -> dict[str, Any]:
    from ecosistema.ml import retrain

    result = retrain(
        scoring.registry,
        feedback,
        reference=_reference(request),
        folds=request.folds,
        promote=request.promote,
        force=request.force,
        context=context,
    )
    return {
        "version": result.version.version,
        "promoted": result.promoted,
        "reason": result.reason,
        "headline_roc_auc": result.version.headline,
        "family": result.version.metrics.get("family", "lightgbm"),
        "rows": result.version.rows,
        "feedback_rows": len(feedback),
        "training_seconds": result.version.training_seconds,
    }


def _evaluate(
    scoring: LeadScoring, request: TrainRequest, feedback: list[dict[str, Any]]
) -> dict[str, Any]:
    import pandas as pd

    from ecosistema.ml import evaluate, lead_scoring_spec

    serving = scoring.registry.serving()
    spec = serving.spec if serving else lead_scoring_spec()
    frames = [f for f in (_reference(request), pd.DataFrame(feedback)) if f is not None and len(f)]
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    metrics: dict[str, Any] = evaluate(data, spec, folds=request.folds)
    metrics["feedback_rows"] = len(feedback)
    return metrics


def record_outcome(
    ctx: ServiceContext, *, probability: float | None, model_version: str | None, won: bool
) -> None:
    """Tell the serving model's monitor how a lead it scored ended (live metrics)."""
    scoring: LeadScoring | None = ctx.extras.get("scoring")
    if scoring is None or probability is None or model_version is None:
        return
    if model_version == scoring.server.version:
        scoring.server.monitor.record_outcome(probability, won)
