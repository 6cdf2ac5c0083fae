"""Rules for text people see: names, address lines, labels, notes."""

from __future__ import annotations

import re
import unicodedata

# Joiners are part of how some scripts are written (Persian, the Indic scripts); every other
# format character can reorder or hide text (bidi overrides, invisible separators).
_ALLOWED_FORMAT_CHARACTERS = frozenset({"\u200c", "\u200d"})
# Control characters, and the line and paragraph separators that break a printed line.
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


# In ASCII only the C0 controls and DEL are any of those (no separator or format character).
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds control, line-breaking or invisible format characters (NUL, a
    bidi override, U+2028…)."""
    if text.isascii():
        return _ASCII_CONTROL.search(text) is not None
    for c in text:
        category = unicodedata.category(c)
        if category in _REFUSED_CATEGORIES or (
            category == "Cf" and c not in _ALLOWED_FORMAT_CHARACTERS
        ):
            return True
    return False


def check_display_text(text: str, *, blank_allowed: bool = False) -> str:
    """Text shown to people: no control characters; blank only if allowed. ValueError else."""
    if has_control_characters(text):
        raise ValueError("must not contain control or invisible formatting characters")
    if not blank_allowed and not text.strip():
        raise ValueError("must not be blank")
    return text


# A note (a staff note, a reason) is read in a history and may run over several lines.
_NOTE_LAYOUT = str.maketrans("\n\r\t", "   ")


def check_note_text(text: str, *, blank_allowed: bool = False) -> str:
    """A note, a reason or a description: nothing that garbles or hides text (control
    characters, bidi overrides) beyond its line breaks and tabs; blank only if allowed. Kept as
    written. ValueError else."""
    check_display_text(text.translate(_NOTE_LAYOUT), blank_allowed=blank_allowed)
    return text


def check_optional_note_text(text: str | None) -> str | None:
    """:func:`check_note_text` for a note that may be left out (``None``)."""
    return None if text is None else check_note_text(text)
