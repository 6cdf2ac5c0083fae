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

import io
import re
from collections.abc import Iterable
from typing import IO, Final

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


# What the decoder of ``csv_text`` makes of bytes that are not UTF-8.
_NOT_UTF8: Final = re.compile("[\udc80-\udcff]")
NOT_UTF8_REASON: Final = "not UTF-8 text: save the file as UTF-8"


def csv_text(stream: IO[bytes]) -> io.TextIOWrapper:
    """An uploaded CSV as text for the csv module. Bytes that are not UTF-8 come through as
    lone surrogates (``is_not_utf8``), for the row holding them to be refused alone: a decoding
    error would cost the rest of the wrapper's chunk, its rows and the line count with it.
    ``detach()`` it when done, to leave the stream open."""
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


def is_not_utf8(text: str) -> bool:
    """Whether a cell read through ``csv_text`` held bytes that are not UTF-8."""
    return _NOT_UTF8.search(text) is not None


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
