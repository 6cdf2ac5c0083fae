"""An app freezes the heap it started with (a full collection no longer walks it) and thaws it
when it stops; a heap frozen before it started, by another app or the program hosting it, is
neither collected again nor thawed by it."""

from __future__ import annotations

import gc
from pathlib import Path

from ecosistema.platform.app import create_app
from tests.conftest import make_settings


async def test_an_app_freezes_the_heap_it_starts_with_and_thaws_it_when_it_stops(
    tmp_path: Path,
) -> None:
    app = create_app([], make_settings("embedded", tmp_path))
    gc.unfreeze()  # the test session's heap is frozen already (tests/conftest.py)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


async def test_an_app_leaves_a_heap_frozen_before_it_started_as_it_found_it(
    tmp_path: Path,
) -> None:
    app = create_app([], make_settings("embedded", tmp_path))
    gc.freeze()
    frozen = gc.get_freeze_count()
    held = [[] for _ in range(1000)]  # young objects a full collection would freeze

    def untouched() -> bool:
        # Frozen objects that die meanwhile (a background thread's locals: SQLite's checkpoint
        # thread rebinds its own each second) lower the count a little; a collection and a
        # freeze by the app would raise it by the 1000 held lists, a thaw drop it to 0.
        return frozen - 100 <= gc.get_freeze_count() <= frozen

    async with app.router.lifespan_context(app):
        assert untouched()
    assert untouched()
    del held
