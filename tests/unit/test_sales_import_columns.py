"""How a lead CSV's header is read, and how every bad attribute of a lead is named at once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ecosistema.platform.errors import ProblemError
from ecosistema.sales import domain
from ecosistema.sales.schemas import LeadCreate
from ecosistema.sales.transfer import _columns


def test_header_names_ignore_case_and_surrounding_spaces() -> None:
    mapping = _columns(["Name", " EMAIL ", "Age", "attr.Segment", "Campaign", "ATTR.campaign"])
    assert mapping == {
        "Name": "name",
        " EMAIL ": "email",
        "Age": "attributes.age",
        "attr.Segment": "attributes.segment",
        "Campaign": "campaign",
        "ATTR.campaign": "attributes.campaign",
    }


def test_unknown_columns_list_each_known_column_once_and_say_where_campaign_goes() -> None:
    with pytest.raises(ProblemError) as caught:
        _columns(["name", "e-mail"])
    message = caught.value.extra["errors"][0]["message"]
    known = message.split("known (in any case): ", 1)[1].split(", and attr.<key>", 1)[0]
    names = known.split(", ")
    assert len(names) == len(set(names)) and "campaign" in names and "email" in names
    assert "'e-mail'" in message and "attr.campaign" in message


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (["name", "email", "EMAIL"], "'email'"),
        (["name", "age", "attr.age"], "'age' and 'attr.age'"),
        (["name", "Job", "attr.JOB"], "'Job' and 'attr.JOB'"),
    ],
)
def test_two_columns_for_one_thing_refuse_the_file_naming_both(
    header: list[str], named: str
) -> None:
    with pytest.raises(ProblemError) as caught:
        _columns(header)
    error = caught.value.extra["errors"][0]
    assert error["code"] == "duplicate_columns" and named in error["message"]


def test_bad_attributes_name_the_unknown_categories_beside_the_other_problems() -> None:
    with pytest.raises(domain.AttributeError_) as caught:
        domain.check_attributes({"age": "abc", "job": "nojob", "marital": "zz", "loan": "no"})
    assert [key for key, _ in caught.value.problems] == ["age"]
    assert [(key, "retired" in allowed) for key, _, allowed in caught.value.unknown] == [
        ("job", True),
        ("marital", False),
    ]


def test_a_lead_reports_every_bad_attribute_in_the_order_given() -> None:
    data = {
        "name": "Ana",
        "email": "ana@example.com",
        "attributes": {"marital": "zz", "age": "abc", "job": "nojob", "pdays": 5},
    }
    with pytest.raises(ValidationError) as caught:
        LeadCreate.model_validate(data)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [
        ("attributes", "marital"),
        ("attributes", "age"),
        ("attributes", "job"),
    ]
    assert [e["type"] for e in errors] == ["unknown_category", "attribute", "unknown_category"]


def test_categories_given_in_the_validation_context_are_the_ones_allowed() -> None:
    data = {"name": "Ana", "attributes": {"age": "abc", "job": "astronaut"}, "email": "a@b.co"}
    known = {**domain.CATEGORY_VALUES, "job": ["astronaut"]}
    with pytest.raises(ValidationError) as caught:
        LeadCreate.model_validate(data, context={"categories": known})
    assert [e["loc"] for e in caught.value.errors()] == [("attributes", "age")]
