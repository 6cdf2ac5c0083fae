"""Sales rules with no I/O: lead statuses and their transitions, custom attributes, and how a
lead becomes the row of model inputs the lead-scoring feature spec declares."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from ecosistema.platform.errors import Conflict


class LeadStatus(StrEnum):
    """Where a lead stands; ``won`` and ``lost`` are final and become training labels.

    ``duplicate`` is final too but no outcome: an open lead closed because another open lead
    has the same email (only an upgrade that finds such pairs sets it).
    """

    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    WON = "won"
    LOST = "lost"
    DUPLICATE = "duplicate"


TRANSITIONS: Final[Mapping[LeadStatus, frozenset[LeadStatus]]] = {
    LeadStatus.NEW: frozenset(
        {LeadStatus.CONTACTED, LeadStatus.QUALIFIED, LeadStatus.WON, LeadStatus.LOST}
    ),
    LeadStatus.CONTACTED: frozenset({LeadStatus.QUALIFIED, LeadStatus.WON, LeadStatus.LOST}),
    LeadStatus.QUALIFIED: frozenset({LeadStatus.CONTACTED, LeadStatus.WON, LeadStatus.LOST}),
    LeadStatus.WON: frozenset(),
    LeadStatus.LOST: frozenset(),
    LeadStatus.DUPLICATE: frozenset(),
}
# The closed statuses that say how a lead ended: the training labels and a lead's history.
OUTCOMES: Final = frozenset({LeadStatus.WON, LeadStatus.LOST})
CLOSED: Final = OUTCOMES | {LeadStatus.DUPLICATE}
# At most one open lead per email: the service checks it and a partial unique index enforces it.
OPEN: Final = frozenset(LeadStatus) - CLOSED


class ActivityKind(StrEnum):
    """What happened to a lead: logged by a user (call, email, note) or seen on the platform."""

    CALL = "call"
    EMAIL = "email"
    NOTE = "note"
    STATUS = "status"
    REGISTERED = "registered"
    CART_CREATED = "cart_created"
    ORDER_PLACED = "order_placed"
    ORDER_PAID = "order_paid"


USER_ACTIVITIES: Final = frozenset({ActivityKind.CALL, ActivityKind.EMAIL, ActivityKind.NOTE})
# Activities that count as a contact in this campaign (the model's "calls in this campaign").
CONTACTS: Final = frozenset({ActivityKind.CALL, ActivityKind.EMAIL})


class TransitionNotAllowed(Conflict):
    type, title = "lead-transition-not-allowed", "Status change not allowed"

    def __init__(self, current: LeadStatus, wanted: LeadStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: the lead is closed"
        super().__init__(
            f"A {current.value} lead cannot become {wanted.value} (allowed: {allowed}).",
            current=current.value,
            wanted=wanted.value,
        )


class LeadExists(Conflict):
    type, title = "lead-exists", "Lead already exists"

    def __init__(self, lead_id: str | None) -> None:
        """``lead_id`` only when the caller may read that lead; else the answer names none."""
        errors = [{"field": "email", "message": "an open lead has this email", "code": "exists"}]
        if lead_id is None:
            super().__init__(
                "An open lead you cannot see already has this email: ask its owner or a staff "
                "member to log a call or email on it instead of creating another.",
                errors=errors,
            )
            return
        super().__init__(
            "An open lead already has this email: log a call or email on it, or change it, "
            "instead of creating another.",
            lead_id=lead_id,
            errors=errors,
        )


def check_transition(current: LeadStatus, wanted: LeadStatus) -> bool:
    """True when the status changes, False when it stays; raises when the change is not allowed."""
    if current == wanted:
        return False
    if wanted not in TRANSITIONS[current]:
        raise TransitionNotAllowed(current, wanted)
    return True


def label_of(status: LeadStatus) -> int | None:
    """The training label a status gives: 1 won, 0 lost, None while open or a duplicate."""
    return 1 if status == LeadStatus.WON else 0 if status == LeadStatus.LOST else None


def normalise_email(email: str) -> str:
    """The canonical form the blind index is computed on: NFKC, trimmed, case-folded (identity's
    rule, so the same address matches across services)."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


# --- custom attributes ------------------------------------------------------------------------

ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_.]{0,49}$")
MAX_ATTRIBUTES: Final = 50
MAX_ATTRIBUTE_TEXT: Final = 500
MAX_ATTRIBUTES_BYTES: Final = 8192

# Attributes the lead-scoring model reads, with the bounds its feature spec declares. Any other
# key is kept and shown, but not scored (unless a retrained model's spec names it).
NUMERIC_ATTRIBUTES: Final[Mapping[str, tuple[float, float]]] = {
    "age": (16, 110),
    "pdays": (0, 999),
    "previous": (0, 100),
    "campaign": (1, 100),
    "emp.var.rate": (-10, 10),
    "cons.price.idx": (50, 150),
    "cons.conf.idx": (-100, 100),
    "euribor3m": (-5, 20),
    "nr.employed": (0, 20000),
}
CATEGORY_ATTRIBUTES: Final = frozenset(
    {"job", "marital", "education", "default", "housing", "loan", "poutcome"}
)
MACRO_INDICATORS: Final = (
    "emp.var.rate",
    "cons.price.idx",
    "cons.conf.idx",
    "euribor3m",
    "nr.employed",
)
AttributeValue = str | int | float | bool | None


# The categories of the bundled reference data; a serving model trained on other data brings
# its own (``known_categories`` in the service).
CATEGORY_VALUES: Final[Mapping[str, tuple[str, ...]]] = {
    "job": (
        *("admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired"),
        *("self-employed", "services", "student", "technician", "unemployed", "unknown"),
    ),
    "marital": ("divorced", "married", "single", "unknown"),
    "education": (
        *("basic.4y", "basic.6y", "basic.9y", "high.school", "illiterate"),
        *("professional.course", "university.degree", "unknown"),
    ),
    "default": ("no", "unknown", "yes"),
    "housing": ("no", "unknown", "yes"),
    "loan": ("no", "unknown", "yes"),
    "poutcome": ("failure", "nonexistent", "success"),
}


class AttributeError_(ValueError):
    """Custom attributes that cannot be stored; ``problems`` lists each as (key, message), and
    ``unknown`` the category values no model knows, as (key, message, allowed)."""

    def __init__(
        self,
        key: str,
        message: str,
        problems: list[tuple[str, str]] | None = None,
        unknown: list[tuple[str, str, list[str]]] | None = None,
    ):
        super().__init__(message)
        self.key = key
        self.message = message
        self.problems = problems if problems is not None else [(key, message)]
        self.unknown = unknown or []


def normalise_category(value: str) -> str:
    """The form category values are stored and matched in: trimmed, lower case."""
    return value.strip().lower()


def check_categories(
    attributes: Mapping[str, AttributeValue], known: Mapping[str, Sequence[str]]
) -> list[tuple[str, str, list[str]]]:
    """Category attributes whose value the model does not know: (key, message, allowed)."""
    problems: list[tuple[str, str, list[str]]] = []
    for key in sorted(CATEGORY_ATTRIBUTES):
        value = attributes.get(key)
        allowed = known.get(key)
        if not isinstance(value, str) or not allowed:
            continue
        if normalise_category(value) not in {normalise_category(a) for a in allowed}:
            shown = sorted(allowed)
            problems.append(
                (key, f"unknown {key} {value[:40]!r}; allowed: {', '.join(shown)}", shown)
            )
    return problems


def check_attributes(
    attributes: Mapping[str, Any], known: Mapping[str, Sequence[str]] | None = None
) -> dict[str, AttributeValue]:
    """Bounded, typed custom attributes; raises ``AttributeError_`` listing every bad one.

    Category values are normalised (``"Retired"`` is stored as ``"retired"``); whether the model
    knows them is checked by the service, which knows the serving model. When other attributes
    are bad, the unknown categories are listed too (against ``known``, else the reference
    data's values), so that one answer names every bad attribute.
    """
    if len(attributes) > MAX_ATTRIBUTES:
        raise AttributeError_("", f"at most {MAX_ATTRIBUTES} attributes")
    out: dict[str, AttributeValue] = {}
    problems: list[tuple[str, str]] = []
    size = 2
    for key, value in attributes.items():
        problem = _attribute_problem(key, value)
        if problem is not None:
            problems.append(problem)
            continue
        if key in NUMERIC_ATTRIBUTES and value is not None:
            number = _number(value)
            assert number is not None
            value = int(number) if number.is_integer() else number
        if key in CATEGORY_ATTRIBUTES and isinstance(value, str):
            value = normalise_category(value)
        size += len(key) + len(str(value)) + 6
        out[key] = value
    if problems:
        unknown = check_categories(out, CATEGORY_VALUES if known is None else known)
        raise AttributeError_(problems[0][0], problems[0][1], problems, unknown)
    if size > MAX_ATTRIBUTES_BYTES:
        raise AttributeError_("", f"attributes take at most {MAX_ATTRIBUTES_BYTES} bytes")
    return out


def _attribute_problem(key: Any, value: Any) -> tuple[str, str] | None:
    if not isinstance(key, str) or not ATTRIBUTE_KEY.match(key):
        return str(key)[:50], "keys are 1-50 characters: a-z first, then a-z 0-9 _ ."
    if value is not None and not isinstance(value, str | int | float | bool):
        return key, "values are text, numbers, true/false or null"
    if isinstance(value, float) and not math.isfinite(value):
        return key, "numbers must be finite"
    if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_TEXT:
        return key, f"text values are at most {MAX_ATTRIBUTE_TEXT} characters"
    if key in NUMERIC_ATTRIBUTES and value is not None:
        low, high = NUMERIC_ATTRIBUTES[key]
        number = _number(value)
        if number is None:
            return key, f"{key} must be a number"
        if not low <= number <= high:
            return key, f"{key} must be between {low:g} and {high:g}"
    if key in CATEGORY_ATTRIBUTES and value is not None and not isinstance(value, str):
        return key, f"{key} must be text"
    return None


def _number(value: AttributeValue) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# --- lead -> model inputs ---------------------------------------------------------------------

MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Channel words people use, mapped to the spec's two contact values.
CHANNELS: Final[Mapping[str, str]] = {
    "mobile": "cellular",
    "cellular": "cellular",
    "cell": "cellular",
    "whatsapp": "cellular",
    "sms": "cellular",
    "landline": "telephone",
    "telephone": "telephone",
    "phone": "telephone",
}
NEVER_CONTACTED: Final = 999


@dataclass(frozen=True)
class History:
    """Earlier leads with the same email: how many, how the latest ended, and when."""

    previous: int = 0
    last_outcome: LeadStatus | None = None
    last_contact_at: datetime | None = None


@dataclass(frozen=True)
class LeadFacts:
    """What the model may read about a lead (never its name, email or phone)."""

    created_at: datetime
    channel: str | None
    source: str | None
    campaign: str | None
    message: str | None
    attributes: Mapping[str, AttributeValue]
    contacts: int = 0
    history: History = History()


def feature_row(facts: LeadFacts) -> dict[str, AttributeValue]:
    """The lead as a row of the lead-scoring spec's columns (docs/sales.md has the table).

    Derived values come first; a custom attribute of the same name overrides them. The economic
    context (``euribor3m``, ...) is not a property of the lead: the model fills it in when it
    scores (``ECOSISTEMA_SALES_MACRO_INDICATORS``). Keys the spec does not declare are ignored by
    the model, so a retrained spec may read any custom attribute.
    """
    created = facts.created_at
    history = facts.history
    if history.last_outcome == LeadStatus.WON:
        poutcome = "success"
    elif history.last_outcome == LeadStatus.LOST:
        poutcome = "failure"
    else:
        poutcome = "nonexistent"
    pdays: int = NEVER_CONTACTED
    if history.previous and history.last_contact_at is not None:
        pdays = max(0, min(998, (created - history.last_contact_at).days))
    row: dict[str, AttributeValue] = {
        "contact": CHANNELS.get((facts.channel or "").strip().lower()),
        "month": MONTHS[created.month - 1],
        "day_of_week": WEEKDAYS[created.weekday()],
        "campaign": min(100, 1 + facts.contacts),
        "pdays": pdays,
        "previous": min(100, history.previous),
        "poutcome": poutcome,
        "source": facts.source,
        "campaign_name": facts.campaign,
        "message": facts.message,
    }
    for key, value in facts.attributes.items():
        if value is not None:
            row[key] = value
    return row
