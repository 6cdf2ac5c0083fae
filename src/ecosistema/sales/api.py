"""Sales' HTTP API: leads (create, import, read, change, list by score), their activity
timeline, and the staff's ML operations under ``/ml``."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from ecosistema.platform.auth import CurrentPrincipal, Principal, require
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.service import ServiceContext, context_of
from ecosistema.sales import scoring, service, transfer
from ecosistema.sales.domain import LeadStatus
from ecosistema.sales.schemas import (
    Activity,
    ActivityCreate,
    ActivityPage,
    DriftInfo,
    Lead,
    LeadCreate,
    LeadImportReport,
    LeadPage,
    LeadSort,
    LeadUpdate,
    ModelInfo,
    PromoteRequest,
    ServingInfo,
    TrainingRun,
    TrainRequest,
)

Context = Annotated[ServiceContext, Depends(context_of("sales"))]
LeadWriter = Annotated[Principal, Depends(require("leads:write"))]
MlReader = Annotated[Principal, Depends(require("ml:read"))]
MlManager = Annotated[Principal, Depends(require("ml:manage"))]
Cursor = Annotated[str | None, Query(max_length=2048, description="next_cursor of the last page")]
Limit = Annotated[int, Query(ge=1, le=200)]
Filter = Annotated[str | None, Query(min_length=1, max_length=100)]
ScoreBound = Annotated[int | None, Query(ge=0, le=100)]

router = APIRouter(tags=["sales"])


@router.post(
    "/leads",
    response_model=Lead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a lead; it is scored before the answer",
    description="An open lead with the same email answers 409 `lead-exists`, with its `lead_id` "
    "when the caller may read that lead.",
    responses=_errors(401, 403, 409, 422),
)
async def create_lead(body: LeadCreate, ctx: Context, principal: LeadWriter) -> Lead:
    return await service.create_lead(ctx, principal, body)


@router.post(
    "/leads/import",
    response_model=LeadImportReport,
    summary="Import leads from CSV (text/csv, or a file in multipart/form-data), streamed",
    description="Every row is validated and reported by line number. `all-or-nothing` "
    "(default) writes nothing if any row is refused and answers 422 `import-rejected` with the "
    "rows in `errors`; `skip-invalid` writes the valid rows and lists the others. Unknown "
    "columns, an empty or binary file, or a body over the size limit are refused before any "
    "row is read. Imported leads are scored in batches.",
    responses=_errors(400, 401, 403, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def import_leads(
    request: Request,
    ctx: Context,
    principal: LeadWriter,
    mode: Annotated[transfer.ImportMode, Query()] = "all-or-nothing",
) -> LeadImportReport:
    report = await transfer.import_stream(
        ctx,
        principal,
        request.stream(),
        content_type=request.headers.get("content-type"),
        mode=mode,
    )
    return report


@router.get(
    "/leads",
    response_model=LeadPage,
    summary="List leads (sales users: their own), filtered, sorted by score or creation",
    responses=_errors(401, 403, 422),
)
async def list_leads(
    ctx: Context,
    principal: CurrentPrincipal,
    status_: Annotated[LeadStatus | None, Query(alias="status")] = None,
    owner_id: Filter = None,
    source: Filter = None,
    campaign: Filter = None,
    min_score: ScoreBound = None,
    max_score: ScoreBound = None,
    sort: Annotated[LeadSort, Query()] = "created_desc",
    cursor: Cursor = None,
    limit: Limit = 50,
) -> LeadPage:
    return await service.list_leads(
        ctx,
        principal,
        status=status_,
        owner_id=owner_id,
        source=source,
        campaign=campaign,
        min_score=min_score,
        max_score=max_score,
        sort=sort,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/leads/{lead_id}",
    response_model=Lead,
    summary="A lead with its score and the factors behind it",
    responses=_errors(401, 403, 404),
)
async def get_lead(lead_id: str, ctx: Context, principal: CurrentPrincipal) -> Lead:
    return await service.get_lead(ctx, principal, lead_id)


@router.patch(
    "/leads/{lead_id}",
    response_model=Lead,
    summary="Change a lead, its owner or its status; re-scored before the answer",
    responses=_errors(401, 403, 404, 409, 422),
)
async def update_lead(lead_id: str, body: LeadUpdate, ctx: Context, principal: LeadWriter) -> Lead:
    return await service.update_lead(ctx, principal, lead_id, body)


@router.get(
    "/leads/{lead_id}/activities",
    response_model=ActivityPage,
    summary="A lead's timeline: calls, emails, notes, status changes and platform events",
    responses=_errors(401, 403, 404, 422),
)
async def list_activities(
    lead_id: str,
    ctx: Context,
    principal: CurrentPrincipal,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ActivityPage:
    return await service.list_activities(ctx, principal, lead_id, cursor=cursor, limit=limit)


@router.post(
    "/leads/{lead_id}/activities",
    response_model=Activity,
    status_code=status.HTTP_201_CREATED,
    summary="Log a call, email or note (calls and emails re-score the lead)",
    responses=_errors(401, 403, 404, 422),
)
async def add_activity(
    lead_id: str, body: ActivityCreate, ctx: Context, principal: LeadWriter
) -> Activity:
    return await service.add_activity(ctx, principal, lead_id, body)


# --- ML operations ------------------------------------------------------------------------------

# On the service's one router (not an included sub-router), so the routes stay plain
# ``APIRoute``s that the gateway's route table and the telemetry templates read.
ML: list[str | Enum] = ["ml"]


@router.get(
    "/ml/models",
    response_model=list[ModelInfo],
    tags=ML,
    summary="Registered lead-scoring versions with their metrics (staff)",
    responses=_errors(401, 403),
)
async def list_models(ctx: Context, _staff: MlReader) -> list[ModelInfo]:
    return await scoring.list_models(ctx)


@router.get(
    "/ml/serving",
    response_model=ServingInfo,
    tags=ML,
    summary="The version serving here and in the registry, and stale leads (staff)",
    responses=_errors(401, 403),
)
async def serving(ctx: Context, _staff: MlReader) -> ServingInfo:
    return await scoring.serving_info(ctx)


@router.post(
    "/ml/promote",
    response_model=ModelInfo,
    tags=ML,
    summary="Serve a version if it beats the serving one on the hold-out, or by force (admin)",
    description="The new version serves at once in this process (other replicas within the "
    "reload interval) and the leads are re-scored in the background.",
    responses=_errors(401, 403, 404, 409, 422),
)
async def promote(body: PromoteRequest, ctx: Context, _admin: MlManager) -> ModelInfo:
    return await scoring.promote_model(ctx, body.version, force=body.force)


@router.get(
    "/ml/drift",
    response_model=DriftInfo,
    tags=ML,
    summary="PSI of recent leads against the serving model's training data (staff)",
    responses=_errors(401, 403, 409, 503),
)
async def drift(ctx: Context, _staff: MlReader) -> DriftInfo:
    return await scoring.drift_report(ctx)


@router.post(
    "/ml/train",
    response_model=TrainingRun,
    status_code=status.HTTP_202_ACCEPTED,
    tags=ML,
    summary="Start a training run: bundled data plus won/lost leads; promoted if better (admin)",
    responses=_errors(401, 403, 422),
)
async def train(body: TrainRequest, ctx: Context, admin: MlManager) -> TrainingRun:
    return await scoring.start_run(ctx, "train", body, requested_by=admin.subject)


@router.post(
    "/ml/evaluate",
    response_model=TrainingRun,
    status_code=status.HTTP_202_ACCEPTED,
    tags=ML,
    summary="Start an evaluation run: cross-validation and hold-out beside the baseline (admin)",
    responses=_errors(401, 403, 422),
)
async def evaluate(body: TrainRequest, ctx: Context, admin: MlManager) -> TrainingRun:
    return await scoring.start_run(ctx, "evaluate", body, requested_by=admin.subject)


@router.get(
    "/ml/runs",
    response_model=list[TrainingRun],
    tags=ML,
    summary="The latest training and evaluation runs (staff)",
    responses=_errors(401, 403),
)
async def list_runs(ctx: Context, _staff: MlReader) -> list[TrainingRun]:
    return await scoring.list_runs(ctx)


@router.get(
    "/ml/runs/{run_id}",
    response_model=TrainingRun,
    tags=ML,
    summary="A training or evaluation run and its result (staff)",
    responses=_errors(401, 403, 404),
)
async def get_run(run_id: str, ctx: Context, _staff: MlReader) -> TrainingRun:
    return await scoring.get_run(ctx, run_id)
