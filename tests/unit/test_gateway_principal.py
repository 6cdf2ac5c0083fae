import pytest

from ecosistema.gateway.principal import (
    InvalidPrincipal,
    Principal,
    request_binding,
    sign_principal,
    verify_principal,
)

SECRET = b"s" * 32


def test_signed_principal_round_trips() -> None:
    value = sign_principal(Principal("u1", "admin", session_id="s1"), SECRET, now=1000)
    assert verify_principal(value, SECRET, now=1030) == Principal("u1", "admin", "user", "s1")


def test_principal_signed_with_another_secret_is_rejected() -> None:
    value = sign_principal(Principal("u1", "user"), b"other-secret", now=1000)
    with pytest.raises(InvalidPrincipal):
        verify_principal(value, SECRET, now=1000)


def test_principal_with_an_edited_payload_is_rejected() -> None:
    value = sign_principal(Principal("u1", "user"), SECRET, now=1000)
    forged = sign_principal(Principal("u1", "admin"), SECRET, now=1000)
    version, _, signature = value.split(".")
    tampered = f"{version}.{forged.split('.')[1]}.{signature}"
    with pytest.raises(InvalidPrincipal):
        verify_principal(tampered, SECRET, now=1000)


def test_expired_principal_is_rejected() -> None:
    value = sign_principal(Principal("u1", "user"), SECRET, ttl_seconds=60, now=1000)
    with pytest.raises(InvalidPrincipal, match="expired"):
        verify_principal(value, SECRET, now=1061)


@pytest.mark.parametrize("value", ["", "v1.abc", "v2.e30.AAAA", "v1.!!.??", "x" * 5000])
def test_malformed_principal_is_rejected(value: str) -> None:
    with pytest.raises(InvalidPrincipal):
        verify_principal(value, SECRET, now=1000)


def test_principal_bound_to_a_request_verifies_for_that_request() -> None:
    binding = request_binding("GET", "/api/v1/orders?limit=5", "req-1")
    value = sign_principal(Principal("u1", "customer"), SECRET, now=1000, binding=binding)
    assert verify_principal(value, SECRET, now=1000, binding=binding).sub == "u1"


@pytest.mark.parametrize(
    ("method", "target", "request_id"),
    [
        ("POST", "/api/v1/orders?limit=5", "req-1"),
        ("GET", "/api/v1/orders?limit=6", "req-1"),
        ("GET", "/api/v1/payments", "req-1"),
        ("GET", "/api/v1/orders?limit=5", "req-2"),
    ],
)
def test_principal_bound_to_a_request_is_rejected_on_another(
    method: str, target: str, request_id: str
) -> None:
    bound = request_binding("GET", "/api/v1/orders?limit=5", "req-1")
    value = sign_principal(Principal("u1", "customer"), SECRET, now=1000, binding=bound)
    with pytest.raises(InvalidPrincipal, match="another request"):
        verify_principal(
            value, SECRET, now=1000, binding=request_binding(method, target, request_id)
        )


def test_principal_bound_to_a_request_is_rejected_without_a_binding() -> None:
    bound = request_binding("GET", "/x", "r")
    value = sign_principal(Principal("u1", "customer"), SECRET, now=1000, binding=bound)
    with pytest.raises(InvalidPrincipal, match="another request"):
        verify_principal(value, SECRET, now=1000)


def test_request_binding_is_the_same_for_str_and_bytes_and_any_method_case() -> None:
    assert request_binding("get", "/a?b=1", "r1") == request_binding(b"GET", b"/a?b=1", b"r1")
