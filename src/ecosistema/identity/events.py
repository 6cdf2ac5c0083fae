"""The events identity publishes to its outbox. Payloads carry ids and roles, never secrets or
personal data: a consumer that needs the email asks identity's client."""

from __future__ import annotations

from typing import Final

USER_REGISTERED: Final = "UserRegistered"
"""``{user_id, role, locale, registered_at}``"""

USER_EMAIL_VERIFIED: Final = "UserEmailVerified"
"""``{user_id, verified_at}``"""

USER_ROLE_CHANGED: Final = "UserRoleChanged"
"""``{user_id, old_role, new_role, changed_by}``"""

USER_DISABLED: Final = "UserDisabled"
"""``{user_id, disabled_by, disabled_at}``"""

PUBLISHED: Final = (USER_REGISTERED, USER_EMAIL_VERIFIED, USER_ROLE_CHANGED, USER_DISABLED)
