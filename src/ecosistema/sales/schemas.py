"""The sales service's public contract: leads, their activities, imports, and ML operations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ecosistema.sales import domain
from ecosistema.sales.domain import ActivityKind, LeadStatus

PersonName = Annotated[str, Field(min_length=1, max_length=200)]
Phone = Annotated[
    str, Field(min_length=5, max_length=32, pattern=r"^\+?[0-9][0-9 ().\-]{3,30}[0-9]$")
]
Company = Annotated[str, Field(min_length=1, max_length=200)]
Label = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9][\w .:/@+\-]*$")]
CampaignName = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w .:/@+\-]*$")
]
Message = Annotated[str, Field(max_length=5000)]
UserId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")]
Attributes = dict[str, str | int | float | bool | None]
LeadSort = Literal["score_desc", "score_asc", "created_desc", "created_asc"]
ActivityInputKind = Literal["call", "email", "note"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _checked_attributes(value: Attributes | None, info: ValidationInfo) -> Attributes | None:
    """Attributes as ``domain.check_attributes`` keeps them. The validation context may hold the
    serving model's ``categories`` (the import has them), used when other attributes are bad."""
    if value is None:
        return None
    context = info.context if isinstance(info.context, dict) else {}
    try:
        return domain.check_attributes(value, context.get("categories"))
    except domain.AttributeError_ as exc:
        # Raised as a ValidationError so each problem names its own key (``attributes.age``).
        details = [
            InitErrorDetails(
                type=PydanticCustomError("attribute", "{message}", {"message": message}),
                loc=(key,) if key else (),
                input=value.get(key) if key else value,
            )
            for key, message in exc.problems
        ]
        details += [
            InitErrorDetails(
                type=PydanticCustomError(
                    "unknown_category", "{message}", {"message": message, "allowed": allowed}
                ),
                loc=(key,),
                input=value.get(key),
            )
            for key, message, allowed in exc.unknown
        ]
        # In the order the attributes were given (a bad key's problem first: it has no place).
        order = {key: position for position, key in enumerate(value)}
        details.sort(key=lambda d: order.get(str(d["loc"][0]) if d["loc"] else "", -1))
        raise ValidationError.from_exception_data("attributes", details) from exc


class LeadCreate(_Input):
    """A new lead. At least an email or a phone number, so someone can reach them."""

    name: PersonName
    email: EmailStr | None = None
    phone: Phone | None = None
    company: Company | None = None
    source: Label | None = Field(None, description="Where the lead came from: web, event, ...")
    channel: Label | None = Field(
        None, description="How to reach them: mobile, landline, email, ... (a model input)"
    )
    campaign: CampaignName | None = None
    message: Message | None = Field(None, description="What the lead wrote, in their words.")
    attributes: Attributes = Field(
        default_factory=dict,
        description="Custom attributes (at most 50 keys, 8 kB); the model reads the ones "
        "docs/sales.md lists, e.g. age, job, education.",
    )
    owner_id: UserId | None = Field(
        None, description="The sales user who owns it; default: whoever creates it."
    )

    _attributes = field_validator("attributes")(_checked_attributes)

    @model_validator(mode="after")
    def _reachable(self) -> LeadCreate:
        if self.email is None and self.phone is None:
            raise ValueError("give an email or a phone number")
        return self


class LeadUpdate(_Input):
    """Changes to a lead; absent fields stay, ``null`` clears an optional field."""

    name: PersonName | None = None
    email: EmailStr | None = None
    phone: Phone | None = None
    company: Company | None = None
    source: Label | None = None
    channel: Label | None = None
    campaign: CampaignName | None = None
    message: Message | None = None
    attributes: Attributes | None = Field(
        None, description="Replaces the custom attributes as a whole."
    )
    owner_id: UserId | None = None
    status: LeadStatus | None = None

    _attributes = field_validator("attributes")(_checked_attributes)


class Factor(BaseModel):
    """One reason behind a score, in a salesperson's words."""

    feature: str
    value: str | None
    contribution: float = Field(description="Push on the log-odds; positive raises the score.")
    phrase: str = Field(description='e.g. "contacted successfully in a previous campaign: +++"')


class Lead(BaseModel):
    """A lead with its contact data (decrypted for the caller) and its current score."""

    id: str
    name: str
    email: str | None
    phone: str | None
    company: str | None
    source: str | None
    channel: str | None
    campaign: str | None
    message: str | None
    attributes: dict[str, Any]
    owner_id: str | None
    status: LeadStatus
    score: int | None = Field(description="0-100: the lead's percentile among training leads.")
    probability: float | None = Field(description="Calibrated probability of converting.")
    model_version: str | None
    factors: list[Factor]
    scored_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class LeadPage(BaseModel):
    """One page of leads; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[Lead]
    next_cursor: str | None


class ActivityCreate(_Input):
    """A call, email or note logged by a user."""

    kind: ActivityInputKind
    body: Annotated[str, Field(min_length=1, max_length=5000)]
    occurred_at: datetime | None = Field(None, description="Default: now.")

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a timezone (e.g. 2026-12-01T10:00:00Z)")
        if value is not None and not 2000 <= value.year <= 2100:
            raise ValueError("the year must be between 2000 and 2100")
        return value


class Activity(BaseModel):
    """An entry of a lead's timeline."""

    id: str
    lead_id: str
    kind: ActivityKind
    body: str | None
    details: dict[str, Any]
    actor_id: str | None
    occurred_at: datetime


class ActivityPage(BaseModel):
    """A lead's timeline, newest first; pass ``next_cursor`` back as ``cursor``."""

    items: list[Activity]
    next_cursor: str | None


class ImportRowError(BaseModel):
    """One problem of the row at ``line`` (1-based, header is line 1); a row may have several.

    The same shape lists refused rows in a ``skip-invalid`` report and in the 422 of an
    ``all-or-nothing`` import, and skipped duplicates (``code`` ``lead-exists``).
    """

    line: int
    field: str = Field(description="e.g. email, attributes.job; body for the whole row")
    code: str
    message: str
    lead_id: str | None = Field(
        None, description="For a duplicate: the lead that exists, if the caller may read it."
    )
    allowed: list[str] | None = Field(None, description="For a category: the values known.")


class LeadImportReport(BaseModel):
    """The exact outcome of an import: nothing is written unless every row is valid."""

    applied: bool
    rows_read: int
    created: int
    scored: int
    model_version: str | None
    errors: list[ImportRowError] = Field(description="Every problem of every refused row.")
    duplicates: list[ImportRowError] = Field(
        default_factory=list,
        description="Rows skipped because an open lead (or an earlier row) has their email.",
    )
    lead_ids: list[str] = Field(description="The created leads, in file order.")


# --- ML operations ------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    """A registered model version and its headline figures."""

    version: str
    serving: bool
    created_at: datetime
    trained_at: datetime
    rows: int
    positives: int
    training_seconds: float
    data_hash: str
    headline_roc_auc: float | None = Field(
        description="Hold-out ROC-AUC (cross-validated when there is no time order)."
    )
    metrics: dict[str, Any]


class ServingInfo(BaseModel):
    """What serves now, in this process and in the registry."""

    version: str | None = Field(description="The version this process scores with.")
    registry_version: str | None = Field(description="The version the registry says serves.")
    registry_url: str
    leads_scored: int
    leads_stale: int = Field(description="Leads scored by another version, waiting for re-scoring.")
    feedback_rows: int = Field(description="Closed leads (won/lost) available as labels.")
    live_metrics: dict[str, Any] = Field(
        description="How the serving version does on the outcomes seen by this process since "
        "it started serving: rows, positives, and ROC-AUC, PR-AUC, Brier once both outcomes "
        "were seen."
    )


class TrainRequest(_Input):
    """A training or evaluation run on the bundled data plus the leads' outcomes."""

    reference_rows: Annotated[int, Field(ge=500, le=1_000_000)] | None = Field(
        None, description="Sample this many rows of the bundled data (stratified); all by default."
    )
    include_reference: bool = Field(True, description="Train on the bundled data as well.")
    include_feedback: bool = Field(True, description="Add the won/lost leads as labels.")
    folds: Annotated[int, Field(ge=0, le=10)] = Field(
        0, description="Cross-validation folds (0: time-ordered hold-out only)."
    )
    promote: bool = Field(True, description="Promote if it beats the serving model.")
    force: bool = Field(False, description="Promote even if it does not.")

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("use 0 (hold-out only) or at least 2 folds")
        return value


class PromoteRequest(_Input):
    """Make a registered version serve."""

    version: Annotated[str, Field(pattern=r"^v[0-9]{1,6}$")]
    force: bool = False


RunStatus = Literal["queued", "running", "succeeded", "failed"]


class TrainingRun(BaseModel):
    """An asynchronous training or evaluation run; poll it until ``status`` is final."""

    id: str
    kind: Literal["train", "evaluate"]
    status: RunStatus
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DriftInfo(BaseModel):
    """PSI of recent leads' model inputs and scores against the serving model's training data."""

    model_version: str
    rows: int
    threshold: float
    min_rows: int = Field(description="Leads needed before drift can alert.")
    status: Literal["drift", "stable", "not_enough_data"]
    alert: bool
    score: float
    features: dict[str, float]
    drifted: list[str]
