from pathlib import Path

import pytest
from pydantic import ValidationError

from ecosistema.gateway.config import GatewayConfig, RouteConfig, gateway_config
from ecosistema.gateway.routing import Router
from ecosistema.platform.config import Settings


def routes() -> list[RouteConfig]:
    return [
        RouteConfig(prefix="/api/v1/", service="api"),
        RouteConfig(prefix="/api/v1/auth/*", service="identity", methods={"POST"}, public=True),
        RouteConfig(prefix="/api/v1/catalog", service="catalog", methods={"GET"}),
    ]


def test_longest_prefix_wins() -> None:
    router = Router(routes())
    assert router.match("POST", "/api/v1/auth/login").route.service == "identity"  # type: ignore[union-attr]
    assert router.match("GET", "/api/v1/orders/1").route.service == "api"  # type: ignore[union-attr]


def test_method_not_on_the_specific_route_falls_back_to_a_broader_one() -> None:
    match = Router(routes()).match("GET", "/api/v1/auth/login")
    assert match.route is not None and match.route.service == "api"


def test_method_not_allowed_lists_the_allowed_methods() -> None:
    router = Router([RouteConfig(prefix="/api/v1/catalog", service="c", methods={"GET"})])
    match = router.match("DELETE", "/api/v1/catalog/p1")
    assert match.route is None and match.allowed == {"GET", "HEAD"}


def test_head_is_served_by_a_get_route() -> None:
    assert Router(routes()).match("HEAD", "/api/v1/catalog/x").route is not None


def test_prefix_matches_whole_segments_only() -> None:
    router = Router([RouteConfig(prefix="/api/v1/catalog", service="c")])
    assert router.match("GET", "/api/v1/catalog").route is not None
    assert router.match("GET", "/api/v1/catalogue").route is None
    assert router.match("GET", "/api/v1/catalogue").allowed == frozenset()


def test_route_naming_an_unknown_service_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown service"):
        GatewayConfig(services={}, routes=[RouteConfig(prefix="/x", service="nope")])


def test_instance_must_be_an_http_url() -> None:
    with pytest.raises(ValidationError, match="http"):
        GatewayConfig.model_validate(
            {"services": {"s": {"instances": ["tcp://1.2.3.4:5"]}}, "routes": []}
        )


def test_route_table_from_yaml_takes_secrets_and_redis_from_settings(tmp_path: Path) -> None:
    table = tmp_path / "routes.yaml"
    table.write_text(
        "services:\n  identity:\n    instances: [http://127.0.0.1:8001]\n"
        "routes:\n  - prefix: /api/v1/auth/\n    service: identity\n    methods: [post]\n"
        "    public: true\n    rate_limit: {rate: 0.5, burst: 5}\n"
    )
    settings = Settings(
        gateway_secret="k" * 32,  # type: ignore[arg-type]
        cache_url="redis://127.0.0.1:6379/0",
        cache_prefix="t1:",
        jwt_issuer="iss-x",
    )
    config = gateway_config(table, settings)
    assert config.routes[0].methods == {"POST"}
    assert config.auth.issuer == "iss-x"
    assert config.auth.principal_secret is not None
    assert config.rate_limits.backend_url == "redis://127.0.0.1:6379/0"
    assert config.rate_limits.key_prefix == "t1:rl:"


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api/v1/auth/login"),
        ("GET", "/api/v1/auth/login"),
        ("GET", "/api/v1/catalog"),
        ("GET", "/api/v1/catalog/p1"),
        ("HEAD", "/api/v1/catalog/p1"),
        ("POST", "/api/v1/catalog/p1"),
        ("GET", "/api/v1/catalogue"),
        ("GET", "/api/v1"),
        ("GET", "/api/v1/"),
        ("GET", "/api/v2/x"),
        ("GET", "/"),
    ],
)
def test_route_for_picks_the_same_route_as_match(method: str, path: str) -> None:
    router = Router(
        [*routes(), RouteConfig(prefix="/api/v1/auth/login", service="a", methods={"PUT"})]
    )
    assert router.route_for(method, path) is router.match(method, path).route


def test_the_owner_of_a_path_is_its_most_specific_route_when_one_service_covers_it() -> None:
    router = Router(
        [
            RouteConfig(prefix="/api/v1/products", service="catalog", methods={"GET"}),
            RouteConfig(prefix="/api/v1/products/export", service="catalog", methods={"GET"}),
            RouteConfig(prefix="/api/v1/", service="fallback"),
        ]
    )
    owner = router.owner("/api/v1/categories")
    assert owner is not None and owner.service == "fallback"
    assert router.owner("/api/v1/products/export") is None  # also covered by "fallback"
    assert router.owner("/elsewhere") is None
    alone = Router([RouteConfig(prefix="/api/v1/products", service="catalog", methods={"GET"})])
    owned = alone.owner("/api/v1/products/p1")
    assert owned is not None and owned.prefix == "/api/v1/products"
