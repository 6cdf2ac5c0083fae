"""Sales rules without I/O: status transitions, custom attributes, and how a lead becomes the
lead-scoring model's input row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ecosistema.ml import lead_scoring_spec
from ecosistema.sales import domain
from ecosistema.sales.domain import History, LeadFacts, LeadStatus, TransitionNotAllowed

MONDAY_IN_MAY = datetime(2026, 5, 4, 10, 30, tzinfo=UTC)


def facts(**overrides: object) -> LeadFacts:
    values: dict[str, object] = {
        "created_at": MONDAY_IN_MAY,
        "channel": "mobile",
        "source": "web",
        "campaign": "spring",
        "message": "call me",
        "attributes": {},
    }
    values.update(overrides)
    return LeadFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (LeadStatus.NEW, LeadStatus.CONTACTED),
        (LeadStatus.NEW, LeadStatus.WON),
        (LeadStatus.CONTACTED, LeadStatus.QUALIFIED),
        (LeadStatus.QUALIFIED, LeadStatus.CONTACTED),
        (LeadStatus.QUALIFIED, LeadStatus.LOST),
    ],
)
def test_open_leads_move_forward_or_close(current: LeadStatus, wanted: LeadStatus) -> None:
    assert domain.check_transition(current, wanted) is True


@pytest.mark.parametrize("closed", [LeadStatus.WON, LeadStatus.LOST, LeadStatus.DUPLICATE])
@pytest.mark.parametrize("wanted", [LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.WON])
def test_closed_leads_never_change_status(closed: LeadStatus, wanted: LeadStatus) -> None:
    if wanted == closed:
        assert domain.check_transition(closed, wanted) is False
        return
    with pytest.raises(TransitionNotAllowed) as caught:
        domain.check_transition(closed, wanted)
    assert caught.value.status == 409 and "closed" in caught.value.detail


@pytest.mark.parametrize("current", [LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.QUALIFIED])
def test_only_an_upgrade_closes_a_lead_as_a_duplicate(current: LeadStatus) -> None:
    with pytest.raises(TransitionNotAllowed):
        domain.check_transition(current, LeadStatus.DUPLICATE)


def test_a_duplicate_is_closed_but_no_outcome_to_learn_from() -> None:
    assert {LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.QUALIFIED} == domain.OPEN
    assert LeadStatus.DUPLICATE in domain.CLOSED and LeadStatus.DUPLICATE not in domain.OUTCOMES
    assert domain.label_of(LeadStatus.DUPLICATE) is None
    assert domain.label_of(LeadStatus.WON) == 1 and domain.label_of(LeadStatus.LOST) == 0


def test_lead_exists_names_the_lead_only_when_given_one() -> None:
    named = domain.LeadExists("l1")
    hidden = domain.LeadExists(None)
    assert named.status == hidden.status == 409 and named.type == hidden.type
    assert named.extra["lead_id"] == "l1" and "lead_id" not in hidden.extra
    assert hidden.extra["errors"][0]["field"] == "email"


@pytest.mark.parametrize("current", [LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.QUALIFIED])
@pytest.mark.parametrize("outcome", [LeadStatus.WON, LeadStatus.LOST])
def test_a_rep_can_close_a_lead_from_any_open_stage(
    current: LeadStatus, outcome: LeadStatus
) -> None:
    assert domain.check_transition(current, outcome) is True


def test_contacted_lead_cannot_go_back_to_new() -> None:
    with pytest.raises(TransitionNotAllowed):
        domain.check_transition(LeadStatus.CONTACTED, LeadStatus.NEW)


def test_only_closed_statuses_are_labels() -> None:
    assert domain.label_of(LeadStatus.WON) == 1 and domain.label_of(LeadStatus.LOST) == 0
    assert domain.label_of(LeadStatus.QUALIFIED) is None


def test_model_attributes_are_typed_and_bounded() -> None:
    assert domain.check_attributes({"age": "41", "job": "admin.", "note": "vip"}) == {
        "age": 41,
        "job": "admin.",
        "note": "vip",
    }
    for bad, words in (
        ({"age": "old"}, "must be a number"),
        ({"age": 12}, "between 16 and 110"),
        ({"age": True}, "must be a number"),
        ({"job": 3}, "must be text"),
        ({"Job": "x"}, "keys are"),
        ({"note": "x" * 501}, "at most 500"),
        ({"ratio": float("inf")}, "finite"),
        ({f"k{i}": i for i in range(51)}, "at most 50"),
    ):
        with pytest.raises(domain.AttributeError_) as caught:
            domain.check_attributes(bad)
        assert words in caught.value.message


def test_feature_row_fills_the_lead_facts_and_leaves_the_economic_context_to_the_model() -> None:
    row = domain.feature_row(facts(attributes={"age": 41, "job": "admin.", "marital": "single"}))
    assert row["month"] == "may" and row["day_of_week"] == "mon"
    assert row["contact"] == "cellular" and row["campaign"] == 1
    assert row["pdays"] == 999 and row["previous"] == 0 and row["poutcome"] == "nonexistent"
    assert row["age"] == 41
    derived = {"contact", "month", "day_of_week", "campaign", "pdays", "previous", "poutcome"}
    given = {"age", "job", "marital"}
    spec = lead_scoring_spec()
    context = {f.name for f in spec.features if getattr(f, "context", False)}
    assert context == {
        "emp.var.rate",
        "cons.price.idx",
        "cons.conf.idx",
        "euribor3m",
        "nr.employed",
    }
    assert not context & set(row)
    unknown = set(spec.feature_names) - derived - given - context
    assert unknown == {"education", "default", "housing", "loan"}


def test_contacts_and_earlier_outcomes_shape_the_campaign_features() -> None:
    earlier = History(previous=2, last_outcome=LeadStatus.WON, last_contact_at=MONDAY_IN_MAY)
    row = domain.feature_row(
        facts(
            created_at=MONDAY_IN_MAY + timedelta(days=12),
            contacts=3,
            channel="Landline",
            history=earlier,
        )
    )
    assert row["campaign"] == 4 and row["contact"] == "telephone"
    assert row["previous"] == 2 and row["poutcome"] == "success" and row["pdays"] == 12
    lost = domain.feature_row(
        facts(history=History(1, LeadStatus.LOST, MONDAY_IN_MAY - timedelta(days=3)))
    )
    assert lost["poutcome"] == "failure" and lost["pdays"] == 3


def test_attributes_override_derived_values_and_unknown_channels_stay_unknown() -> None:
    row = domain.feature_row(
        facts(channel="carrier pigeon", attributes={"poutcome": "failure", "pdays": 5}),
    )
    assert row["contact"] is None
    assert row["poutcome"] == "failure" and row["pdays"] == 5
    own = domain.feature_row(facts(attributes={"euribor3m": 4.5}))
    assert own["euribor3m"] == 4.5


def test_weekend_leads_get_a_weekday_the_model_has_not_seen() -> None:
    saturday = domain.feature_row(facts(created_at=datetime(2026, 5, 9, tzinfo=UTC)))
    assert saturday["day_of_week"] == "sat"


def test_emails_normalise_like_identity() -> None:
    assert domain.normalise_email("  Ana.García@Example.COM ") == "ana.garcía@example.com"


def test_category_attributes_are_stored_in_lower_case() -> None:
    assert domain.check_attributes({"job": " Retired ", "segment": "VIP"}) == {
        "job": "retired",
        "segment": "VIP",
    }


def test_every_bad_attribute_is_named_not_only_the_first() -> None:
    with pytest.raises(domain.AttributeError_) as caught:
        domain.check_attributes({"age": "forty", "pdays": -3, "job": 7})
    assert [key for key, _ in caught.value.problems] == ["age", "pdays", "job"]


def test_an_unknown_category_lists_the_allowed_values() -> None:
    [(key, message, allowed)] = domain.check_categories(
        {"job": "astronaut", "marital": "MARRIED"}, domain.CATEGORY_VALUES
    )
    assert key == "job" and "astronaut" in message and "retired" in allowed
