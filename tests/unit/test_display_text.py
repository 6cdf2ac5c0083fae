"""The rule for text people see: every control, line-breaking or invisible format character is
found, in ASCII text (told by a quicker path) as in any other."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from ecosistema.platform.text import has_control_characters

ALLOWED_FORMAT = {"\u200c", "\u200d"}


def _by_category(text: str) -> bool:
    for c in text:
        category = unicodedata.category(c)
        if category in ("Cc", "Zl", "Zp") or (category == "Cf" and c not in ALLOWED_FORMAT):
            return True
    return False


@settings(max_examples=3_000)
@given(st.text(max_size=40))
def test_control_characters_are_found_in_any_text(text: str) -> None:
    assert has_control_characters(text) == _by_category(text)


@settings(max_examples=3_000)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_control_characters_are_found_in_ascii_text(text: str) -> None:
    assert has_control_characters(text) == _by_category(text)


def test_joiners_stay_and_ascii_controls_do_not() -> None:
    assert not has_control_characters("nim\u200cfasele")
    assert has_control_characters("tab\there")
    assert has_control_characters("del\x7f")
    assert not has_control_characters("plain ASCII, with ~ and !")
