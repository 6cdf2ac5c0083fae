"""First-start training, retraining from feedback, and the scheduled jobs that run them."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import structlog

from ecosistema.ml.dataset import lead_scoring_spec, load_reference_dataset
from ecosistema.ml.errors import PromotionRefused
from ecosistema.ml.evaluation import Step, train_and_evaluate
from ecosistema.ml.model import TrainedModel, TrainParams
from ecosistema.ml.registry import ModelRegistry, ModelVersion
from ecosistema.ml.serve import ModelServer
from ecosistema.ml.spec import FeatureSpec
from ecosistema.platform.service import Job, ServiceContext

if TYPE_CHECKING:
    from ecosistema.ml.lease import Lease

log = structlog.get_logger(__name__)
Feedback = Callable[[ServiceContext], Awaitable[Sequence[Mapping[str, Any]]]]

_default_lock = threading.Lock()
_default_model: TrainedModel | None = None


def default_model(*, step: Step | None = None) -> TrainedModel:
    """The default lead-scoring model, trained on the bundled reference data once per process.

    The bundled data and the training are deterministic, so a process that starts several
    registries (tests, several hosted runtimes) trains once; each call returns its own copy.
    """
    global _default_model
    with _default_lock:
        if _default_model is None:
            _default_model = train_and_evaluate(
                load_reference_dataset(), lead_scoring_spec(), folds=0, step=step
            )
        return dataclasses.replace(_default_model, version="unregistered")


def ensure_default_model(
    registry: ModelRegistry,
    *,
    data: pd.DataFrame | None = None,
    folds: int = 0,
    step: Step | None = None,
    context: Mapping[str, float] | None = None,
) -> ModelVersion:
    """The serving model; on a new install, train one on the bundled reference data and promote it.

    ``folds=0`` keeps first start quick (hold-out evaluation only); ``ecosistema ml evaluate``
    gives the full cross-validation. ``context`` sets the current values of context features
    (default: the latest in the data).
    """
    serving = registry.serving()
    if serving is not None:
        return serving
    if registry.list():
        latest = registry.list()[-1]
        log.info("ml.default_model_promoting_latest", version=latest.version)
        return registry.promote(latest.version, force=True)
    if data is None and folds == 0 and not context:
        model = default_model(step=step)
    else:
        frame = data if data is not None else load_reference_dataset()
        model = train_and_evaluate(
            frame, lead_scoring_spec(), folds=folds, step=step, context=context
        )
    version = registry.register(model)
    return registry.promote(version.version)


async def ensure_default_model_once(
    registry: ModelRegistry,
    lease: Lease,
    *,
    poll_seconds: float = 1.0,
    **options: Any,
) -> ModelVersion:
    """:func:`ensure_default_model` for several processes sharing one registry: the one holding
    ``lease`` trains (renewing the lease meanwhile), the others wait for its model to serve and
    return it. Should the trainer die, its lease expires and a waiting process takes over.

    ``options`` go to :func:`ensure_default_model`.
    """
    while True:
        serving = await asyncio.to_thread(registry.serving)
        if serving is not None:
            return serving
        if await lease.acquire():
            beat = asyncio.get_running_loop().create_task(lease.keep_alive())
            try:
                log.info("ml.default_model_training", holder=lease.holder)
                return await asyncio.to_thread(ensure_default_model, registry, **options)
            finally:
                beat.cancel()
                await lease.release()
        log.info("ml.default_model_waiting", lease=lease.name)
        await asyncio.sleep(poll_seconds)


@dataclass(frozen=True)
class RetrainResult:
    """What a retraining produced and whether it now serves."""

    version: ModelVersion
    promoted: bool
    reason: str


def retrain(
    registry: ModelRegistry,
    labelled_rows: Sequence[Mapping[str, Any]] | pd.DataFrame,
    *,
    reference: pd.DataFrame | None = None,
    spec: FeatureSpec | None = None,
    params: TrainParams | None = None,
    folds: int = 0,
    promote: bool = True,
    force: bool = False,
    step: Step | None = None,
    context: Mapping[str, float] | None = None,
) -> RetrainResult:
    """Train a new version on ``reference`` (optional, older) plus labelled feedback rows (newer),
    register it, and promote it if it beats the serving model on the hold-out (or ``force``).

    Feedback rows lack context features (the economy is not a lead's property): they are trained
    with ``context`` (default: the latest values in ``reference``), the values serving fills in.
    """
    serving = registry.serving()
    spec = spec or (serving.spec if serving else lead_scoring_spec())
    feedback = (
        labelled_rows
        if isinstance(labelled_rows, pd.DataFrame)
        else pd.DataFrame(list(labelled_rows))
    )
    frames = [f for f in (reference, feedback) if f is not None and len(f)]
    data = pd.concat(frames, ignore_index=True) if frames else feedback
    model = train_and_evaluate(data, spec, params, folds=folds, step=step, context=context)
    version = registry.register(model)
    if not promote:
        return RetrainResult(version, False, "registered without promotion")
    try:
        registry.promote(version.version, force=force)
    except PromotionRefused as exc:
        log.info("ml.retrain_not_promoted", version=version.version, reason=exc.detail)
        return RetrainResult(version, False, exc.detail)
    return RetrainResult(version, True, "promoted")


def retrain_job(
    registry: ModelRegistry,
    feedback: Feedback,
    *,
    interval_seconds: float = 24 * 3600,
    min_rows: int = 200,
    reference: Callable[[], pd.DataFrame] | None = load_reference_dataset,
    server: ModelServer | None = None,
    name: str = "ml-retrain",
    context: Mapping[str, float] | None = None,
) -> Job:
    """A background job: fetch accumulated labelled feedback, retrain, and swap on promotion.

    ``feedback(ctx)`` returns the labelled rows (the owning service reads its own tables);
    training runs in a worker thread so the event loop keeps serving.
    """

    async def run(ctx: ServiceContext) -> None:
        rows = await feedback(ctx)
        if len(rows) < min_rows:
            log.info("ml.retrain_skipped", rows=len(rows), min_rows=min_rows)
            return
        base = await asyncio.to_thread(reference) if reference else None
        result = await asyncio.to_thread(retrain, registry, rows, reference=base, context=context)
        log.info(
            "ml.retrained",
            version=result.version.version,
            promoted=result.promoted,
            reason=result.reason,
        )
        if result.promoted and server is not None:
            await asyncio.to_thread(server.reload)

    return Job(name=name, interval_seconds=interval_seconds, run=run)


def reload_job(server: ModelServer, *, interval_seconds: float = 30.0) -> Job:
    """A background job: pick up a version promoted elsewhere (another replica, the CLI)."""

    async def run(ctx: ServiceContext) -> None:
        await asyncio.to_thread(server.reload)

    return Job(name="ml-reload", interval_seconds=interval_seconds, run=run)
