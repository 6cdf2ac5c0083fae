"""The API gateway: routing, edge authentication, rate limiting, load balancing and breaking."""

# ruff: noqa: E402 - the compiled hot path goes on the package path before any module loads.
from ecosistema.gateway import native

native.activate(__path__)

from ecosistema.gateway.config import GatewayConfig, gateway_config, load_route_table
from ecosistema.gateway.principal import (
    PRINCIPAL_HEADER,
    InvalidPrincipal,
    Principal,
    sign_principal,
    verify_principal,
)
from ecosistema.gateway.server import create_ssl_context, run_gateway, serve

__all__ = [
    "PRINCIPAL_HEADER",
    "GatewayConfig",
    "InvalidPrincipal",
    "Principal",
    "create_ssl_context",
    "gateway_config",
    "load_route_table",
    "run_gateway",
    "serve",
    "sign_principal",
    "verify_principal",
]
