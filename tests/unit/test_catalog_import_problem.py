"""The ``import-rejected`` problem of an all-or-nothing import: the uniform ``errors`` every
problem carries (one entry per problem, with ``field``, ``message`` and ``code``), each with
its row's ``line`` and the members the row's entry has always had."""

from __future__ import annotations

from ecosistema.catalog.schemas import ImportReport, RowError, RowProblem
from ecosistema.catalog.transfer import ImportRejected


def _report(*errors: RowError) -> ImportReport:
    return ImportReport(
        mode="all-or-nothing",
        format="csv",
        applied=False,
        rows_read=3,
        products_created=0,
        products_updated=0,
        variants_written=0,
        rows_skipped=len(errors),
        errors=list(errors),
    )


def test_every_problem_of_every_refused_row_is_an_entry_naming_its_field() -> None:
    cup = RowError(
        line=4,
        reason="name: must not be blank; price_EUR: expected a whole number",
        sku="MUG-1",
        slug="cup",
        problems=[
            RowProblem(field="name", reason="must not be blank"),
            RowProblem(field="price_EUR", reason="expected a whole number"),
        ],
    )
    unreadable = RowError(
        line=7,
        reason="not JSON",
        problems=[RowProblem(field=None, reason="not JSON")],
    )

    problem = ImportRejected(_report(cup, unreadable))

    assert (problem.status, problem.type) == (422, "import-rejected")
    errors = problem.extra["errors"]
    assert [(e["line"], e["field"], e["message"], e["code"]) for e in errors] == [
        (4, "name", "must not be blank", "invalid"),
        (4, "price_EUR", "expected a whole number", "invalid"),
        (7, "body", "not JSON", "row"),
    ]
    # The row's own members, as before: whoever read them still finds them.
    for entry in errors[:2]:
        assert {k: entry[k] for k in ("reason", "sku", "slug")} == {
            "reason": cup.reason,
            "sku": "MUG-1",
            "slug": "cup",
        }
        assert entry["problems"] == [p.model_dump() for p in cup.problems]
    assert errors[2]["problems"] == [{"field": None, "reason": "not JSON"}]
    assert problem.extra["report"]["rows_skipped"] == 2
    assert "errors" not in problem.extra["report"]


def test_a_row_listed_without_problems_is_one_entry_for_the_whole_row() -> None:
    bare = RowError(line=2, reason="the product's first row (line 1) was refused")

    errors = ImportRejected(_report(bare)).extra["errors"]

    assert [(e["line"], e["field"], e["message"]) for e in errors] == [
        (2, "body", "the product's first row (line 1) was refused")
    ]
