"""Webhooks' pure rules: signing and verification, the retry schedule, event names, targets."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from ecosistema.catalog import events as catalog_events
from ecosistema.orders import events as orders_events
from ecosistema.payments import events as payments_events
from ecosistema.platform.config import Settings
from ecosistema.platform.signatures import sign, signature_header
from ecosistema.webhooks import domain
from ecosistema.webhooks.domain import (
    DeliveryStatus,
    InvalidSignature,
    TargetError,
    after_attempt,
    check_url_shape,
    event_body,
    is_public_address,
    obviously_private_host,
    retry_delay,
    verify_signature,
)
from ecosistema.webhooks.schemas import SubscriptionCreate
from ecosistema.webhooks.service import private_targets_allowed

SECRET = "whsec_test"
BODY = b'{"id":"e1","type":"order.paid","created":1700000000,"data":{"total":100}}'
T = 1_700_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T, BODY) == expected
    assert signature_header([SECRET], T, BODY) == f"t={T},v1={expected}"


def test_a_genuine_delivery_verifies_and_returns_its_timestamp() -> None:
    header = signature_header([SECRET], T, BODY)
    assert verify_signature(BODY, header, SECRET, now=T + 10) == T


@pytest.mark.parametrize(
    ("body", "header_timestamp", "secret"),
    [
        (BODY.replace(b"100", b"999"), T, SECRET),  # tampered body
        (BODY, T + 1, SECRET),  # tampered timestamp
        (BODY, T, "whsec_other"),  # wrong secret
    ],
)
def test_a_tampered_delivery_does_not_verify(
    body: bytes, header_timestamp: int, secret: str
) -> None:
    header = signature_header([SECRET], T, BODY).replace(f"t={T}", f"t={header_timestamp}")
    with pytest.raises(InvalidSignature):
        verify_signature(body, header, secret, now=T)


def test_an_old_timestamp_is_refused_so_captured_requests_cannot_be_replayed() -> None:
    header = signature_header([SECRET], T, BODY)
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify_signature(BODY, header, SECRET, now=T + 301)
    assert verify_signature(BODY, header, SECRET, now=T + 301, tolerance=0) == T


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=1",
        f"v1={'0' * 64}",
        "t=abc,v1=00",
        "garbage",
        # Untrusted text in any script: refused, never an exception of another kind.
        f"t={T},v1=\u00e9",
        f"t={T},v1=\u00e9{'0' * 63}",
        "t=\u00b2,v1=ab",
        "t=\uff11\uff12,v1=ab",
        f"t={'9' * 40},v1=ab",
        f"t={T},v1=\udc80",
    ],
)
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, header, SECRET, now=T)


def test_during_a_rotation_either_secret_verifies() -> None:
    header = signature_header(["whsec_new", "whsec_old"], T, BODY)
    assert header.count("v1=") == 2
    assert verify_signature(BODY, header, "whsec_new", now=T) == T
    assert verify_signature(BODY, header, "whsec_old", now=T) == T


def test_the_body_is_the_public_envelope_with_unix_created() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = json.loads(event_body("e1", "order.paid", created, {"order_id": "o"}))
    assert body == {
        "id": "e1",
        "type": "order.paid",
        "created": int(created.timestamp()),
        "data": {"order_id": "o"},
    }


def test_new_secrets_are_prefixed_and_random() -> None:
    a, b = domain.new_secret(), domain.new_secret()
    assert a.startswith("whsec_") and len(a) > 40 and a != b


def test_retry_delays_grow_exponentially_with_jitter_up_to_a_cap() -> None:
    rng = random.Random(1)
    for failures in range(1, 20):
        ceiling = min(domain.RETRY_CAP_SECONDS, domain.RETRY_BASE_SECONDS * 2 ** (failures - 1))
        for _ in range(20):
            assert ceiling / 2 <= retry_delay(failures, rng) <= ceiling
    draws = {retry_delay(5, rng) for _ in range(20)}
    assert len(draws) > 1  # jittered, not a fixed schedule


def test_a_failed_attempt_is_retried_until_the_deadline_then_given_up() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    deadline = now + timedelta(hours=24)
    retried = after_attempt(succeeded=False, failures=1, now=now, deadline=deadline)
    assert retried.status is DeliveryStatus.PENDING
    assert retried.next_attempt_at is not None
    assert now + timedelta(seconds=15) <= retried.next_attempt_at <= now + timedelta(seconds=30)
    near = deadline - timedelta(minutes=1)
    last = after_attempt(succeeded=False, failures=12, now=near, deadline=deadline)
    assert last.status is DeliveryStatus.PENDING and last.next_attempt_at == deadline
    done = after_attempt(succeeded=False, failures=13, now=deadline, deadline=deadline)
    assert done.status is DeliveryStatus.FAILED and done.next_attempt_at is None
    ok = after_attempt(succeeded=True, failures=0, now=deadline, deadline=deadline)
    assert ok.status is DeliveryStatus.SUCCEEDED
    once = after_attempt(succeeded=False, failures=1, now=now, deadline=deadline, retry=False)
    assert once.status is DeliveryStatus.FAILED


def test_a_subscription_is_disabled_only_after_failing_for_the_whole_window() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    window = timedelta(hours=24)
    assert not domain.should_disable(None, now, window)
    assert not domain.should_disable(now - timedelta(hours=23), now, window)
    assert domain.should_disable(now - timedelta(hours=24), now, window)


def test_every_event_the_commerce_services_publish_has_a_public_name() -> None:
    published = (
        set(orders_events.PUBLISHED)
        | set(payments_events.PUBLISHED)
        | set(catalog_events.PUBLISHED)
    )
    assert published <= set(domain.PUBLIC_NAMES)
    assert domain.public_name("OrderPaid") == "order.paid"
    assert domain.public_name("SomethingInternal") is None
    assert len(set(domain.PUBLIC_NAMES.values())) == len(domain.PUBLIC_NAMES)


def test_event_types_are_checked_and_deduplicated() -> None:
    data = SubscriptionCreate(url="https://example.com/h", event_types=["order.paid"] * 2)
    assert data.event_types == ["order.paid"]
    assert domain.unknown_event_types(["order.paid", "*", "order.payed"]) == ["order.payed"]
    assert domain.subscribed(["*"], "stock.low") and not domain.subscribed(["order.paid"], "x")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/hook",
        "http://",
        "https://u:p@example.com/",
        "https://example.com/#frag",
        "https://exa mple.com/",
        "http://example.com:99999/",
        "javascript:alert(1)",
    ],
)
def test_only_plain_http_and_https_urls_are_accepted(url: str) -> None:
    with pytest.raises(TargetError):
        check_url_shape(url)


def test_a_good_url_is_accepted_as_given() -> None:
    assert check_url_shape("https://hooks.example.com:8443/a?b=c") == (
        "https://hooks.example.com:8443/a?b=c"
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_public_addresses_are_told_from_private_ones(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("localhost", True),
        ("api.localhost", True),
        ("printer.local", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("example.com", False),
        ("8.8.8.8", False),
    ],
)
def test_obviously_private_hosts_are_recognised_without_resolving(host: str, private: bool) -> None:
    assert obviously_private_host(host) is private


def test_response_excerpts_and_headers_are_bounded() -> None:
    text = domain.excerpt(b"x" * 10_000)
    assert len(text) == domain.RESPONSE_BODY_EXCERPT_BYTES + 1 and text.endswith("…")
    assert domain.excerpt(b"\xff ok") == "\ufffd ok"
    kept = domain.kept_headers((f"h{i}", "v" * 1000) for i in range(100))
    assert len(kept) == domain.RESPONSE_HEADERS_KEPT
    assert all(len(v) == domain.RESPONSE_HEADER_VALUE_CHARS for v in kept.values())


def test_private_targets_are_allowed_outside_production_unless_configured() -> None:
    assert private_targets_allowed(Settings(environment="development"))
    assert private_targets_allowed(Settings(environment="test"))
    assert not private_targets_allowed(Settings(environment="production"))
    assert private_targets_allowed(
        Settings(environment="production", webhooks_allow_private_targets=True)
    )
    assert not private_targets_allowed(
        Settings(environment="test", webhooks_allow_private_targets=False)
    )
