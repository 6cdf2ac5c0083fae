"""Policy: the role table decides, ownership answers like absence, keys never exceed their maker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecosistema.platform.auth import Principal
from ecosistema.platform.errors import Forbidden, NotFound
from ecosistema.platform.policy import (
    PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    Role,
    can,
    can_reach,
    check_permission,
    effective_permissions,
    ensure,
    ensure_owner,
    grantable_scopes,
    owner_filter,
    permissions_for,
)

roles = st.sampled_from(sorted(ROLES))
permissions = st.sampled_from(sorted(PERMISSIONS))
ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=12)


def answer(exc: NotFound) -> tuple[object, ...]:
    return (exc.status, exc.type, exc.title, exc.detail, exc.headers, exc.extra)


def user(role: str, subject: str = "u1") -> Principal:
    return Principal.for_user(subject, role, "s1")


def test_the_four_roles_exist_and_every_role_has_a_table_row() -> None:
    assert {r.value for r in Role} == {"admin", "staff", "sales", "customer"} == set(ROLES)
    assert set(ROLE_PERMISSIONS) == ROLES


def test_every_granted_permission_is_a_defined_resource_action() -> None:
    for granted in ROLE_PERMISSIONS.values():
        assert granted <= PERMISSIONS
    for permission in PERMISSIONS:
        resource, _, action = permission.partition(":")
        assert resource and action and ":" not in action


def test_roles_nest_customer_within_sales_within_staff_within_admin() -> None:
    assert permissions_for("customer") < permissions_for("sales") < permissions_for("staff")
    assert permissions_for("staff") < permissions_for("admin") == PERMISSIONS


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        ("customer", "orders:read_own", True),
        ("customer", "orders:read_all", False),
        ("customer", "users:read", False),
        ("customer", "catalog:write", False),
        ("sales", "leads:read_own", True),
        ("sales", "leads:read_all", False),
        ("sales", "payments:refund", False),
        ("staff", "payments:refund", True),
        ("staff", "catalog:write", True),
        ("staff", "users:manage", False),
        ("staff", "audit:read", False),
        ("staff", "api_keys:manage", False),
        ("admin", "audit:read", True),
        ("admin", "users:manage", True),
    ],
)
def test_role_table_grants(role: str, permission: str, allowed: bool) -> None:
    assert can(user(role), permission) is allowed


@given(roles, permissions)
def test_can_answers_exactly_what_the_table_says(role: str, permission: str) -> None:
    assert can(user(role), permission) == (permission in ROLE_PERMISSIONS[role])


@given(permissions)
def test_admin_can_do_everything_defined(permission: str) -> None:
    assert can(user("admin"), permission)
    ensure(user("admin"), permission)


@given(roles, permissions)
def test_ensure_forbids_exactly_when_can_refuses(role: str, permission: str) -> None:
    principal = user(role)
    if can(principal, permission):
        ensure(principal, permission)
    else:
        with pytest.raises(Forbidden):
            ensure(principal, permission)


@given(st.text(max_size=20))
def test_unknown_role_holds_nothing(role: str) -> None:
    if role not in ROLES:
        assert permissions_for(role) == frozenset()


@given(me=ids, other=ids)
def test_customer_never_reaches_another_owners_resource(me: str, other: str) -> None:
    customer = user("customer", subject=me)
    if other == me:
        ensure_owner(customer, other, bypass="orders:read_all")
        return
    assert not can_reach(customer, other, bypass="orders:read_all")
    with pytest.raises(NotFound):
        ensure_owner(customer, other, bypass="orders:read_all")


@given(me=ids, other=ids)
def test_someone_elses_id_answers_exactly_like_a_missing_one(me: str, other: str) -> None:
    customer = user("customer", subject=me)
    detail = f"No order {other}."
    with pytest.raises(NotFound) as missing:
        ensure_owner(customer, None, bypass="orders:read_all", detail=detail)
    if other == me:
        return
    with pytest.raises(NotFound) as foreign:
        ensure_owner(customer, other, bypass="orders:read_all", detail=detail)
    assert answer(foreign.value) == answer(missing.value)


@given(role=roles, owner=ids)
def test_holders_of_the_bypass_reach_any_owner(role: str, owner: str) -> None:
    principal = user(role, subject="someone")
    reached = can_reach(principal, owner, bypass="orders:read_all")
    assert reached == ("orders:read_all" in ROLE_PERMISSIONS[role] or owner == "someone")


@given(role=roles)
def test_owner_filter_restricts_listings_unless_bypassed(role: str) -> None:
    principal = user(role, subject="me")
    expected = None if "leads:read_all" in ROLE_PERMISSIONS[role] else "me"
    assert owner_filter(principal, bypass="leads:read_all") == expected


@given(role=roles, scopes=st.frozensets(permissions | st.text(max_size=12)))
def test_api_key_permissions_never_exceed_scopes_or_creator_role(
    role: str, scopes: frozenset[str]
) -> None:
    granted = effective_permissions(role, scopes)
    assert granted <= scopes
    assert granted <= ROLE_PERMISSIONS[role]
    assert granted == scopes & ROLE_PERMISSIONS[role]


def test_api_key_principal_is_scoped_and_owned_by_its_creator() -> None:
    key = Principal.for_api_key("u7", "staff", {"catalog:write", "users:manage"}, api_key_id="k1")
    assert key.kind == "api_key" and key.subject == "u7" and key.api_key_id == "k1"
    assert key.has("catalog:write")
    assert not key.has("users:manage")
    assert not key.has("orders:read_all")


def test_demoted_creator_shrinks_their_keys() -> None:
    scopes = {"catalog:write", "catalog:read"}
    assert effective_permissions("staff", scopes) == scopes
    assert effective_permissions("customer", scopes) == {"catalog:read"}


def test_grantable_scopes_refuses_unknown_and_beyond_role() -> None:
    assert grantable_scopes("sales", ["leads:write"]) == {"leads:write"}
    with pytest.raises(ValueError, match="unknown"):
        grantable_scopes("admin", ["leads:fly"])
    with pytest.raises(ValueError, match="beyond"):
        grantable_scopes("sales", ["payments:refund"])


def test_check_permission_rejects_typos() -> None:
    assert check_permission("orders:read_all") == "orders:read_all"
    with pytest.raises(ValueError, match=r"policy\.py"):
        check_permission("orders:raed_all")
