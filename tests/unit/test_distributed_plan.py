"""The plan behind ``ecosistema up --distributed``: settings checks, replicas, ports, routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from ecosistema.distributed import (
    DistributedSettingsError,
    check_distributed_settings,
    parse_replicas,
    plan_instances,
    process_specs,
    route_table,
    service_urls,
)
from ecosistema.gateway import gateway_config
from ecosistema.gateway.routing import Router
from ecosistema.platform.config import Settings
from ecosistema.services import SERVICE_NAMES, load_services

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/eco"
SHARED = {"database_url": PG, "bus_url": "nats://127.0.0.1:4222", "cache_url": "redis://r:6379/0"}


def test_shared_backends_pass_the_distributed_check() -> None:
    check_distributed_settings(Settings(**SHARED))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            {"database_url": "sqlite+aiosqlite:///{data_dir}/{service}.db"},
            "ECOSISTEMA_DATABASE_URL",
        ),
        ({"database_urls": {"orders": "sqlite+aiosqlite:///o.db"}}, "orders is SQLite"),
        ({"bus_url": "memory://"}, "ECOSISTEMA_BUS_URL"),
        ({"cache_url": "memory://"}, "ECOSISTEMA_CACHE_URL"),
    ],
)
def test_distributed_shape_refuses_settings_that_cannot_be_shared(
    override: dict[str, object], named: str
) -> None:
    with pytest.raises(DistributedSettingsError, match=named):
        check_distributed_settings(Settings(**{**SHARED, **override}))  # type: ignore[arg-type]


def test_replicas_default_to_one_and_later_items_win() -> None:
    counts = parse_replicas(["catalog=2", "orders=3", "catalog=4"], 1)
    assert counts == {**dict.fromkeys(SERVICE_NAMES, 1), "catalog": 4, "orders": 3}


@pytest.mark.parametrize("item", ["catalog", "nope=2", "catalog=0", "catalog=two"])
def test_bad_replica_counts_are_refused(item: str) -> None:
    with pytest.raises(ValueError, match="--replicas"):
        parse_replicas([item], 1)


def test_instances_get_consecutive_ports_from_the_base() -> None:
    instances = plan_instances({"identity": 1, "catalog": 2}, base_port=9000)
    assert [(i.name, i.port) for i in instances] == [
        ("identity-1", 9000),
        ("catalog-1", 9001),
        ("catalog-2", 9002),
    ]
    assert instances[1].url == "http://127.0.0.1:9001"


def test_every_caller_is_given_every_replica_of_its_callees_starting_at_its_own() -> None:
    instances = plan_instances({"identity": 1, "catalog": 3}, base_port=9000)
    assert service_urls(instances, 1)["ECOSISTEMA_CATALOG_URL"] == (
        "http://127.0.0.1:9001,http://127.0.0.1:9002,http://127.0.0.1:9003"
    )
    assert service_urls(instances, 2)["ECOSISTEMA_CATALOG_URL"] == (
        "http://127.0.0.1:9002,http://127.0.0.1:9003,http://127.0.0.1:9001"
    )
    assert service_urls(instances, 2)["ECOSISTEMA_IDENTITY_URL"] == "http://127.0.0.1:9000"


def test_the_service_url_settings_accept_the_replica_lists_they_are_given() -> None:
    instances = plan_instances({"identity": 1, "catalog": 2}, base_port=9000)
    settings = Settings.model_validate(
        {k.removeprefix("ECOSISTEMA_").lower(): v for k, v in service_urls(instances, 2).items()}
    )
    assert settings.catalog_url == "http://127.0.0.1:9002,http://127.0.0.1:9001"
    assert settings.identity_url == "http://127.0.0.1:9000"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_route_table_sends_every_endpoint_to_its_own_service() -> None:
    instances = plan_instances(dict.fromkeys(SERVICE_NAMES, 1))
    config = gateway_config(route_table(instances))
    router = Router(list(config.routes))
    checked = 0
    for service in load_services():
        for router_, prefix in ((service.router, "/api/v1"), (service.root_router, "")):
            for endpoint in router_.routes if router_ is not None else ():
                if not isinstance(endpoint, APIRoute):
                    continue
                for method in endpoint.methods:
                    match = router.match(method, _concrete(prefix + endpoint.path))
                    assert match.route is not None, (method, endpoint.path)
                    assert match.route.service == service.name, (method, endpoint.path)
                    checked += 1
    assert checked > 50


def test_route_table_is_public_only_where_an_endpoint_takes_anonymous_callers() -> None:
    config = gateway_config(route_table(plan_instances(dict.fromkeys(SERVICE_NAMES, 1))))
    router = Router(list(config.routes))

    def public(method: str, path: str) -> bool:
        route = router.match(method, path).route
        assert route is not None
        return route.public

    assert public("GET", "/api/v1/products")
    assert public("POST", "/api/v1/auth/login")
    assert public("GET", "/.well-known/jwks.json")
    assert not public("POST", "/api/v1/products")
    assert not public("GET", "/api/v1/users/me")
    assert not public("POST", "/api/v1/reservations")
    login = router.match("POST", "/api/v1/auth/login").route
    assert login is not None and login.rate_limit is not None
    assert login.rate_limit.burst == Settings().gateway_auth_burst


def test_public_catalog_reads_are_cached_and_nothing_else_is() -> None:
    settings = Settings(gateway_cache_seconds=42)
    config = gateway_config(route_table(plan_instances({"catalog": 1}), settings=settings))
    cached = {r.prefix: r.cache for r in config.routes if r.cache is not None}
    assert set(cached) == {"/api/v1/products", "/api/v1/categories"}
    assert all(rule.ttl_seconds == 42 for rule in cached.values())
    router = Router(list(config.routes))
    write = router.match("POST", "/api/v1/products").route
    assert write is not None and write.cache is None


def test_route_table_balances_over_every_replica_with_readiness_checks() -> None:
    instances = plan_instances({"identity": 1, "catalog": 3}, base_port=9100)
    table = route_table(instances)
    assert table["services"]["catalog"]["instances"] == [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9102",
        "http://127.0.0.1:9103",
    ]
    assert table["services"]["catalog"]["health_path"] == "/readyz"
    assert table["auth"]["jwks_service"] == "identity"


def test_every_instance_runs_ecosistema_serve_and_the_gateway_runs_last() -> None:
    instances = plan_instances({"identity": 1, "catalog": 2}, base_port=9000)
    specs = process_specs(
        instances,
        routes_file=Path("/tmp/routes.json"),
        gateway_host="0.0.0.0",
        gateway_port=8000,
        gateway_workers=2,
        env={"ECOSISTEMA_GATEWAY_SECRET": "s"},
        python="python",
    )
    assert [s.name for s in specs] == ["identity-1", "catalog-1", "catalog-2", "gateway"]
    assert list(specs[1].argv) == [
        *("python", "-m", "ecosistema", "serve", "catalog"),
        *("--host", "127.0.0.1", "--port", "9001"),
    ]
    assert specs[1].ready_url == "http://127.0.0.1:9001/readyz"
    assert specs[-1].argv[3:5] == ["gateway", "--routes"]
    assert "--workers" in specs[-1].argv
    assert specs[-1].ready_url == "http://127.0.0.1:8000/.well-known/jwks.json"
    assert all(s.env["ECOSISTEMA_GATEWAY_SECRET"] == "s" for s in specs)


def test_up_distributed_refuses_the_embedded_defaults_and_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ecosistema.cli import app
    from ecosistema.platform.config import get_settings

    for name in ("DATABASE_URL", "BUS_URL", "CACHE_URL", "DATABASE_URLS"):
        monkeypatch.delenv(f"ECOSISTEMA_{name}", raising=False)
    monkeypatch.setenv("ECOSISTEMA_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["up", "--distributed", "--port", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    for setting in ("ECOSISTEMA_DATABASE_URL", "ECOSISTEMA_BUS_URL", "ECOSISTEMA_CACHE_URL"):
        assert setting in flat
    assert not any(tmp_path.iterdir()), "nothing was started or written"


def test_up_distributed_refuses_a_bad_replica_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ecosistema.cli import app
    from ecosistema.platform.config import get_settings

    monkeypatch.setenv("ECOSISTEMA_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["up", "--distributed", "--replicas", "catalog=0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "at least 1" in result.output
