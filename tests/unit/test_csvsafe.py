"""CSV cells escaped against spreadsheet formulas, and the escape undone exactly on import."""

from __future__ import annotations

import csv
import io

import pytest

from ecosistema.platform.csvsafe import (
    escape_cell,
    escape_row,
    unescape_cell,
    unreadable_row_reason,
)


@pytest.mark.parametrize(
    "value",
    ['=HYPERLINK("http://evil")', "+34 600", "-5 stars", "-1+A1", "@SUM(A1)", "\tx", "=", "-"],
)
def test_a_cell_a_spreadsheet_would_run_is_quoted(value: str) -> None:
    assert escape_cell(value) == "'" + value


@pytest.mark.parametrize(
    "value", ["", "Tee", "'plain", "it's", "5-7", "a=b", "'", "''", "-5", "+3.5", "-1990"]
)
def test_a_harmless_cell_is_left_alone(value: str) -> None:
    assert escape_cell(value) == value


@pytest.mark.parametrize(
    "value",
    ["=x", "'=x", "''=x", "'plain", "'", "", "-", "'-", "normal", "@", "'\t", "''", "'-5", "-5"],
)
def test_escape_then_unescape_is_exact(value: str) -> None:
    assert unescape_cell(escape_cell(value)) == value


def test_an_escaped_row_survives_the_csv_writer_and_reader() -> None:
    row = ['=HYPERLINK("http://evil")', "Tee, blue", None, 1990]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(escape_row(row))
    [read] = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert read[0].startswith("'=")
    assert [unescape_cell(c) for c in read] == [
        '=HYPERLINK("http://evil")',
        "Tee, blue",
        "",
        "1990",
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('a,b\n1,"never closed\n', 'a quoted cell is never closed (its closing " is missing)'),
        ('a,b\n1,"' + "x" * 200_000 + "\n", "a cell is longer than 131072 characters"),
        ('a,b\n1,"2"x\n', 'text follows a closing " in a cell'),
    ],
)
def test_a_strict_reader_s_error_is_told_in_an_editor_s_words(text: str, words: str) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader)
    with pytest.raises(csv.Error) as raised:
        next(reader)

    assert words in unreadable_row_reason(raised.value)
