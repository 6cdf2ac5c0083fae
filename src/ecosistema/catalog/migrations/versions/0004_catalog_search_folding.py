"""Products' searchable text gains the forms shoppers type: folded words (``strasse`` for
``Straße``, ``cafe`` for ``Café``) and the tails of Chinese, Japanese and Korean words
(``タワー`` inside ``東京タワー``). Every product's text is written again, and on SQLite its
full-text row.

Revision ID: 0004_catalog_search_folding
Revises: 0003_catalog_updated_at
Create Date: 2026-11-29 11:00:00
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from ecosistema.catalog.search import search_text

revision: str = "0004_catalog_search_folding"
down_revision: str | Sequence[str] | None = "0003_catalog_updated_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500


def _options(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    after = ""
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT p.id, p.name, p.description, c.name AS category FROM products p "
                "LEFT JOIN categories c ON c.id = p.category_id WHERE p.id > :after "
                "ORDER BY p.id LIMIT :limit"
            ),
            {"after": after, "limit": BATCH},
        ).all()
        if not rows:
            return
        ids = [r.id for r in rows]
        words: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
        for v in bind.execute(
            sa.text(
                "SELECT product_id, sku, name, options FROM variants "
                "WHERE product_id IN :ids ORDER BY product_id, position"
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"ids": ids},
        ):
            words[v.product_id].append((v.sku, v.name, _options(v.options)))
        texts = {
            r.id: search_text(
                words.get(r.id, ()), r.category, name=r.name, description=r.description
            )
            for r in rows
        }
        bind.execute(
            sa.text("UPDATE products SET search_text = :text WHERE id = :pid"),
            [{"pid": pid, "text": text} for pid, text in texts.items()],
        )
        if sqlite:
            for r in rows:
                bind.execute(
                    sa.text("DELETE FROM product_search WHERE product_search MATCH :key"),
                    {"key": f'product_id : "{r.id}"'},
                )
            bind.execute(
                sa.text(
                    "INSERT INTO product_search (product_id, name, search_text, description) "
                    "VALUES (:pid, :name, :text, :description)"
                ),
                [
                    {"pid": r.id, "name": r.name, "text": texts[r.id], "description": r.description}
                    for r in rows
                ],
            )
        after = ids[-1]


def downgrade() -> None:
    """The extra words find more, never less: they stay until the products are next written."""
