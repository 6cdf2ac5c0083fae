"""Who may do what: roles, permissions (RBAC) and ownership. The one policy every service uses.

Permissions are ``"<resource>:<action>"`` strings. ``*_own`` actions reach only resources the
principal owns; ``*_all`` actions (and other named bypasses) reach everyone's. The role table
below is the whole of RBAC: change access by editing data here, not by adding ``if role ==``
checks in services. A service that needs a new permission adds it to ``PERMISSIONS`` and to the
roles that hold it; ``require()`` refuses unknown permission strings, so a typo fails at import
time instead of silently denying everyone.

Ownership answers like absence: a principal that may not reach someone else's resource gets the
same ``NotFound`` a missing id gets, so ids cannot be probed.

API keys: a key carries the scopes it was created with, and its effective permissions are those
scopes intersected with its creator's *current* role permissions (``effective_permissions``).
A key can never do more than the person who made it, and demoting that person shrinks the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from ecosistema.platform.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from ecosistema.platform.auth import Principal


class Role(StrEnum):
    """The roles a user account can hold."""

    ADMIN = "admin"
    STAFF = "staff"
    SALES = "sales"
    CUSTOMER = "customer"


ROLES: frozenset[str] = frozenset(r.value for r in Role)

PERMISSIONS: frozenset[str] = frozenset(
    {
        # identity
        "users:read",
        "users:write",
        "users:manage",
        "sessions:manage",
        "audit:read",
        "api_keys:manage",
        "api_keys:write_own",
        # catalog
        "catalog:read",
        "catalog:write",
        "inventory:read",
        "inventory:write",
        # orders
        "orders:read_own",
        "orders:write_own",
        "orders:read_all",
        "orders:write_all",
        "orders:manage",
        # payments
        "payments:read_own",
        "payments:write_own",
        "payments:read_all",
        "payments:write_all",
        "payments:refund",
        "payments:reports",
        "invoices:read_own",
        "invoices:read_all",
        # sales
        "leads:read_own",
        "leads:read_all",
        "leads:write",
        "leads:assign",
        # marketing
        "marketing:read",
        "marketing:write",
        # documents
        "documents:read",
        "documents:write",
        "documents:generate",
        # analytics and ml
        "analytics:read",
        "ml:read",
        "ml:manage",
        # webhooks: a subscription receives every customer's orders, payments and stock events
        "webhooks:manage",
        # operations
        "system:manage",
    }
)

_CUSTOMER = frozenset(
    {
        "catalog:read",
        "orders:read_own",
        "orders:write_own",
        "payments:read_own",
        "payments:write_own",
        "invoices:read_own",
    }
)
_SALES = _CUSTOMER | {
    "api_keys:write_own",
    "inventory:read",
    "orders:read_all",
    "leads:read_own",
    "leads:write",
    "marketing:read",
    "marketing:write",
    "documents:read",
    "documents:write",
    "documents:generate",
}
_STAFF = _SALES | {
    "users:read",
    "catalog:write",
    "inventory:write",
    "orders:write_all",
    "orders:manage",
    "payments:read_all",
    "payments:write_all",
    "payments:refund",
    "payments:reports",
    "invoices:read_all",
    "leads:read_all",
    "leads:assign",
    "analytics:read",
    "ml:read",
    "ml:manage",
    "webhooks:manage",
}

ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        Role.ADMIN.value: PERMISSIONS,
        Role.STAFF.value: frozenset(_STAFF),
        Role.SALES.value: frozenset(_SALES),
        Role.CUSTOMER.value: _CUSTOMER,
    }
)

_NOTHING: frozenset[str] = frozenset()


def is_permission(permission: str) -> bool:
    """Whether ``permission`` is one the platform defines."""
    return permission in PERMISSIONS


def check_permission(permission: str) -> str:
    """Return ``permission`` if the platform defines it; else a ``ValueError`` names the fix."""
    if permission not in PERMISSIONS:
        raise ValueError(
            f"unknown permission {permission!r}: define it in ecosistema/platform/policy.py"
        )
    return permission


def permissions_for(role: str) -> frozenset[str]:
    """Every permission a role holds; an unknown role holds none."""
    return ROLE_PERMISSIONS.get(role, _NOTHING)


def effective_permissions(role: str, scopes: Iterable[str]) -> frozenset[str]:
    """What an API key may do: its scopes, limited to what its creator's role may do."""
    return permissions_for(role).intersection(scopes)


def grantable_scopes(role: str, requested: Iterable[str]) -> frozenset[str]:
    """The requested scopes a user of ``role`` may put on a new API key; raises on the rest."""
    wanted = frozenset(requested)
    unknown = sorted(wanted - PERMISSIONS)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    beyond = sorted(wanted - permissions_for(role))
    if beyond:
        raise ValueError(f"scopes beyond the {role} role: {', '.join(beyond)}")
    return wanted


def can(principal: Principal, permission: str) -> bool:
    """Whether the principal holds ``permission``."""
    return permission in principal.permissions


def ensure(principal: Principal, permission: str) -> None:
    """Raise ``Forbidden`` unless the principal holds ``permission``."""
    if permission not in principal.permissions:
        raise Forbidden(f"This action needs the {permission!r} permission.")


def ensure_any(principal: Principal, *permissions: str) -> None:
    """Raise ``Forbidden`` unless the principal holds at least one of ``permissions``."""
    held = principal.permissions
    if any(permission in held for permission in permissions):
        return
    if len(permissions) == 1:
        ensure(principal, permissions[0])
    named = ", ".join(repr(p) for p in permissions[:-1]) + f" or {permissions[-1]!r}"
    raise Forbidden(f"This action needs the {named} permission.")


def can_reach(principal: Principal, owner_id: str | None, *, bypass: str) -> bool:
    """Whether the principal may reach what ``owner_id`` owns: its own, or all via ``bypass``."""
    if bypass in principal.permissions:
        return True
    return owner_id is not None and owner_id == principal.subject


def ensure_owner(
    principal: Principal, owner_id: str | None, *, bypass: str, detail: str = "Not found."
) -> None:
    """Raise ``NotFound`` (the very answer a missing id gets) unless ``can_reach`` allows it.

    Pass the same ``detail`` the service uses for a missing resource, so the two answers are
    indistinguishable.
    """
    if not can_reach(principal, owner_id, bypass=bypass):
        raise NotFound(detail)


def owner_filter(principal: Principal, *, bypass: str) -> str | None:
    """The owner id a listing must be restricted to, or ``None`` when the principal sees all."""
    return None if bypass in principal.permissions else principal.subject
