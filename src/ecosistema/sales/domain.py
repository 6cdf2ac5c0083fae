"""Sales rules with no I/O: lead statuses and their transitions, custom attributes, and how a
lead becomes the row of model inputs the lead-scoring feature spec declares."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from ecosistema.platform.errors import Conflict


class LeadStatus(StrEnum):
    """Where a lead stands; ``won`` and ``lost`` are final and become training labels."""

    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    WON = "won"
    LOST = "lost"


TRANSITIONS: Final[Mapping[LeadStatus, frozenset[LeadStatus]]] = {
    LeadStatus.NEW: frozenset(
        {LeadStatus.CONTACTED, LeadStatus.QUALIFIED, LeadStatus.WON, LeadStatus.LOST}
    ),
    LeadStatus.CONTACTED: frozenset({LeadStatus.QUALIFIED, LeadStatus.WON, LeadStatus.LOST}),
    LeadStatus.QUALIFIED: frozenset({LeadStatus.CONTACTED, LeadStatus.WON, LeadStatus.LOST}),
    LeadStatus.WON: frozenset(),
    LeadStatus.LOST: frozenset(),
}
CLOSED: Final = frozenset({LeadStatus.WON, LeadStatus.LOST})


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


def check_transition(current: LeadStatus, wanted: LeadStatus) -> bool:
    """True when the status changes, False when it stays; raises when the change is not allowed."""
    if current == wanted:
        return False
    if wanted not in TRANSITIONS[current]:
        raise TransitionNotAllowed(current, wanted)
    return True


def label_of(status: LeadStatus) -> int | None:
    """The training label a status gives: 1 won, 0 lost, None while the lead is open."""
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


class AttributeError_(ValueError):
    """A custom attribute that cannot be stored; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def check_attributes(attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Bounded, typed custom attributes; raises ``AttributeError_`` naming the first bad one."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise AttributeError_("", f"at most {MAX_ATTRIBUTES} attributes")
    out: dict[str, AttributeValue] = {}
    size = 2
    for key, value in attributes.items():
        if not isinstance(key, str) or not ATTRIBUTE_KEY.match(key):
            raise AttributeError_(
                str(key)[:50], "keys are 1-50 characters: a-z first, then a-z 0-9 _ ."
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise AttributeError_(key, "values are text, numbers, true/false or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise AttributeError_(key, "numbers must be finite")
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_TEXT:
            raise AttributeError_(key, f"text values are at most {MAX_ATTRIBUTE_TEXT} characters")
        if key in NUMERIC_ATTRIBUTES and value is not None:
            low, high = NUMERIC_ATTRIBUTES[key]
            number = _number(value)
            if number is None:
                raise AttributeError_(key, f"{key} must be a number")
            if not low <= number <= high:
                raise AttributeError_(key, f"{key} must be between {low:g} and {high:g}")
            value = int(number) if number.is_integer() else number
        if key in CATEGORY_ATTRIBUTES and value is not None and not isinstance(value, str):
            raise AttributeError_(key, f"{key} must be text")
        size += len(key) + len(str(value)) + 6
        out[key] = value
    if size > MAX_ATTRIBUTES_BYTES:
        raise AttributeError_("", f"attributes take at most {MAX_ATTRIBUTES_BYTES} bytes")
    return out


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
