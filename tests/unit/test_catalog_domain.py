"""Catalog rules without I/O: slugs, category paths, price selection with price lists and sale
windows, availability, stock allocation and the shape of InsufficientStock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecosistema.catalog import domain
from ecosistema.catalog.domain import InsufficientStock, SalePrice
from ecosistema.catalog.transfer import _format_options, _parse_options

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Organic Cotton Tee", "organic-cotton-tee"),
        ("  Café   Crème!! ", "cafe-creme"),
        ("Chef's Knife 20cm", "chef-s-knife-20cm"),
        ("Ünïcödé — Dash", "unicode-dash"),
        ("!!!", ""),
        ("Чай зелёный", "чай-зелёный"),
        ("東京 タワー", "東京-タワー"),
        ("Ελληνικό Μέλι", "ελληνικό-μέλι"),
        ("हिन्दी किताब", "हिन्दी-किताब"),
        ("Straße 5", "straße-5"),
    ],
)
def test_slug_is_the_names_words_in_lower_case_joined_by_hyphens(name: str, slug: str) -> None:
    assert domain.slugify(name) == slug
    assert slug == "" or domain.is_slug(slug)


@pytest.mark.parametrize("value", ["Tee", "tee--x", "-tee", "café", "Чай", "a b", ""])
def test_a_slug_is_what_slugify_leaves_unchanged(value: str) -> None:
    assert not domain.is_slug(value)


@settings(max_examples=2_000)
@given(st.text(max_size=300))
def test_slugify_always_gives_a_valid_slug_or_nothing(name: str) -> None:
    slug = domain.slugify(name)
    assert slug == "" or domain.is_slug(slug)


@settings(max_examples=2_000)
@given(st.text(alphabet="abcXyz019-_ .é", max_size=40))
def test_is_slug_says_whether_slugify_leaves_a_value_as_it_is(value: str) -> None:
    expected = 0 < len(value) <= domain.SLUG_MAX_LENGTH and domain.slugify(value) == value
    assert domain.is_slug(value) == expected


def test_unique_slug_counts_up_past_taken_ones() -> None:
    assert domain.unique_slug("tee", []) == "tee"
    assert domain.unique_slug("tee", ["tee", "tee-2"]) == "tee-3"
    long = "a" * domain.SLUG_MAX_LENGTH
    assert len(domain.unique_slug(long, [long])) <= domain.SLUG_MAX_LENGTH


def test_category_paths_and_descendants() -> None:
    path = domain.category_path(domain.category_path(None, "home"), "kitchen")
    assert path == "home/kitchen"
    assert domain.is_within("home/kitchen", "home")
    assert domain.is_within("home", "home")
    assert not domain.is_within("homeware", "home")


def test_sale_window_includes_its_start_and_excludes_its_end() -> None:
    sale = SalePrice(800, NOW, NOW + HOUR)
    assert sale.active_at(NOW)
    assert not sale.active_at(NOW - timedelta(microseconds=1))
    assert not sale.active_at(NOW + HOUR)
    assert SalePrice(800, None, None).active_at(NOW)


def test_price_list_replaces_the_base_price_and_a_lower_running_sale_wins() -> None:
    running = SalePrice(700, NOW - HOUR, NOW + HOUR)
    pricier_sale = SalePrice(950, None, None)
    assert domain.effective_unit_price(base=1000, price_list=None, sales=[], at=NOW) == 1000
    assert domain.effective_unit_price(base=1000, price_list=800, sales=[], at=NOW) == 800
    assert domain.effective_unit_price(base=1000, price_list=800, sales=[running], at=NOW) == 700
    assert (
        domain.effective_unit_price(base=1000, price_list=800, sales=[pricier_sale], at=NOW) == 800
    )
    expired = SalePrice(1, NOW - 2 * HOUR, NOW - HOUR)
    assert domain.effective_unit_price(base=1000, price_list=None, sales=[expired], at=NOW) == 1000
    assert domain.effective_unit_price(base=None, price_list=None, sales=[running], at=NOW) is None


def test_a_price_list_price_alone_does_not_make_a_variant_purchasable() -> None:
    running = SalePrice(700, NOW - HOUR, NOW + HOUR)
    assert domain.effective_unit_price(base=None, price_list=500, sales=[], at=NOW) is None
    assert domain.effective_unit_price(base=None, price_list=500, sales=[running], at=NOW) is None


amounts = st.integers(min_value=0, max_value=10**9)
offsets = st.integers(min_value=-100, max_value=100)


@given(
    base=st.none() | amounts,
    listed=st.none() | amounts,
    sales=st.lists(st.tuples(amounts, st.none() | offsets, st.none() | offsets), max_size=5),
)
def test_effective_price_never_exceeds_the_regular_price(
    base: int | None, listed: int | None, sales: list[tuple[int, int | None, int | None]]
) -> None:
    windows = [
        SalePrice(
            amount,
            NOW + start * HOUR if start is not None else None,
            NOW + end * HOUR if end is not None else None,
        )
        for amount, start, end in sales
    ]
    price = domain.effective_unit_price(base=base, price_list=listed, sales=windows, at=NOW)
    regular = listed if listed is not None else base
    if base is None or regular is None:
        assert price is None
    else:
        running = [s.amount for s in windows if s.active_at(NOW)]
        assert price == min([regular, *running])


def test_next_price_change_is_the_nearest_future_boundary() -> None:
    sales = [SalePrice(1, NOW - HOUR, NOW + 3 * HOUR), SalePrice(1, NOW + HOUR, None)]
    assert domain.next_price_change(sales, NOW) == NOW + HOUR
    assert domain.next_price_change([SalePrice(1, None, None)], NOW) is None


def test_availability_is_on_hand_less_reserved_and_never_negative() -> None:
    assert domain.available(10, 3) == 7
    assert domain.available(3, 3) == 0
    assert domain.available(2, 3) == 0


def test_lines_are_merged_by_sku_and_sorted() -> None:
    assert domain.merge_lines([("B", 1), ("A", 2), ("B", 3)]) == [("A", 2), ("B", 4)]
    with pytest.raises(ValueError, match="positive"):
        domain.merge_lines([("A", 0)])


def test_allocation_prefers_one_warehouse_that_can_ship_everything() -> None:
    assert domain.allocate(3, [("near", 2), ("far", 5)]) == [("far", 3)]
    assert domain.allocate(4, [("near", 2), ("far", 3)]) == [("near", 2), ("far", 2)]
    assert domain.allocate(9, [("near", 2), ("far", 3)]) == [("near", 2), ("far", 3)]


@given(
    quantity=st.integers(min_value=1, max_value=500),
    levels=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_allocation_never_takes_more_than_is_free_or_wanted(
    quantity: int, levels: list[int]
) -> None:
    stock = [(f"w{i}", free) for i, free in enumerate(levels)]
    plan = domain.allocate(quantity, stock)
    free = dict(stock)
    assert all(0 < take <= free[w] for w, take in plan)
    assert sum(take for _, take in plan) == min(quantity, sum(levels))
    assert len({w for w, _ in plan}) == len(plan)


def test_low_stock_fires_only_when_crossing_the_threshold() -> None:
    assert domain.crosses_below(5, 4, 5)
    assert not domain.crosses_below(4, 3, 5)
    assert not domain.crosses_below(9, 5, 5)


def test_channels_can_override_tax_inclusive_prices() -> None:
    assert domain.prices_include_tax("web", True, {}) is True
    assert domain.prices_include_tax("b2b", True, {"b2b": False}) is False


def test_insufficient_stock_is_a_409_naming_only_the_short_lines() -> None:
    error = InsufficientStock(
        [
            {"sku": "A", "requested": 1, "available": 5},
            {"sku": "B", "requested": 3, "available": 2},
        ]
    )
    assert (error.status, error.type) == (409, "insufficient-stock")
    assert error.extra["lines"][1] == {"sku": "B", "requested": 3, "available": 2}
    assert "B (2 available, 3 requested)" in error.detail
    assert "A (" not in error.detail


option_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
)


@given(st.dictionaries(option_text, option_text, max_size=4))
def test_csv_options_round_trip(options: dict[str, str]) -> None:
    assert _parse_options(_format_options(options)) == options


def test_csv_options_are_readable_unless_a_value_needs_json() -> None:
    assert _format_options({"size": "M", "colour": "Red"}) == "size=M;colour=Red"
    assert _format_options({"{odd": "x"}) == '{"{odd":"x"}'
    assert _parse_options(" size = M ; colour=Red ") == {"size": "M", "colour": "Red"}
