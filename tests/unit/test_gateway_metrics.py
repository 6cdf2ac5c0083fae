"""The gateway's metrics: per-request tallies reach the Prometheus exposition intact."""

from __future__ import annotations

from ecosistema.gateway.metrics import GatewayMetrics


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in want.split(",")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in the exposition")


def test_tallied_requests_and_durations_appear_in_counters_and_buckets() -> None:
    metrics = GatewayMetrics(lambda: [])
    for seconds in (0.0005, 0.003, 0.003, 0.2, 40.0):
        metrics.observe_request("/api", "GET", 200, seconds)
    metrics.observe_request("/api", "POST", 503, 0.01)
    metrics.observe_upstream("catalog", "http://a", "ok")
    metrics.observe_upstream("catalog", "http://a", "ok")
    text = metrics.render().decode()
    assert sample(text, "ecosistema_gateway_requests_total", method="GET", status="200") == 5
    assert sample(text, "ecosistema_gateway_requests_total", method="POST", status="503") == 1
    bucket = "ecosistema_gateway_request_duration_seconds_bucket"
    assert sample(text, bucket, route="/api", le="0.001") == 1
    assert sample(text, bucket, route="/api", le="0.005") == 3
    assert sample(text, bucket, route="/api", le="0.01") == 4  # a bound is inclusive
    assert sample(text, bucket, route="/api", le="30.0") == 5
    assert sample(text, bucket, route="/api", le="+Inf") == 6
    total = sample(text, "ecosistema_gateway_request_duration_seconds_sum", route="/api")
    assert abs(total - 40.2165) < 1e-9
    assert sample(text, "ecosistema_gateway_upstream_requests_total", outcome="ok") == 2
    # A second scrape adds nothing that was already counted.
    again = metrics.render().decode()
    assert sample(again, "ecosistema_gateway_requests_total", method="GET", status="200") == 5
