"""The shape of a SKU, shared by every service that names one (catalog creates them, orders
puts them in carts): a letter or digit, then letters, digits, ``.``, ``_`` or ``-``; nothing
that would need escaping in a URL path."""

from __future__ import annotations

from typing import Final

from ecosistema.platform.errors import pattern_rule

SKU_PATTERN: Final = pattern_rule(
    r"^[A-Za-z0-9][A-Za-z0-9._\-]*$",
    "a SKU: a letter or digit, then letters, digits, `.`, `_` or `-`",
)
SKU_MAX_LENGTH: Final = 64
