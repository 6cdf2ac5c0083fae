"""CSV cells that a spreadsheet will not run as formulas (OWASP "CSV injection").

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula
by Excel, LibreOffice and Google Sheets (``=HYPERLINK("http://evil")``); a plain signed
number such as ``-12`` is left as it is. Exports prefix such a
cell with a single quote, which spreadsheets show as text; imports take the prefix off again, so
an export imported back is exactly what was exported. The rule is a bijection: a cell that
already starts with quotes before a formula character gets one more quote, so a value that
really begins with ``'=`` also survives the round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ecosistema.platform.errors import field_error

# The csv module's words for a quote never closed; strict readers raise it at the end of the file.
_OPEN_QUOTE: Final = "unexpected end of data"

FORMULA_STARTS: Final = frozenset("=+-@\t\r")
QUOTE: Final = "'"
# A plain signed number (-12, +3.5) runs nothing and must stay a number in the spreadsheet.
_NUMBER: Final = re.compile(r"[+-]?\d+(\.\d+)?")


def needs_escape(value: str) -> bool:
    """Whether a spreadsheet could run the cell, or an import would strip a quote from it."""
    rest = value.lstrip(QUOTE)
    return rest[:1] in FORMULA_STARTS and _NUMBER.fullmatch(rest) is None


def escape_cell(value: str) -> str:
    """The cell as written to a CSV export."""
    return QUOTE + value if needs_escape(value) else value


def unescape_cell(value: str) -> str:
    """The cell as an export meant it: ``escape_cell`` undone."""
    if value.startswith(QUOTE) and needs_escape(value[1:]):
        return value[1:]
    return value


def escape_row(values: Iterable[object]) -> list[str]:
    """A row of cells for ``csv.writer``, each escaped (``None`` becomes an empty cell)."""
    return [escape_cell("" if v is None else str(v)) for v in values]


def refuse_repeated_columns(names: Iterable[str]) -> None:
    """A 422 naming the columns a CSV header gives more than once (which one would win is a
    guess, so neither is taken)."""
    seen = list(names)
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise field_error(
            "body",
            f"column {', '.join(repr(n[:40]) for n in twice)} appears more than once in the header",
            code="duplicate_columns",
        )


def unreadable_row_reason(exc: Exception) -> str:
    """Why a strict ``csv`` reader could not read a row, in the words of someone editing the
    file."""
    message = str(exc)
    if message == _OPEN_QUOTE:
        return 'a quoted cell is never closed (its closing " is missing)'
    if message.endswith("expected after '\"'"):
        return (
            'text follows a closing " in a cell: quote the whole cell, and double the quotes '
            'inside it ("")'
        )
    if message.startswith("field larger than field limit"):
        limit = message.rpartition("(")[2].rstrip(")")
        return (
            f"a cell is longer than {limit} characters "
            '(a quoted cell whose closing " is missing runs on into the rows after it)'
        )
    return message
