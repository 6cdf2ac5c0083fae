"""Identity use cases: accounts, sessions, MFA, profiles, roles, API keys, audit and signing keys.

Each use case owns its transaction. Failures that must leave a trace (a failed login, a replayed
refresh token) record it in a transaction of their own before the error is raised, so the
rollback of the use case does not erase the evidence.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import structlog
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import ValidationError
from sqlalchemy import Row, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecosistema.identity import domain, events
from ecosistema.identity.domain import AuditType, PasswordRejected, TokenPurpose, UserStatus
from ecosistema.identity.models import (
    api_keys,
    audit_events,
    profiles,
    recovery_codes,
    refresh_tokens,
    sessions,
    signing_keys,
    user_tokens,
    users,
)
from ecosistema.identity.schemas import (
    AdminUserUpdate,
    ApiKey,
    ApiKeyCreated,
    ApiKeyIdentity,
    AuditEvent,
    AuditPage,
    Profile,
    ProfileUpdate,
    SavedAddress,
    TokenResponse,
    TotpEnrollResponse,
    User,
    UserPage,
    valid_email,
)
from ecosistema.platform import auth, tokens
from ecosistema.platform.db import Statements, new_id, statements, utcnow
from ecosistema.platform.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ProblemError,
    TooManyRequests,
    Unauthorized,
    field_error,
    refuse_nulls,
)
from ecosistema.platform.pagination import decode_cursor, encode_cursor
from ecosistema.platform.policy import ROLES, Role, grantable_scopes
from ecosistema.platform.service import ServiceContext

log = structlog.get_logger(__name__)

EMAIL_INDEX_PURPOSE = "identity.user.email"
# One message for a wrong password, an unknown email, a disabled account and a lockout, so the
# answer never tells whether an account exists or is locked.
LOGIN_FAILED_DETAIL = "Sign-in failed: check your email and password, or try again later."
MFA_REQUIRED_TYPE = "mfa-required"
INVALID_CREDENTIALS_TYPE = "invalid-credentials"
INVALID_SECOND_FACTOR_TYPE = "invalid-second-factor"
# Said only once the password was right, which the mfa-required answer already tells.
WRONG_TOTP_DETAIL = (
    "The one-time code is wrong or was already used: enter the next code your authenticator "
    "app shows, or a recovery code."
)
# A right code whose time step was already used: typically signing in within the same 30 s
# step the code confirming enrolment (or the previous sign-in) came from.
REPLAYED_TOTP_DETAIL = (
    "This code was already used: wait for the next code your authenticator app shows (a new one "
    "every 30 seconds), or use a recovery code."
)
WRONG_RECOVERY_DETAIL = "The recovery code is wrong or was already used."
USER_NOT_FOUND = "No user with this id."
API_KEY_NOT_FOUND = "No API key with this id."
_API_KEY_TOUCH_SECONDS = 60
_FORGOT_PASSWORD_INTERVAL_SECONDS = 60
TOTP_ISSUER = "Ecosistema"
DEMO_PASSWORDS: dict[str, str] = {
    "admin": "demo-admin-ecosistema",
    "staff": "demo-staff-ecosistema",
    "sales": "demo-sales-ecosistema",
    "customer": "demo-customer-ecosistema",
    "wholesale": "demo-wholesale-ecosistema",
}
# The demo accounts by name (``<name>@demo.ecosistema.dev``): one per role, and a second customer
# whom the demo catalogue puts on its wholesale price list.
DEMO_ACCOUNTS: dict[str, Role] = {
    "admin": Role.ADMIN,
    "staff": Role.STAFF,
    "sales": Role.SALES,
    "customer": Role.CUSTOMER,
    "wholesale": Role.CUSTOMER,
}


@dataclass(frozen=True)
class RequestMeta:
    """Where a request came from, for the audit log and per-IP throttling."""

    ip: str | None = None
    user_agent: str | None = None


SYSTEM = RequestMeta(ip=None, user_agent="ecosistema")


# --- password hashing -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


def password_hasher(ctx: ServiceContext) -> PasswordHasher:
    """The argon2id hasher at the configured cost (OWASP's by default)."""
    s = ctx.settings
    return _hasher(
        s.password_hash_memory_kib, s.password_hash_time_cost, s.password_hash_parallelism
    )


@lru_cache(maxsize=8)
def _dummy_hash(memory_kib: int, time_cost: int, parallelism: int) -> str:
    hasher = _hasher(memory_kib, time_cost, parallelism)
    return hasher.hash(domain.new_secret_token())


async def hash_password(ctx: ServiceContext, password: str) -> str:
    """Hash an already policy-checked password off the event loop."""
    return await asyncio.to_thread(password_hasher(ctx).hash, password)


async def verify_password(ctx: ServiceContext, stored_hash: str | None, password: str) -> bool:
    """Check a password; with no stored hash a dummy one is verified so timing reveals nothing."""
    s = ctx.settings
    params = (s.password_hash_memory_kib, s.password_hash_time_cost, s.password_hash_parallelism)
    target = stored_hash if stored_hash else await asyncio.to_thread(_dummy_hash, *params)
    normalised = domain.normalise_password(password)
    try:
        ok = await asyncio.to_thread(password_hasher(ctx).verify, target, normalised)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return bool(ok) and stored_hash is not None


def _policy_checked(password: str, *, email: str | None, field: str) -> str:
    try:
        return domain.check_password(password, email=email)
    except PasswordRejected as exc:
        raise field_error(field, exc.message, exc.code) from exc


# --- small helpers ----------------------------------------------------------------------------


def email_index(ctx: ServiceContext, email: str) -> str:
    """The blind index an email is looked up by."""
    return ctx.cipher.blind_index(domain.normalise_email(email), purpose=EMAIL_INDEX_PURPOSE)


def _enc(
    ctx: ServiceContext, value: str | None, table: str, column: str, row_id: str
) -> str | None:
    if value is None:
        return None
    return ctx.cipher.encrypt(value, table=table, column=column, row_id=row_id)


def _dec(
    ctx: ServiceContext, token: str | None, table: str, column: str, row_id: str
) -> str | None:
    if token is None:
        return None
    return ctx.cipher.decrypt(token, table=table, column=column, row_id=row_id)


async def _audit(
    session: AsyncSession,
    type_: AuditType,
    meta: RequestMeta,
    *,
    actor_id: str | None = None,
    user_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        insert(audit_events).values(
            id=new_id(),
            occurred_at=utcnow(),
            type=type_.value,
            actor_id=actor_id,
            user_id=user_id,
            ip=meta.ip,
            user_agent=(meta.user_agent or "")[:512] or None,
            details=details or {},
        )
    )
    log.info("audit", type=type_.value, actor_id=actor_id, user_id=user_id, ip=meta.ip)


async def record_audit(
    ctx: ServiceContext,
    type_: AuditType,
    meta: RequestMeta,
    *,
    actor_id: str | None = None,
    user_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit event in its own transaction."""
    async with ctx.db.transaction() as session:
        await _audit(session, type_, meta, actor_id=actor_id, user_id=user_id, details=details)


_USER = select(users).where(users.c.id == bindparam("user_id"))
_PROFILE = select(profiles).where(profiles.c.user_id == bindparam("user_id"))
_USER_EMAIL = select(users.c.email_encrypted).where(users.c.id == bindparam("user_id"))


async def _user_row(session: AsyncSession, user_id: str) -> Row[Any] | None:
    return (await session.execute(_USER, {"user_id": user_id})).first()


def _user_view(
    ctx: ServiceContext, row: Mapping[Any, Any], profile: Mapping[Any, Any] | None
) -> User:
    uid = row["id"]
    email = _dec(ctx, row["email_encrypted"], "users", "email_encrypted", uid) or ""
    view = Profile()
    if profile is not None:
        addresses_json = _dec(
            ctx, profile["addresses_encrypted"], "profiles", "addresses_encrypted", uid
        )
        view = Profile(
            name=_dec(ctx, profile["name_encrypted"], "profiles", "name_encrypted", uid),
            phone=_dec(ctx, profile["phone_encrypted"], "profiles", "phone_encrypted", uid),
            addresses=[SavedAddress.model_validate(a) for a in json.loads(addresses_json or "[]")],
            locale=profile["locale"],
            preferences=dict(profile["preferences"] or {}),
        )
    return User(
        id=uid,
        email=email,
        role=row["role"],
        status=UserStatus(row["status"]),
        email_verified=row["email_verified_at"] is not None,
        mfa_enabled=row["totp_enabled_at"] is not None,
        created_at=row["created_at"],
        profile=view,
    )


async def _load_user(ctx: ServiceContext, tx: AsyncSession | Statements, user_id: str) -> User:
    """A user with their profile, read in an ORM session or, on the hot reads, in a driver
    transaction."""
    reading = statements(tx)
    row = await reading.row(_USER, user_id=user_id)
    if row is None:
        raise NotFound(USER_NOT_FOUND)
    return _user_view(ctx, row, await reading.row(_PROFILE, user_id=user_id))


def _seconds_left(ttl: float | None, fallback: int) -> int:
    return max(1, int(ttl + 0.999)) if ttl else fallback


# --- throttling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Throttle:
    key: str
    rule: domain.ThrottleRule


def _throttles(ctx: ServiceContext, account_index: str, ip: str | None) -> list[_Throttle]:
    s = ctx.settings
    out = [
        _Throttle(
            f"identity:login:acct:{account_index}",
            domain.ThrottleRule(
                threshold=s.lockout_threshold,
                delay_after=s.login_delay_after_failures,
                lockout_seconds=s.lockout_seconds,
            ),
        )
    ]
    if ip:
        out.append(
            _Throttle(
                f"identity:login:ip:{ip}",
                domain.ThrottleRule(
                    threshold=s.login_ip_lockout_threshold,
                    delay_after=max(1, s.login_ip_lockout_threshold // 2),
                    lockout_seconds=s.lockout_seconds,
                ),
            )
        )
    return out


async def _check_throttles(ctx: ServiceContext, throttles: Sequence[_Throttle]) -> int | None:
    """Seconds the caller must wait, or None when an attempt may be made now."""
    wait = 0
    for t in throttles:
        for suffix in (":lock", ":wait"):
            if await ctx.cache.get(t.key + suffix) is not None:
                left = _seconds_left(await ctx.cache.ttl(t.key + suffix), t.rule.lockout_seconds)
                wait = max(wait, left)
    return wait or None


async def _claim_attempt(ctx: ServiceContext, throttles: Sequence[_Throttle]) -> list[int] | int:
    """Count an attempt before its password is checked: the counts, or seconds to wait.

    Counting first closes a race: guesses sent at the same moment would otherwise all pass the
    throttle check while the first one's (deliberately slow) hash is still running, and so get
    far more tries than the lockout threshold allows. A successful attempt is refunded.
    """
    if (wait := await _check_throttles(ctx, throttles)) is not None:
        return wait
    counts: list[int] = []
    for t in throttles:
        counts.append(await ctx.cache.incr(t.key + ":fail", ttl=t.rule.lockout_seconds))
        if counts[-1] > t.rule.threshold:
            # Attempts already in flight use up the allowance; this one may not be made.
            await _refund_attempt(ctx, throttles[: len(counts)])
            return max(1, t.rule.delay_for(t.rule.threshold))
    return counts


async def _refund_attempt(ctx: ServiceContext, throttles: Sequence[_Throttle]) -> None:
    for t in throttles:
        await ctx.cache.incr(t.key + ":fail", -1, ttl=t.rule.lockout_seconds)


async def _settle_failure(
    ctx: ServiceContext, throttles: Sequence[_Throttle], counts: Sequence[int]
) -> bool:
    """Apply delay or lockout for a failed attempt already counted; True when it locked a key."""
    locked = False
    for t, failures in zip(throttles, counts, strict=True):
        if t.rule.locks(failures):
            await ctx.cache.set(t.key + ":lock", b"1", ttl=t.rule.lockout_seconds)
            await ctx.cache.delete(t.key + ":fail")
            locked = True
        elif (delay := t.rule.delay_for(failures)) > 0:
            await ctx.cache.set(t.key + ":wait", b"1", ttl=delay)
    return locked


async def _record_failure(ctx: ServiceContext, throttles: Sequence[_Throttle]) -> bool:
    """Count a failed attempt against every key; True when this failure locked one out."""
    counts = [await ctx.cache.incr(t.key + ":fail", ttl=t.rule.lockout_seconds) for t in throttles]
    return await _settle_failure(ctx, throttles, counts)


async def _clear_account_throttle(ctx: ServiceContext, account_index: str) -> None:
    key = f"identity:login:acct:{account_index}"
    await ctx.cache.delete(key + ":fail", key + ":wait", key + ":lock")


async def _guarded_password_check(
    ctx: ServiceContext, row: Row[Any], password: str, meta: RequestMeta, field: str
) -> None:
    """Verify a signed-in user's password under the same throttle as login (403 when wrong)."""
    m = row._mapping
    throttles = _throttles(ctx, m["email_index"], meta.ip)
    counts = await _claim_attempt(ctx, throttles)
    if isinstance(counts, int):
        raise TooManyRequests("Too many failed attempts; try again later.", retry_after=counts)
    if await verify_password(ctx, m["password_hash"], password):
        await _refund_attempt(ctx, throttles)
    else:
        await _settle_failure(ctx, throttles, counts)
        raise Forbidden(
            "The password is not correct.",
            type=INVALID_CREDENTIALS_TYPE,
            errors=[{"field": field, "message": "not correct", "code": "invalid_password"}],
        )


# --- signing keys -----------------------------------------------------------------------------


def _signing_key_from_row(ctx: ServiceContext, row: Row[Any]) -> tokens.SigningKey:
    m = row._mapping
    pem = ctx.cipher.decrypt(
        m["private_key_encrypted"],
        table="signing_keys",
        column="private_key_encrypted",
        row_id=m["id"],
    )
    return tokens.SigningKey.from_pem(m["id"], pem.encode("ascii"), m["created_at"])


async def _insert_signing_key(ctx: ServiceContext, session: AsyncSession) -> tokens.SigningKey:
    key = tokens.generate_signing_key(now=utcnow())
    await session.execute(
        insert(signing_keys).values(
            id=key.kid,
            algorithm=tokens.ALGORITHM,
            public_key_pem=_public_pem(key),
            private_key_encrypted=ctx.cipher.encrypt(
                key.private_pem().decode("ascii"),
                table="signing_keys",
                column="private_key_encrypted",
                row_id=key.kid,
            ),
            created_at=key.created_at,
            rotated_at=None,
        )
    )
    return key


def _public_pem(key: tokens.SigningKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


async def ensure_signing_key(ctx: ServiceContext) -> str:
    """Make sure an active signing key exists; returns its id."""
    async with ctx.db.transaction() as session:
        row = (
            await session.execute(
                select(signing_keys)
                .where(signing_keys.c.rotated_at.is_(None))
                .order_by(signing_keys.c.created_at.desc())
                .limit(1)
            )
        ).first()
        if row is not None:
            kid: str = row._mapping["id"]
            return kid
        key = await _insert_signing_key(ctx, session)
    log.info("signing_key_created", kid=key.kid)
    return key.kid


async def active_signing_key(ctx: ServiceContext) -> tokens.SigningKey:
    """The key new access tokens are signed with. Its id is re-read (one small query) at most
    every ``signing_key_recheck_seconds``, so a running server signs with a key rotated by another
    process soon after; the key itself is only decrypted again when the id changed."""
    cached: tuple[tokens.SigningKey, datetime] | None = ctx.extras.get("signing_key")
    now = utcnow()
    if cached is not None and cached[1] > now:
        return cached[0]
    async with ctx.db.read() as session:
        kid = await session.scalar(
            select(signing_keys.c.id)
            .where(signing_keys.c.rotated_at.is_(None))
            .order_by(signing_keys.c.created_at.desc())
            .limit(1)
        )
        key: tokens.SigningKey | None
        if kid is not None and cached is not None and cached[0].kid == kid:
            key = cached[0]
        else:
            row = (
                await session.execute(select(signing_keys).where(signing_keys.c.id == kid))
            ).first()
            key = _signing_key_from_row(ctx, row) if row is not None else None
    if key is None:
        await ensure_signing_key(ctx)
        return await active_signing_key(ctx)
    recheck = timedelta(seconds=ctx.settings.signing_key_recheck_seconds)
    ctx.extras["signing_key"] = (key, now + recheck)
    return key


async def rotate_signing_key(ctx: ServiceContext) -> str:
    """Create a new active signing key; old public keys stay published until tokens they signed
    have expired (rotation time + access token TTL + leeway). Returns the new key id."""
    async with ctx.db.transaction() as session:
        await session.execute(
            update(signing_keys)
            .where(signing_keys.c.rotated_at.is_(None))
            .values(rotated_at=utcnow())
        )
        key = await _insert_signing_key(ctx, session)
        await _audit(session, AuditType.SIGNING_KEY_ROTATED, SYSTEM, details={"kid": key.kid})
    ctx.extras.pop("signing_key", None)
    ctx.runtime.verifier.invalidate()
    log.info("signing_key_rotated", kid=key.kid)
    return key.kid


async def rotate_signing_key_when_due(ctx: ServiceContext) -> None:
    """Rotate the active key once it is older than ``signing_key_rotation_days``."""
    async with ctx.db.read() as session:
        newest = await session.scalar(
            select(func.max(signing_keys.c.created_at)).where(signing_keys.c.rotated_at.is_(None))
        )
    if newest is None:
        await ensure_signing_key(ctx)
        return
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    if utcnow() - newest >= timedelta(days=ctx.settings.signing_key_rotation_days):
        await rotate_signing_key(ctx)


async def jwks(ctx: ServiceContext) -> dict[str, list[dict[str, str]]]:
    """Every public key whose tokens may still be alive: active ones and recently rotated ones."""
    horizon = utcnow() - timedelta(
        seconds=ctx.settings.access_token_ttl_seconds + domain.JWKS_LEEWAY_SECONDS
    )
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(signing_keys)
                .where(
                    or_(signing_keys.c.rotated_at.is_(None), signing_keys.c.rotated_at > horizon)
                )
                .order_by(signing_keys.c.created_at.desc())
            )
        ).all()
    return tokens.build_jwks(_signing_key_from_row(ctx, r) for r in rows)


# --- registration and email verification -----------------------------------------------------


async def _mail(ctx: ServiceContext, to: str, subject: str, text: str) -> None:
    mailer = ctx.extras.get("mailer")
    if mailer is None:
        from ecosistema.platform.mail import create_mailer

        mailer = ctx.extras["mailer"] = create_mailer(ctx.settings)
    try:
        await mailer.send(to, subject, text)
    except Exception as exc:  # a mail outage must not fail the account change already committed
        log.warning("mail_failed", subject=subject, error=repr(exc))


async def _new_user_token(
    session: AsyncSession, user_id: str, purpose: TokenPurpose, ttl_seconds: int
) -> str:
    now = utcnow()
    await session.execute(
        update(user_tokens)
        .where(
            user_tokens.c.user_id == user_id,
            user_tokens.c.purpose == purpose.value,
            user_tokens.c.used_at.is_(None),
        )
        .values(used_at=now)
    )
    raw = domain.new_secret_token()
    await session.execute(
        insert(user_tokens).values(
            id=new_id(),
            user_id=user_id,
            purpose=purpose.value,
            token_hash=domain.hash_secret(raw),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            used_at=None,
        )
    )
    return raw


async def _consume_user_token(session: AsyncSession, raw: str, purpose: TokenPurpose) -> str | None:
    """Mark a valid, unused token used and return its user id; None for anything else."""
    now = utcnow()
    row = (
        await session.execute(
            select(user_tokens).where(
                user_tokens.c.token_hash == domain.hash_secret(raw),
                user_tokens.c.purpose == purpose.value,
            )
        )
    ).first()
    if row is None:
        return None
    m = row._mapping
    if m["used_at"] is not None or m["expires_at"] <= now:
        return None
    result = await session.execute(
        update(user_tokens)
        .where(user_tokens.c.id == m["id"], user_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    user_id: str = m["user_id"]
    return user_id


async def _verification_mail(ctx: ServiceContext, email: str, token: str) -> None:
    base = ctx.settings.public_url.rstrip("/")
    await _mail(
        ctx,
        email,
        "Verify your email address",
        "Welcome to Ecosistema.\n\n"
        f"Your verification token: {token}\n\n"
        "To verify your address, send the token to the Ecosistema API:\n\n"
        f"    POST {base}/api/v1/auth/verify-email\n"
        "    Content-Type: application/json\n\n"
        f'    {{"token": "{token}"}}\n\n'
        f"The token expires in {domain.EMAIL_VERIFICATION_TTL_SECONDS // 3600} hours.\n",
    )


async def _create_user(
    ctx: ServiceContext,
    session: AsyncSession,
    *,
    email: str,
    password_hash: str,
    role: str,
    verified: bool,
    name: str | None = None,
    locale: str | None = None,
) -> str:
    index = email_index(ctx, email)
    exists = await session.scalar(select(users.c.id).where(users.c.email_index == index))
    if exists is not None:
        raise Conflict("An account with this email address already exists.", type="email-taken")
    user_id = new_id()
    now = utcnow()
    await session.execute(
        insert(users).values(
            id=user_id,
            email_encrypted=_enc(
                ctx, domain.normalise_email(email), "users", "email_encrypted", user_id
            ),
            email_index=index,
            password_hash=password_hash,
            role=role,
            status=UserStatus.ACTIVE.value,
            email_verified_at=now if verified else None,
            password_changed_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    await session.execute(
        insert(profiles).values(
            user_id=user_id,
            name_encrypted=_enc(ctx, name, "profiles", "name_encrypted", user_id),
            phone_encrypted=None,
            addresses_encrypted=None,
            locale=locale or "en",
            preferences={},
            updated_at=now,
        )
    )
    await ctx.outbox.add(
        session,
        events.USER_REGISTERED,
        {
            "user_id": user_id,
            "role": role,
            "locale": locale or "en",
            "registered_at": now.isoformat(),
        },
    )
    return user_id


async def register(
    ctx: ServiceContext,
    *,
    email: str,
    password: str,
    name: str | None = None,
    locale: str | None = None,
    meta: RequestMeta = SYSTEM,
) -> User:
    """Create a customer account and mail it a verification token."""
    normalised = _policy_checked(password, email=email, field="password")
    password_hash = await hash_password(ctx, normalised)
    async with ctx.db.transaction() as session:
        user_id = await _create_user(
            ctx,
            session,
            email=email,
            password_hash=password_hash,
            role=Role.CUSTOMER.value,
            verified=False,
            name=name,
            locale=locale,
        )
        token = await _new_user_token(
            session, user_id, TokenPurpose.VERIFY_EMAIL, domain.EMAIL_VERIFICATION_TTL_SECONDS
        )
        await _audit(session, AuditType.USER_REGISTERED, meta, actor_id=user_id, user_id=user_id)
        user = await _load_user(ctx, session, user_id)
    await _verification_mail(ctx, user.email, token)
    return user


async def resend_verification(ctx: ServiceContext, *, email: str) -> None:
    """Mail a new verification token to an unverified account; silent for anything else."""
    index = email_index(ctx, email)
    if not await ctx.cache.add(
        f"identity:verify-mail:{index}", b"1", ttl=_FORGOT_PASSWORD_INTERVAL_SECONDS
    ):
        return
    async with ctx.db.transaction() as session:
        row = (await session.execute(select(users).where(users.c.email_index == index))).first()
        if row is None or row._mapping["email_verified_at"] is not None:
            return
        token = await _new_user_token(
            session,
            row._mapping["id"],
            TokenPurpose.VERIFY_EMAIL,
            domain.EMAIL_VERIFICATION_TTL_SECONDS,
        )
    await _verification_mail(ctx, domain.normalise_email(email), token)


async def verify_email(ctx: ServiceContext, *, token: str, meta: RequestMeta = SYSTEM) -> User:
    """Mark the email of the token's account verified."""
    async with ctx.db.transaction() as session:
        user_id = await _consume_user_token(session, token, TokenPurpose.VERIFY_EMAIL)
        if user_id is None:
            raise field_error(
                "token", "The verification token is invalid or has expired.", "invalid_token"
            )
        now = utcnow()
        await session.execute(
            update(users)
            .where(users.c.id == user_id, users.c.email_verified_at.is_(None))
            .values(email_verified_at=now, updated_at=now)
        )
        await ctx.outbox.add(
            session,
            events.USER_EMAIL_VERIFIED,
            {"user_id": user_id, "verified_at": now.isoformat()},
        )
        await _audit(session, AuditType.EMAIL_VERIFIED, meta, actor_id=user_id, user_id=user_id)
        return await _load_user(ctx, session, user_id)


# --- sessions and tokens ----------------------------------------------------------------------


async def _new_refresh_token(
    ctx: ServiceContext, session: AsyncSession, session_id: str, expires_at: datetime
) -> str:
    raw = domain.new_secret_token()
    await session.execute(
        insert(refresh_tokens).values(
            id=new_id(),
            session_id=session_id,
            token_hash=domain.hash_secret(raw),
            issued_at=utcnow(),
            expires_at=expires_at,
            rotated_at=None,
        )
    )
    return raw


async def _token_response(
    ctx: ServiceContext,
    *,
    user_id: str,
    role: str,
    session_id: str,
    refresh: str,
    refresh_expires_at: datetime,
) -> TokenResponse:
    key = await active_signing_key(ctx)
    s = ctx.settings
    access = tokens.encode_access_token(
        key,
        subject=user_id,
        role=role,
        session_id=session_id,
        issuer=s.jwt_issuer,
        audience=s.jwt_audience,
        ttl_seconds=s.access_token_ttl_seconds,
    )
    return TokenResponse(
        access_token=access,
        refresh_token=refresh,
        expires_in=s.access_token_ttl_seconds,
        refresh_expires_in=max(0, int((refresh_expires_at - utcnow()).total_seconds())),
    )


async def _start_session(
    ctx: ServiceContext, session: AsyncSession, user_id: str, meta: RequestMeta
) -> tuple[str, str, datetime]:
    now = utcnow()
    session_id = new_id()
    expires_at = now + timedelta(seconds=ctx.settings.refresh_token_ttl_seconds)
    await session.execute(
        insert(sessions).values(
            id=session_id,
            user_id=user_id,
            created_at=now,
            last_used_at=now,
            expires_at=expires_at,
            revoked_at=None,
            revoked_reason=None,
            ip=meta.ip,
            user_agent=(meta.user_agent or "")[:512] or None,
        )
    )
    refresh = await _new_refresh_token(ctx, session, session_id, expires_at)
    return session_id, refresh, expires_at


async def _revoke_sessions(
    ctx: ServiceContext,
    session: AsyncSession,
    *,
    user_id: str,
    reason: str,
    only: str | None = None,
    keep: str | None = None,
) -> list[str]:
    """Revoke a user's live sessions (one, all, or all but one); returns their ids."""
    conditions = [sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None)]
    if only is not None:
        conditions.append(sessions.c.id == only)
    if keep is not None:
        conditions.append(sessions.c.id != keep)
    ids = list((await session.scalars(select(sessions.c.id).where(*conditions))).all())
    if ids:
        await session.execute(
            update(sessions)
            .where(sessions.c.id.in_(ids))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
    return ids


async def _announce_revoked(ctx: ServiceContext, session_ids: Sequence[str]) -> None:
    """Record ended sessions in the shared cache for as long as their access tokens could live,
    so verifiers that consult it reject those tokens before they expire."""
    ttl = ctx.settings.access_token_ttl_seconds + domain.JWKS_LEEWAY_SECONDS
    for sid in session_ids:
        await ctx.cache.set(auth.REVOKED_SESSION_KEY.format(session_id=sid), b"1", ttl=ttl)


async def login(
    ctx: ServiceContext,
    *,
    email: str,
    password: str,
    mfa_code: str | None = None,
    recovery_code: str | None = None,
    meta: RequestMeta = SYSTEM,
) -> TokenResponse:
    """Sign in with email and password (and a TOTP or recovery code once MFA is on)."""
    index = email_index(ctx, email)
    throttles = _throttles(ctx, index, meta.ip)
    counts = await _claim_attempt(ctx, throttles)
    if isinstance(counts, int):
        await record_audit(ctx, AuditType.LOGIN_LOCKED, meta, details={"retry_after": counts})
        raise TooManyRequests(LOGIN_FAILED_DETAIL, retry_after=counts)
    claimed: list[int] = counts

    async with ctx.db.read() as session:
        row = (await session.execute(select(users).where(users.c.email_index == index))).first()
    m = row._mapping if row is not None else None
    password_ok = await verify_password(ctx, m["password_hash"] if m else None, password)

    async def fail(
        reason: str,
        *,
        counted: bool = True,
        detail: str = LOGIN_FAILED_DETAIL,
        type_: str = INVALID_CREDENTIALS_TYPE,
    ) -> ProblemError:
        if counted:
            locked = await _settle_failure(ctx, throttles, claimed)
        else:
            locked = await _record_failure(ctx, throttles)
        user_id = m["id"] if m else None
        await record_audit(
            ctx, AuditType.LOGIN_FAILED, meta, user_id=user_id, details={"reason": reason}
        )
        if locked:
            await record_audit(ctx, AuditType.LOGIN_LOCKED, meta, user_id=user_id)
        return Unauthorized(detail, type=type_)

    if m is None:
        raise await fail("unknown_account")
    if not password_ok:
        raise await fail("wrong_password")
    if m["status"] != UserStatus.ACTIVE.value:
        raise await fail("disabled")
    # The password was right: this attempt no longer counts (a wrong second factor counts anew).
    await _refund_attempt(ctx, throttles)

    user_id: str = m["id"]
    async with ctx.db.transaction() as session:
        used_recovery = False
        outcome: SecondFactorOutcome = "accepted"
        if m["totp_enabled_at"] is not None:
            if not mfa_code and not recovery_code:
                raise Unauthorized(
                    "A one-time code from your authenticator app (or a recovery code) is needed.",
                    type=MFA_REQUIRED_TYPE,
                    title="Second factor required",
                )
            outcome = await _accept_second_factor(ctx, session, m, mfa_code, recovery_code)
            if outcome != "accepted":
                second_factor_failed = True
            else:
                second_factor_failed = False
                used_recovery = not mfa_code
        else:
            second_factor_failed = False
        if not second_factor_failed:
            if ctx.settings.require_verified_email and m["email_verified_at"] is None:
                raise Forbidden(
                    "Verify your email address before signing in.", type="email-not-verified"
                )
            if password_hasher(ctx).check_needs_rehash(m["password_hash"]):
                new_hash = await hash_password(ctx, domain.normalise_password(password))
                await session.execute(
                    update(users).where(users.c.id == user_id).values(password_hash=new_hash)
                )
            session_id, refresh, expires_at = await _start_session(ctx, session, user_id, meta)
            if used_recovery:
                await _audit(
                    session, AuditType.RECOVERY_CODE_USED, meta, actor_id=user_id, user_id=user_id
                )
            await _audit(
                session,
                AuditType.LOGIN_SUCCEEDED,
                meta,
                actor_id=user_id,
                user_id=user_id,
                details={"session_id": session_id, "mfa": m["totp_enabled_at"] is not None},
            )
    if second_factor_failed:
        raise await fail(
            "wrong_second_factor",
            counted=False,
            detail=(
                WRONG_RECOVERY_DETAIL
                if not mfa_code
                else REPLAYED_TOTP_DETAIL
                if outcome == "replayed"
                else WRONG_TOTP_DETAIL
            ),
            type_=INVALID_SECOND_FACTOR_TYPE,
        )
    await _clear_account_throttle(ctx, index)
    return await _token_response(
        ctx,
        user_id=user_id,
        role=m["role"],
        session_id=session_id,
        refresh=refresh,
        refresh_expires_at=expires_at,
    )


# "replayed": a right TOTP code for a time step already used, told apart so the answer can say
# to wait for the next code; recovery codes are only ever accepted or refused.
SecondFactorOutcome = Literal["accepted", "refused", "replayed"]


async def _accept_second_factor(
    ctx: ServiceContext,
    session: AsyncSession,
    m: Any,
    mfa_code: str | None,
    recovery_code: str | None,
) -> SecondFactorOutcome:
    user_id = m["id"]
    if mfa_code:
        fresh = (
            await session.execute(
                select(users.c.totp_secret_encrypted, users.c.totp_last_step).where(
                    users.c.id == user_id
                )
            )
        ).one()
        secret = _dec(ctx, fresh.totp_secret_encrypted, "users", "totp_secret_encrypted", user_id)
        if secret is None:
            return "refused"
        now = utcnow()
        step = domain.match_totp(secret, mfa_code, at=now, last_used_step=fresh.totp_last_step)
        if step is None:
            used = domain.totp_code_was_used(
                secret, mfa_code, at=now, last_used_step=fresh.totp_last_step
            )
            return "replayed" if used else "refused"
        result = await session.execute(
            update(users)
            .where(
                users.c.id == user_id,
                or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step),
            )
            .values(totp_last_step=step)
        )
        # No row: a concurrent sign-in used this step (or a later one) first.
        return "accepted" if result.rowcount == 1 else "replayed"  # type: ignore[attr-defined]
    if recovery_code:
        rows = (
            await session.execute(
                select(recovery_codes.c.id, recovery_codes.c.code_hash).where(
                    recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None)
                )
            )
        ).all()
        match = None
        for r in rows:
            if domain.secret_matches(domain.normalise_recovery_code(recovery_code), r.code_hash):
                match = r.id
        if match is None:
            return "refused"
        result = await session.execute(
            update(recovery_codes)
            .where(recovery_codes.c.id == match, recovery_codes.c.used_at.is_(None))
            .values(used_at=utcnow())
        )
        return "accepted" if result.rowcount == 1 else "refused"  # type: ignore[attr-defined]
    return "refused"


async def refresh(
    ctx: ServiceContext, *, refresh_token: str, meta: RequestMeta = SYSTEM
) -> TokenResponse:
    """Exchange a refresh token for new ones; a token used twice revokes its session."""
    invalid = Unauthorized(
        "The refresh token is invalid or has expired.", type="invalid-refresh-token"
    )
    now = utcnow()
    reused: tuple[str, str] | None = None
    async with ctx.db.transaction() as session:
        row = (
            await session.execute(
                select(
                    refresh_tokens,
                    sessions.c.user_id,
                    sessions.c.revoked_at.label("session_revoked_at"),
                    sessions.c.expires_at.label("session_expires_at"),
                )
                .join(sessions, sessions.c.id == refresh_tokens.c.session_id)
                .where(refresh_tokens.c.token_hash == domain.hash_secret(refresh_token))
            )
        ).first()
        if row is None:
            raise invalid
        t = row._mapping
        if (
            t["session_revoked_at"] is not None
            or t["session_expires_at"] <= now
            or t["expires_at"] <= now
        ):
            raise invalid
        claimed = await session.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.id == t["id"], refresh_tokens.c.rotated_at.is_(None))
            .values(rotated_at=now)
        )
        if t["rotated_at"] is not None or claimed.rowcount != 1:  # type: ignore[attr-defined]
            # A rotated token came back: it was stolen, or the client is confused. Either way the
            # whole family (the session) ends, for the thief and the owner alike.
            await _revoke_sessions(
                ctx, session, user_id=t["user_id"], reason="refresh_reused", only=t["session_id"]
            )
            await _audit(
                session,
                AuditType.REFRESH_REUSED,
                meta,
                user_id=t["user_id"],
                details={"session_id": t["session_id"]},
            )
            reused = (t["user_id"], t["session_id"])
        else:
            user = await _user_row(session, t["user_id"])
            if user is None or user._mapping["status"] != UserStatus.ACTIVE.value:
                raise invalid
            await session.execute(
                update(sessions).where(sessions.c.id == t["session_id"]).values(last_used_at=now)
            )
            new_refresh = await _new_refresh_token(
                ctx, session, t["session_id"], t["session_expires_at"]
            )
            role = user._mapping["role"]
    if reused is not None:
        await _announce_revoked(ctx, [reused[1]])
        raise invalid
    return await _token_response(
        ctx,
        user_id=t["user_id"],
        role=role,
        session_id=t["session_id"],
        refresh=new_refresh,
        refresh_expires_at=t["session_expires_at"],
    )


async def logout(
    ctx: ServiceContext, *, user_id: str, session_id: str, meta: RequestMeta = SYSTEM
) -> None:
    """End one session: its refresh token stops working, and so does its access token."""
    async with ctx.db.transaction() as session:
        ids = await _revoke_sessions(
            ctx, session, user_id=user_id, reason="logout", only=session_id
        )
        await _audit(
            session,
            AuditType.LOGOUT,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"session_id": session_id},
        )
    await _announce_revoked(ctx, ids)


async def logout_everywhere(
    ctx: ServiceContext, *, user_id: str, meta: RequestMeta = SYSTEM
) -> int:
    """End every session of the user; returns how many were live."""
    async with ctx.db.transaction() as session:
        ids = await _revoke_sessions(ctx, session, user_id=user_id, reason="logout_all")
        await _audit(
            session,
            AuditType.LOGOUT_ALL,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"sessions": len(ids)},
        )
    await _announce_revoked(ctx, ids)
    return len(ids)


async def session_is_active(ctx: ServiceContext, session_id: str) -> bool:
    """Whether a session exists and has been neither revoked nor expired."""
    async with ctx.db.read() as session:
        return await _session_live(session, session_id)


async def _session_live(session: AsyncSession, session_id: str) -> bool:
    row = (
        await session.execute(
            select(sessions.c.revoked_at, sessions.c.expires_at).where(sessions.c.id == session_id)
        )
    ).first()
    return row is not None and row.revoked_at is None and row.expires_at > utcnow()


async def get_me(ctx: ServiceContext, *, principal: auth.Principal) -> User:
    """The caller with their profile; a user's token counts only while its session is live.

    One read transaction for both, since this is the most frequent authenticated request."""
    if principal.kind != "user":
        # An API key acts for its creator within its scopes; none of them reveals the creator's
        # personal data.
        raise Forbidden("This needs a signed-in user, not an API key.", type="user-required")
    async with ctx.db.read() as session:
        if principal.session_id is None or not await _session_live(session, principal.session_id):
            raise Unauthorized("The session has ended; sign in again.", type="session-ended")
        return await _load_user(ctx, session, principal.subject)


# --- passwords --------------------------------------------------------------------------------


async def change_password(
    ctx: ServiceContext,
    *,
    user_id: str,
    session_id: str | None,
    current_password: str,
    new_password: str,
    meta: RequestMeta = SYSTEM,
) -> None:
    """Change the password; every other session of the user ends."""
    async with ctx.db.read() as session:
        row = await _user_row(session, user_id)
    if row is None:
        raise NotFound(USER_NOT_FOUND)
    await _guarded_password_check(ctx, row, current_password, meta, "current_password")
    email = _dec(ctx, row._mapping["email_encrypted"], "users", "email_encrypted", user_id)
    normalised = _policy_checked(new_password, email=email, field="new_password")
    new_hash = await hash_password(ctx, normalised)
    async with ctx.db.transaction() as session:
        now = utcnow()
        await session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(password_hash=new_hash, password_changed_at=now, updated_at=now)
        )
        ids = await _revoke_sessions(
            ctx, session, user_id=user_id, reason="password_changed", keep=session_id
        )
        await _audit(
            session,
            AuditType.PASSWORD_CHANGED,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"sessions_ended": len(ids)},
        )
    await _announce_revoked(ctx, ids)
    await _clear_account_throttle(ctx, row._mapping["email_index"])
    if email:
        await _mail(
            ctx,
            email,
            "Your password was changed",
            "The password of your Ecosistema account was just changed. If this was not you, "
            "reset your password now and contact support.\n",
        )


async def forgot_password(ctx: ServiceContext, *, email: str, meta: RequestMeta = SYSTEM) -> None:
    """Mail a reset token when the account exists; the caller answers the same either way."""
    index = email_index(ctx, email)
    if not await ctx.cache.add(
        f"identity:reset-mail:{index}", b"1", ttl=_FORGOT_PASSWORD_INTERVAL_SECONDS
    ):
        return
    async with ctx.db.transaction() as session:
        row = (await session.execute(select(users).where(users.c.email_index == index))).first()
        if row is None or row._mapping["status"] != UserStatus.ACTIVE.value:
            return
        user_id = row._mapping["id"]
        token = await _new_user_token(
            session, user_id, TokenPurpose.RESET_PASSWORD, domain.PASSWORD_RESET_TTL_SECONDS
        )
        await _audit(session, AuditType.PASSWORD_RESET_REQUESTED, meta, user_id=user_id)
    base = ctx.settings.public_url.rstrip("/")
    await _mail(
        ctx,
        domain.normalise_email(email),
        "Reset your password",
        "Someone asked to reset the password of your Ecosistema account. If it was not you, "
        "ignore this message.\n\n"
        f"Your reset token: {token}\n\n"
        "To choose a new password, send the token with it to the Ecosistema API:\n\n"
        f"    POST {base}/api/v1/auth/password/reset\n"
        "    Content-Type: application/json\n\n"
        f'    {{"token": "{token}", "new_password": "<your new password>"}}\n\n'
        f"The token expires in {domain.PASSWORD_RESET_TTL_SECONDS // 60} minutes.\n",
    )


async def reset_password(
    ctx: ServiceContext, *, token: str, new_password: str, meta: RequestMeta = SYSTEM
) -> None:
    """Set a new password with a reset token; every session of the user ends."""
    normalised = domain.normalise_password(new_password)
    new_hash: str | None = None
    async with ctx.db.transaction() as session:
        user_id = await _consume_user_token(session, token, TokenPurpose.RESET_PASSWORD)
        if user_id is None:
            raise field_error(
                "token", "The reset token is invalid or has expired.", "invalid_token"
            )
        row = await _user_row(session, user_id)
        assert row is not None
        email = _dec(ctx, row._mapping["email_encrypted"], "users", "email_encrypted", user_id)
        normalised = _policy_checked(new_password, email=email, field="new_password")
        new_hash = await hash_password(ctx, normalised)
        now = utcnow()
        await session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(password_hash=new_hash, password_changed_at=now, updated_at=now)
        )
        ids = await _revoke_sessions(ctx, session, user_id=user_id, reason="password_reset")
        await _audit(
            session,
            AuditType.PASSWORD_RESET,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"sessions_ended": len(ids)},
        )
    await _announce_revoked(ctx, ids)
    await _clear_account_throttle(ctx, row._mapping["email_index"])


# --- MFA --------------------------------------------------------------------------------------


async def enroll_totp(
    ctx: ServiceContext, *, user_id: str, meta: RequestMeta = SYSTEM
) -> TotpEnrollResponse:
    """Start TOTP enrolment: a new secret, active only once a code from it is confirmed."""
    secret = domain.new_totp_secret()
    async with ctx.db.transaction() as session:
        row = await _user_row(session, user_id)
        if row is None:
            raise NotFound(USER_NOT_FOUND)
        if row._mapping["totp_enabled_at"] is not None:
            raise Conflict(
                "Two-factor authentication is already on; disable it first.",
                type="mfa-already-enabled",
            )
        await session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                totp_pending_secret_encrypted=_enc(
                    ctx, secret, "users", "totp_pending_secret_encrypted", user_id
                ),
                updated_at=utcnow(),
            )
        )
        email = (
            _dec(ctx, row._mapping["email_encrypted"], "users", "email_encrypted", user_id)
            or user_id
        )
        await _audit(
            session, AuditType.MFA_ENROLLMENT_STARTED, meta, actor_id=user_id, user_id=user_id
        )
    return TotpEnrollResponse(
        secret=secret, otpauth_uri=domain.totp_uri(secret, account=email, issuer=TOTP_ISSUER)
    )


async def _replace_recovery_codes(session: AsyncSession, user_id: str) -> list[str]:
    await session.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
    codes = domain.new_recovery_codes()
    now = utcnow()
    await session.execute(
        insert(recovery_codes),
        [
            {
                "id": new_id(),
                "user_id": user_id,
                "code_hash": domain.hash_secret(domain.normalise_recovery_code(c)),
                "created_at": now,
                "used_at": None,
            }
            for c in codes
        ],
    )
    return codes


async def confirm_totp(
    ctx: ServiceContext, *, user_id: str, code: str, meta: RequestMeta = SYSTEM
) -> list[str]:
    """Turn TOTP on with a code from the pending secret; returns fresh recovery codes."""
    async with ctx.db.transaction() as session:
        row = await _user_row(session, user_id)
        if row is None:
            raise NotFound(USER_NOT_FOUND)
        m = row._mapping
        if m["totp_enabled_at"] is not None:
            raise Conflict("Two-factor authentication is already on.", type="mfa-already-enabled")
        pending = _dec(
            ctx,
            m["totp_pending_secret_encrypted"],
            "users",
            "totp_pending_secret_encrypted",
            user_id,
        )
        if pending is None:
            raise Conflict("Start enrolment first.", type="mfa-not-enrolling")
        step = domain.match_totp(pending, code, at=utcnow(), last_used_step=None)
        if step is None:
            raise field_error("code", "The code is not valid for this secret.", "invalid_code")
        now = utcnow()
        await session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                totp_secret_encrypted=_enc(ctx, pending, "users", "totp_secret_encrypted", user_id),
                totp_pending_secret_encrypted=None,
                totp_enabled_at=now,
                totp_last_step=step,
                updated_at=now,
            )
        )
        codes = await _replace_recovery_codes(session, user_id)
        await _audit(
            session,
            AuditType.MFA_ENABLED,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"method": "totp"},
        )
    return codes


async def disable_totp(
    ctx: ServiceContext,
    *,
    user_id: str,
    password: str,
    code: str | None,
    recovery_code: str | None,
    meta: RequestMeta = SYSTEM,
) -> None:
    """Turn TOTP off; needs the password and a current code (or a recovery code)."""
    async with ctx.db.read() as session:
        row = await _user_row(session, user_id)
    if row is None:
        raise NotFound(USER_NOT_FOUND)
    if row._mapping["totp_enabled_at"] is None:
        raise Conflict("Two-factor authentication is not on.", type="mfa-not-enabled")
    await _guarded_password_check(ctx, row, password, meta, "password")
    async with ctx.db.transaction() as session:
        if not (code or recovery_code) or (
            await _accept_second_factor(ctx, session, row._mapping, code, recovery_code)
            != "accepted"
        ):
            # A wrong code counts like a wrong password, or a stolen session plus the password
            # could try codes until one fits and then switch the second factor off.
            await _record_failure(ctx, _throttles(ctx, row._mapping["email_index"], meta.ip))
            raise field_error(
                "code", "A valid one-time or recovery code is needed.", "invalid_code"
            )
        await session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                totp_secret_encrypted=None,
                totp_pending_secret_encrypted=None,
                totp_enabled_at=None,
                totp_last_step=None,
                updated_at=utcnow(),
            )
        )
        await session.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
        await _audit(session, AuditType.MFA_DISABLED, meta, actor_id=user_id, user_id=user_id)


# --- profiles and administration --------------------------------------------------------------


async def get_user(ctx: ServiceContext, *, user_id: str) -> User:
    """One user with their profile, decrypted."""
    async with ctx.db.driver_read() as tx:
        return await _load_user(ctx, tx, user_id)


async def get_user_email(ctx: ServiceContext, *, user_id: str) -> str | None:
    """A user's email address, decrypted (the one field other services ask for); None when
    there is no such user."""
    async with ctx.db.driver_read() as tx:
        row = await tx.row(_USER_EMAIL, user_id=user_id)
    if row is None:
        return None
    return _dec(ctx, row["email_encrypted"], "users", "email_encrypted", user_id) or None


async def find_user_by_email(ctx: ServiceContext, *, email: str) -> User | None:
    """The user with this email address, if any."""
    async with ctx.db.read() as session:
        uid = await session.scalar(
            select(users.c.id).where(users.c.email_index == email_index(ctx, email))
        )
        return await _load_user(ctx, session, uid) if uid else None


async def update_profile(
    ctx: ServiceContext, *, user_id: str, changes: ProfileUpdate, meta: RequestMeta = SYSTEM
) -> User:
    """Change the fields of the user's own profile that the request sets. ``null`` clears the
    name or the phone; the addresses, the locale and the preferences are cleared with ``[]``, a
    default or ``{}``, and ``null`` for them is a 422 rather than a guess."""
    refuse_nulls(changes, ("addresses", "locale", "preferences"))
    fields = changes.model_fields_set
    values: dict[str, Any] = {"updated_at": utcnow()}
    if "name" in fields:
        values["name_encrypted"] = _enc(ctx, changes.name, "profiles", "name_encrypted", user_id)
    if "phone" in fields:
        values["phone_encrypted"] = _enc(ctx, changes.phone, "profiles", "phone_encrypted", user_id)
    if "addresses" in fields:
        payload = json.dumps([a.model_dump() for a in changes.addresses or ()])
        values["addresses_encrypted"] = _enc(
            ctx, payload, "profiles", "addresses_encrypted", user_id
        )
    if "locale" in fields and changes.locale is not None:
        values["locale"] = changes.locale
    if "preferences" in fields:
        preferences = changes.preferences or {}
        problem = domain.preferences_problem(preferences)
        if problem is not None:
            path, message = problem
            field = f"preferences.{path}" if path else "preferences"
            raise field_error(field, message, "invalid_preferences")
        values["preferences"] = preferences
    async with ctx.db.transaction() as session:
        if await _user_row(session, user_id) is None:
            raise NotFound(USER_NOT_FOUND)
        await session.execute(
            update(profiles).where(profiles.c.user_id == user_id).values(**values)
        )
        await _audit(
            session,
            AuditType.PROFILE_UPDATED,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"fields": sorted(fields)},
        )
        return await _load_user(ctx, session, user_id)


async def list_users(
    ctx: ServiceContext,
    *,
    role: str | None = None,
    status: str | None = None,
    email: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> UserPage:
    """Users, newest first, filtered by role, status and exact email."""
    conditions = []
    if role:
        conditions.append(users.c.role == role)
    if status:
        conditions.append(users.c.status == status)
    if email:
        conditions.append(users.c.email_index == email_index(ctx, email))
    where = and_(True, *conditions)
    async with ctx.db.read() as session:
        total = int(await session.scalar(select(func.count()).select_from(users).where(where)) or 0)
        rows = (
            await session.execute(
                select(users)
                .where(where)
                .order_by(users.c.created_at.desc(), users.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
        ids = [r._mapping["id"] for r in rows]
        profile_rows = (
            {
                p._mapping["user_id"]: p._mapping
                for p in (
                    await session.execute(select(profiles).where(profiles.c.user_id.in_(ids)))
                ).all()
            }
            if ids
            else {}
        )
    items = [_user_view(ctx, r._mapping, profile_rows.get(r._mapping["id"])) for r in rows]
    return UserPage(items=items, total=total, limit=limit, offset=offset)


async def admin_update_user(
    ctx: ServiceContext,
    *,
    actor_id: str,
    user_id: str,
    changes: AdminUserUpdate,
    meta: RequestMeta = SYSTEM,
) -> User:
    """Change a user's role or status; disabling ends every session of the user."""
    revoked: list[str] = []
    async with ctx.db.transaction() as session:
        row = await _user_row(session, user_id)
        if row is None:
            raise NotFound(USER_NOT_FOUND)
        m = row._mapping
        if user_id == actor_id and (
            (changes.role is not None and changes.role != m["role"])
            or changes.status == UserStatus.DISABLED
        ):
            raise Conflict(
                "Administrators cannot demote or disable themselves.", type="self-administration"
            )
        now = utcnow()
        if changes.role is not None and changes.role != m["role"]:
            if changes.role not in ROLES:
                raise field_error("role", "Unknown role.")
            await session.execute(
                update(users).where(users.c.id == user_id).values(role=changes.role, updated_at=now)
            )
            payload = {
                "user_id": user_id,
                "old_role": m["role"],
                "new_role": changes.role,
                "changed_by": actor_id,
            }
            await ctx.outbox.add(session, events.USER_ROLE_CHANGED, payload)
            await _audit(
                session,
                AuditType.ROLE_CHANGED,
                meta,
                actor_id=actor_id,
                user_id=user_id,
                details={"old_role": m["role"], "new_role": changes.role},
            )
            # Tokens carry the role: make the user sign in again to get the new one.
            revoked += await _revoke_sessions(ctx, session, user_id=user_id, reason="role_changed")
        if changes.status is not None and changes.status.value != m["status"]:
            await session.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(status=changes.status.value, updated_at=now)
            )
            if changes.status == UserStatus.DISABLED:
                revoked += await _revoke_sessions(
                    ctx, session, user_id=user_id, reason="user_disabled"
                )
                await ctx.outbox.add(
                    session,
                    events.USER_DISABLED,
                    {"user_id": user_id, "disabled_by": actor_id, "disabled_at": now.isoformat()},
                )
                await _audit(
                    session, AuditType.USER_DISABLED, meta, actor_id=actor_id, user_id=user_id
                )
            else:
                await _audit(
                    session, AuditType.USER_ENABLED, meta, actor_id=actor_id, user_id=user_id
                )
        user = await _load_user(ctx, session, user_id)
    await _announce_revoked(ctx, revoked)
    return user


async def create_admin(ctx: ServiceContext, *, email: str, password: str) -> User:
    """Create a verified administrator (the CLI's first run); email and password rules apply."""
    try:
        email = valid_email(email)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise field_error("email", message, "invalid_email") from exc
    normalised = _policy_checked(password, email=email, field="password")
    password_hash = await hash_password(ctx, normalised)
    async with ctx.db.transaction() as session:
        user_id = await _create_user(
            ctx,
            session,
            email=email,
            password_hash=password_hash,
            role=Role.ADMIN.value,
            verified=True,
        )
        await _audit(
            session,
            AuditType.USER_REGISTERED,
            SYSTEM,
            user_id=user_id,
            details={"role": Role.ADMIN.value},
        )
        return await _load_user(ctx, session, user_id)


async def seed_demo(ctx: ServiceContext) -> dict[str, dict[str, str]]:
    """Create (once) one demo user per role, and a wholesale customer, with known passwords;
    returns their credentials by account name."""
    if ctx.settings.environment == "production":
        raise Conflict("Demo users are never created in production.", type="demo-in-production")
    out: dict[str, dict[str, str]] = {}
    for account, role in DEMO_ACCOUNTS.items():
        email = f"{account}@demo.ecosistema.dev"
        password = DEMO_PASSWORDS[account]
        async with ctx.db.read() as session:
            exists = await session.scalar(
                select(users.c.id).where(users.c.email_index == email_index(ctx, email))
            )
        if exists is None:
            password_hash = await hash_password(ctx, domain.check_password(password, email=email))
            async with ctx.db.transaction() as session:
                again = await session.scalar(
                    select(users.c.id).where(users.c.email_index == email_index(ctx, email))
                )
                if again is None:
                    await _create_user(
                        ctx,
                        session,
                        email=email,
                        password_hash=password_hash,
                        role=role.value,
                        verified=True,
                        name=f"Demo {account.title()}",
                    )
        out[account] = {"email": email, "password": password}
    return out


# --- API keys ---------------------------------------------------------------------------------


def _api_key_view(row: Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        scopes=list(m["scopes"]),
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


async def create_api_key(
    ctx: ServiceContext,
    *,
    user_id: str,
    role: str,
    name: str,
    scopes: Sequence[str],
    meta: RequestMeta = SYSTEM,
) -> ApiKeyCreated:
    """Create an API key limited to the given scopes (never beyond the creator's role)."""
    try:
        granted = grantable_scopes(role, scopes)
    except ValueError as exc:
        raise field_error("scopes", str(exc), "invalid_scope") from exc
    key_id = new_id()
    secret = domain.new_secret_token(domain.API_KEY_SECRET_BYTES)
    now = utcnow()
    async with ctx.db.transaction() as session:
        await session.execute(
            insert(api_keys).values(
                id=key_id,
                user_id=user_id,
                name=name,
                secret_hash=domain.hash_secret(secret),
                scopes=sorted(granted),
                created_at=now,
                last_used_at=None,
                revoked_at=None,
            )
        )
        await _audit(
            session,
            AuditType.API_KEY_CREATED,
            meta,
            actor_id=user_id,
            user_id=user_id,
            details={"api_key_id": key_id, "name": name, "scopes": sorted(granted)},
        )
        row = (await session.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    view = _api_key_view(row)
    return ApiKeyCreated(**view.model_dump(), key=auth.format_api_key(key_id, secret))


async def list_api_keys(ctx: ServiceContext, *, user_id: str | None) -> list[ApiKey]:
    """API keys of one user (or of everyone when ``user_id`` is None), newest first."""
    query = select(api_keys).order_by(api_keys.c.created_at.desc())
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    async with ctx.db.read() as session:
        return [_api_key_view(r) for r in (await session.execute(query)).all()]


async def api_key_owner(ctx: ServiceContext, *, key_id: str) -> str | None:
    """The user who created an API key, or None when there is no such key."""
    async with ctx.db.read() as session:
        owner: str | None = await session.scalar(
            select(api_keys.c.user_id).where(api_keys.c.id == key_id)
        )
    return owner


async def revoke_api_key(
    ctx: ServiceContext, *, key_id: str, actor_id: str, meta: RequestMeta = SYSTEM
) -> None:
    """Revoke an API key; it stops working at once. Revoking twice is harmless."""
    async with ctx.db.transaction() as session:
        row = (await session.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFound(API_KEY_NOT_FOUND)
        if row._mapping["revoked_at"] is None:
            await session.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=utcnow())
            )
            await _audit(
                session,
                AuditType.API_KEY_REVOKED,
                meta,
                actor_id=actor_id,
                user_id=row._mapping["user_id"],
                details={"api_key_id": key_id},
            )
    await ctx.cache.delete(f"identity:api-key:{key_id}")


async def verify_api_key(ctx: ServiceContext, raw: str) -> ApiKeyIdentity | None:
    """The identity behind a raw API key, or None when it is unknown, revoked or its owner is
    disabled."""
    parts = auth.parse_api_key(raw)
    if parts is None:
        return None
    key_id, secret = parts
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                select(api_keys, users.c.role, users.c.status)
                .join(users, users.c.id == api_keys.c.user_id)
                .where(api_keys.c.id == key_id)
            )
        ).first()
    if row is None:
        domain.secret_matches(secret, "0" * 64)
        return None
    m = row._mapping
    if not domain.secret_matches(secret, m["secret_hash"]):
        return None
    if m["revoked_at"] is not None or m["status"] != UserStatus.ACTIVE.value:
        return None
    now = utcnow()
    if m["last_used_at"] is None or now - m["last_used_at"] > timedelta(
        seconds=_API_KEY_TOUCH_SECONDS
    ):
        async with ctx.db.transaction() as session:
            await session.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now)
            )
    return ApiKeyIdentity(
        key_id=key_id, user_id=m["user_id"], role=m["role"], scopes=list(m["scopes"])
    )


# --- audit ------------------------------------------------------------------------------------


async def list_audit_events(
    ctx: ServiceContext,
    *,
    type: str | None = None,
    actor_id: str | None = None,
    user_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> AuditPage:
    """Audit events, newest first, filtered; ``cursor`` continues a previous page."""
    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    query = select(audit_events)
    if type:
        query = query.where(audit_events.c.type == type)
    if actor_id:
        query = query.where(audit_events.c.actor_id == actor_id)
    if user_id:
        query = query.where(audit_events.c.user_id == user_id)
    if since:
        query = query.where(audit_events.c.occurred_at >= since)
    if until:
        query = query.where(audit_events.c.occurred_at < until)
    if cursor:
        query = query.where(audit_events.c.position < decode_cursor(cursor, int)[0])
    query = query.order_by(audit_events.c.position.desc()).limit(limit + 1)
    async with ctx.db.read() as session:
        rows = (await session.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        AuditEvent(
            id=r.id,
            type=r.type,
            occurred_at=r.occurred_at,
            actor_id=r.actor_id,
            user_id=r.user_id,
            ip=r.ip,
            user_agent=r.user_agent,
            details=dict(r.details or {}),
        )
        for r in rows
    ]
    return AuditPage(
        items=items, next_cursor=encode_cursor(rows[-1].position) if more and rows else None
    )
