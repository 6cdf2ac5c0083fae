from collections import Counter

from ecosistema.gateway.balancer import Balancer, BreakerState, CircuitBreaker
from ecosistema.gateway.config import ServiceConfig

URLS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"]


def balancer(strategy: str = "round_robin", **kwargs: object) -> Balancer:
    return Balancer("svc", ServiceConfig(instances=URLS, balancer=strategy, **kwargs))  # type: ignore[arg-type]


def test_round_robin_spreads_requests_evenly() -> None:
    b = balancer()
    picks = Counter(b.pick(0.0).url for _ in range(30))  # type: ignore[union-attr]
    assert picks == Counter({u: 10 for u in URLS})


def test_least_outstanding_prefers_the_idlest_instance() -> None:
    b = balancer("least_outstanding")
    b.instances[0].outstanding = 3
    b.instances[1].outstanding = 1
    b.instances[2].outstanding = 2
    assert b.pick(0.0) is b.instances[1]


def test_least_outstanding_spreads_ties() -> None:
    b = balancer("least_outstanding")
    picks = Counter(b.pick(0.0).url for _ in range(30))  # type: ignore[union-attr]
    assert picks == Counter({u: 10 for u in URLS})


def test_unhealthy_and_excluded_instances_are_skipped() -> None:
    b = balancer()
    b.instances[0].healthy = False
    picks = {b.pick(0.0, exclude=(b.instances[1],)) for _ in range(5)}
    assert picks == {b.instances[2]}


def test_no_instance_when_all_are_unavailable() -> None:
    b = balancer()
    for inst in b.instances:
        inst.healthy = False
    assert b.pick(0.0) is None


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(threshold=3, open_seconds=10)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    breaker.record_success()
    assert not breaker.record_failure(1.0)
    assert not breaker.record_failure(1.0)
    assert breaker.record_failure(1.0)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available(5.0)


def test_breaker_lets_one_probe_through_after_the_wait_and_closes_on_success() -> None:
    breaker = CircuitBreaker(threshold=1, open_seconds=10)
    breaker.record_failure(0.0)
    assert breaker.available(10.0)
    breaker.on_send(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.available(10.0)  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.available(10.0)


def test_failed_probe_reopens_the_breaker() -> None:
    breaker = CircuitBreaker(threshold=5, open_seconds=10)
    for _ in range(5):
        breaker.record_failure(0.0)
    breaker.on_send(11.0)
    assert breaker.record_failure(11.0)
    assert breaker.state is BreakerState.OPEN and not breaker.available(12.0)


def test_health_thresholds_apply_both_ways() -> None:
    config = ServiceConfig(instances=URLS, unhealthy_threshold=2, healthy_threshold=2)
    inst = Balancer("svc", config).instances[0]
    inst.record_health(False, config)
    assert inst.healthy
    inst.record_health(False, config)
    assert not inst.healthy
    inst.record_health(True, config)
    assert not inst.healthy
    inst.record_health(True, config)
    assert inst.healthy


def test_instance_url_gives_host_port_and_tls() -> None:
    b = Balancer("svc", ServiceConfig(instances=["https://api.internal", "http://10.0.0.5:81"]))
    first, second = b.instances
    assert (first.host, first.port, first.tls) == ("api.internal", 443, True)
    assert (second.port, second.host_header) == (81, b"10.0.0.5:81")
