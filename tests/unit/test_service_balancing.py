"""Choosing the instance of another service a call goes to: least outstanding, round-robin
among equals, ejected instances skipped for a cool-down, and the service URL settings."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from ecosistema.platform.balancing import ServiceInstances, base_urls
from ecosistema.platform.config import Settings

A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def _picks(pool: ServiceInstances, count: int, now: float = 0.0) -> list[str]:
    chosen = []
    for _ in range(count):
        instance = pool.pick(now)
        assert instance is not None
        chosen.append(instance.base_url)
    return chosen


def test_calls_one_at_a_time_go_round_robin() -> None:
    pool = ServiceInstances("catalog", [A, B, C])
    assert _picks(pool, 6) == [A, B, C, A, B, C]


def test_the_instance_with_fewest_calls_in_flight_is_chosen() -> None:
    pool = ServiceInstances("catalog", [A, B, C])
    pool.instances[0].outstanding = 3
    pool.instances[1].outstanding = 1
    pool.instances[2].outstanding = 2
    assert _picks(pool, 3) == [B, B, B]


def test_equally_busy_instances_share_the_calls() -> None:
    pool = ServiceInstances("catalog", [A, B, C])
    pool.instances[0].outstanding = 5
    pool.instances[1].outstanding = 1
    pool.instances[2].outstanding = 1
    assert sorted(_picks(pool, 4)) == [B, B, C, C]


def test_an_ejected_instance_is_skipped_until_its_cool_down_ends() -> None:
    pool = ServiceInstances("catalog", [A, B], eject_seconds=5.0)
    pool.eject(pool.instances[0], now=100.0)
    assert _picks(pool, 4, now=101.0) == [B, B, B, B]
    assert pool.instances[0].ejections == 1
    assert sorted(_picks(pool, 2, now=105.0)) == [A, B]


def test_when_every_instance_is_ejected_the_one_back_soonest_is_tried() -> None:
    pool = ServiceInstances("catalog", [A, B, C], eject_seconds=5.0)
    pool.eject(pool.instances[1], now=100.0)
    pool.eject(pool.instances[2], now=101.0)
    pool.eject(pool.instances[0], now=102.0)
    assert _picks(pool, 3, now=103.0) == [B, B, B]


def test_a_retry_never_goes_back_to_an_instance_already_tried() -> None:
    pool = ServiceInstances("catalog", [A, B])
    first = pool.pick(0.0)
    assert first is not None
    second = pool.pick(0.0, exclude=[first])
    assert second is not None and second is not first
    assert pool.pick(0.0, exclude=[first, second]) is None


def test_a_retry_tries_an_ejected_instance_rather_than_none() -> None:
    pool = ServiceInstances("catalog", [A, B])
    pool.eject(pool.instances[1], now=0.0)
    assert pool.pick(1.0, exclude=[pool.instances[0]]) is pool.instances[1]


def test_a_call_written_against_the_first_instance_moves_to_the_chosen_one() -> None:
    pool = ServiceInstances("catalog", ["http://10.0.0.1:8100/", "https://cat-2.internal/base"])
    url = httpx.URL("http://10.0.0.1:8100/api/v1/products/a%2Fb?q=x%20y")
    assert pool.url_for(url, pool.instances[0]) is url
    moved = pool.url_for(url, pool.instances[1])
    assert str(moved) == "https://cat-2.internal/base/api/v1/products/a%2Fb?q=x%20y"
    assert pool.url_for(httpx.URL("http://elsewhere:1/api/v1/x"), pool.instances[1]) is None


def test_base_urls_are_split_on_commas_without_blanks_or_trailing_slashes() -> None:
    assert base_urls(f" {A}/ ,, {B} ") == [A, B]
    assert base_urls([A, f"{B}/"]) == [A, B]
    with pytest.raises(ValueError, match="no base URL"):
        ServiceInstances("catalog", " , ")


def test_service_url_settings_take_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECOSISTEMA_CATALOG_URL", f"{A}/, {B}")
    monkeypatch.setenv("ECOSISTEMA_IDENTITY_URL", A)
    settings = Settings()
    assert settings.catalog_url == f"{A},{B}"
    assert settings.identity_url == A
    assert Settings(orders_url="").orders_url is None


@pytest.mark.parametrize("value", ["catalog:8100", f"{A},ftp://x:1", "http:///api", "http://"])
def test_a_service_url_that_is_not_an_http_base_url_is_refused_naming_the_setting(
    value: str,
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(catalog_url=value)
    assert caught.value.errors()[0]["loc"] == ("catalog_url",)
    assert "not a base URL" in str(caught.value)
