import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecosistema.platform.pagination import InvalidCursor, decode_cursor, encode_cursor


def _forge(items: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(items).encode()).decode()


def test_a_cursor_round_trips_its_values() -> None:
    moment = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    cursor = encode_cursor("fp", moment, 42, "id-1")
    assert decode_cursor(cursor, str, datetime, int, str) == ("fp", moment, 42, "id-1")


@pytest.mark.parametrize(
    ("forged", "kinds"),
    [
        ([True, "id"], (int, str)),
        ([10**30, "id"], (int, str)),
        ([{"t": "not a time"}, "id"], (datetime, str)),
        ([{"t": "2026-01-01T00:00:00"}, "id"], (datetime, str)),
        ([{"t": "0001-01-01T00:00:00+14:00"}, "id"], (datetime, str)),
        (["x", "id"], (int, str)),
        ([1], (int, str)),
        ({"a": 1}, (int,)),
    ],
)
def test_tampered_cursors_are_refused_before_reaching_a_query(
    forged: object, kinds: tuple[type, ...]
) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(_forge(forged), *kinds)


@given(st.text(max_size=300))
def test_any_string_either_decodes_or_is_an_invalid_cursor(text: str) -> None:
    try:
        decode_cursor(text, (int, float, datetime), str)
    except InvalidCursor as exc:
        assert exc.status == 422
