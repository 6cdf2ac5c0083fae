"""The gateway reaches every sales endpoint, leads and ML operations alike, never anonymously."""

from __future__ import annotations

from ecosistema.distributed import service_routes


def test_gateway_routes_cover_leads_and_ml_operations_and_none_is_public() -> None:
    routes = {r["prefix"]: r for r in service_routes(["sales"])}
    for prefix in (
        "/api/v1/leads",
        "/api/v1/leads/import",
        "/api/v1/ml/models",
        "/api/v1/ml/serving",
        "/api/v1/ml/train",
        "/api/v1/ml/evaluate",
        "/api/v1/ml/promote",
        "/api/v1/ml/runs",
        "/api/v1/ml/drift",
    ):
        assert routes[prefix]["service"] == "sales", prefix
    assert not any(r["public"] for r in routes.values())
