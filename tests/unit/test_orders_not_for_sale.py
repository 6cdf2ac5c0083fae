"""Why orders says a SKU cannot go in a cart: catalog's reason when the quote gives one."""

from __future__ import annotations

from types import SimpleNamespace

from ecosistema.orders.service import _not_for_sale


def quote(**fields: object) -> SimpleNamespace:
    base = {"purchasable": False, "currency": "EUR", "reason": None, "reason_message": None}
    return SimpleNamespace(**{**base, **fields})


def test_catalogs_words_are_used_when_the_quote_gives_them() -> None:
    given = quote(reason="archived", reason_message="TEE-1 is archived: it is no longer sold")
    assert _not_for_sale(given, "TEE-1", "EUR") == "TEE-1 is archived: it is no longer sold"  # type: ignore[arg-type]


def test_a_reason_code_alone_still_says_why() -> None:
    assert _not_for_sale(quote(reason="draft"), "TEE-1", "EUR") == "TEE-1 is not on sale yet"  # type: ignore[arg-type]
    assert _not_for_sale(quote(reason="not_priced"), "TEE-1", "USD") == "TEE-1 has no price in USD"  # type: ignore[arg-type]


def test_without_a_reason_the_message_is_neutral_not_about_currency() -> None:
    assert _not_for_sale(quote(), "TEE-1", "EUR") == "TEE-1 is not for sale"  # type: ignore[arg-type]
