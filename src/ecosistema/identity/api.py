"""Identity's HTTP API: authentication, MFA, passwords, users, API keys, audit, and the JWKS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from ecosistema.identity import service
from ecosistema.identity.domain import UserStatus
from ecosistema.identity.schemas import (
    Accepted,
    AdminUserUpdate,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    AuditPage,
    ChangePasswordRequest,
    ForgotPasswordRequest,
    Jwks,
    LoginRequest,
    ProfileUpdate,
    RecoveryCodesResponse,
    RefreshRequest,
    RegisterRequest,
    ResendVerificationRequest,
    ResetPasswordRequest,
    RoleName,
    TokenResponse,
    TotpConfirmRequest,
    TotpDisableRequest,
    TotpEnrollResponse,
    User,
    UserPage,
    VerifyEmailRequest,
    WhoAmI,
)
from ecosistema.platform.auth import CurrentPrincipal, Principal, require
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import Forbidden, Unauthorized
from ecosistema.platform.errors import error_responses as _errors
from ecosistema.platform.policy import ensure_owner
from ecosistema.platform.proxies import TrustedProxies
from ecosistema.platform.service import ServiceContext, context_of
from ecosistema.platform.timestamps import QueryTimestamp

Context = Annotated[ServiceContext, Depends(context_of("identity"))]


@lru_cache(maxsize=16)
def _trusted_proxies(entries: tuple[str, ...]) -> TrustedProxies:
    return TrustedProxies(entries)


def client_ip(request: Request, settings: Settings) -> str | None:
    """The caller's IP: the socket peer, or, behind a trusted proxy, the nearest untrusted hop
    of X-Forwarded-For (hops a client wrote itself are further left and never believed)."""
    peer = request.client.host if request.client else None
    if peer is None or not settings.trusted_proxies:
        return peer
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    return _trusted_proxies(tuple(settings.trusted_proxies)).client(peer, forwarded)[0]


def request_meta(request: Request, ctx: Context) -> service.RequestMeta:
    """The request's client IP and user agent, for audit and throttling."""
    return service.RequestMeta(
        ip=client_ip(request, ctx.settings), user_agent=request.headers.get("user-agent")
    )


Meta = Annotated[service.RequestMeta, Depends(request_meta)]


async def signed_in_user(principal: CurrentPrincipal, ctx: Context) -> Principal:
    """A person signed in with an access token whose session is still live (not an API key)."""
    if principal.kind != "user":
        raise Forbidden("This needs a signed-in user, not an API key.", type="user-required")
    if principal.session_id is None or not await service.session_is_active(
        ctx, principal.session_id
    ):
        raise Unauthorized("The session has ended; sign in again.", type="session-ended")
    return principal


SignedIn = Annotated[Principal, Depends(signed_in_user)]


async def live_principal(principal: CurrentPrincipal, ctx: Context) -> Principal:
    """Any caller, but a user's access token only while its session is live."""
    if principal.kind == "user":
        return await signed_in_user(principal, ctx)
    return principal


Live = Annotated[Principal, Depends(live_principal)]


def allowed(permission: str) -> Callable[..., Awaitable[Principal]]:
    """``require(permission)``, and for users only while their session is live."""
    holder = require(permission)

    # The dependency sits in the default: an annotation naming the local ``holder`` could not be
    # resolved later, since annotations here are strings.
    async def _allowed(ctx: Context, principal: Principal = Depends(holder)) -> Principal:
        return await live_principal(principal, ctx)

    _allowed.__name__ = f"allowed_{permission.replace(':', '_')}"
    return _allowed


router = APIRouter(tags=["identity"])
root_router = APIRouter(tags=["identity"])


@root_router.get(
    "/.well-known/jwks.json",
    response_model=Jwks,
    summary="Public keys that verify access tokens (RFC 7517)",
)
async def get_jwks(ctx: Context, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "public, max-age=300"
    return await service.jwks(ctx)


# --- auth -------------------------------------------------------------------------------------


@router.post(
    "/auth/register",
    response_model=User,
    status_code=status.HTTP_201_CREATED,
    summary="Create a customer account; a verification token is mailed",
    responses=_errors(400, 409, 422),
)
async def register(body: RegisterRequest, ctx: Context, meta: Meta) -> User:
    return await service.register(
        ctx,
        email=body.email,
        password=body.password,
        name=body.name,
        locale=body.locale,
        meta=meta,
    )


@router.post(
    "/auth/verify-email",
    response_model=User,
    summary="Verify an email address with the mailed token",
    responses=_errors(400, 422),
)
async def verify_email(body: VerifyEmailRequest, ctx: Context, meta: Meta) -> User:
    return await service.verify_email(ctx, token=body.token, meta=meta)


@router.post(
    "/auth/verify-email/resend",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a new verification token (answers the same whether or not the account exists)",
    responses=_errors(400, 422),
)
async def resend_verification(body: ResendVerificationRequest, ctx: Context) -> Accepted:
    await service.resend_verification(ctx, email=body.email)
    return Accepted(detail="If the address belongs to an unverified account, a token was sent.")


@router.post(
    "/auth/login",
    response_model=TokenResponse,
    summary="Sign in; with MFA on, a 401 of type mfa-required asks for mfa_code or recovery_code",
    responses=_errors(400, 401, 403, 422, 429),
)
async def login(body: LoginRequest, ctx: Context, meta: Meta, response: Response) -> TokenResponse:
    response.headers["Cache-Control"] = "no-store"
    return await service.login(
        ctx,
        email=body.email,
        password=body.password,
        mfa_code=body.mfa_code,
        recovery_code=body.recovery_code,
        meta=meta,
    )


@router.post(
    "/auth/refresh",
    response_model=TokenResponse,
    summary="Exchange a refresh token for new tokens (each refresh token works once)",
    responses=_errors(400, 401, 422),
)
async def refresh(
    body: RefreshRequest, ctx: Context, meta: Meta, response: Response
) -> TokenResponse:
    response.headers["Cache-Control"] = "no-store"
    return await service.refresh(ctx, refresh_token=body.refresh_token, meta=meta)


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session",
    responses=_errors(401, 403),
)
async def logout(principal: SignedIn, ctx: Context, meta: Meta) -> Response:
    assert principal.session_id is not None
    await service.logout(ctx, user_id=principal.subject, session_id=principal.session_id, meta=meta)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End every session of the signed-in user",
    responses=_errors(401, 403),
)
async def logout_all(principal: SignedIn, ctx: Context, meta: Meta) -> Response:
    await service.logout_everywhere(ctx, user_id=principal.subject, meta=meta)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/mfa/totp/enroll",
    response_model=TotpEnrollResponse,
    summary="Start TOTP enrolment: a secret and its otpauth:// URI",
    responses=_errors(401, 403, 409),
)
async def enroll_totp(principal: SignedIn, ctx: Context, meta: Meta) -> TotpEnrollResponse:
    return await service.enroll_totp(ctx, user_id=principal.subject, meta=meta)


@router.post(
    "/auth/mfa/totp/confirm",
    response_model=RecoveryCodesResponse,
    summary="Turn TOTP on with a current code; returns ten one-time recovery codes",
    responses=_errors(401, 403, 409, 422),
)
async def confirm_totp(
    body: TotpConfirmRequest, principal: SignedIn, ctx: Context, meta: Meta
) -> RecoveryCodesResponse:
    codes = await service.confirm_totp(ctx, user_id=principal.subject, code=body.code, meta=meta)
    return RecoveryCodesResponse(recovery_codes=codes)


@router.post(
    "/auth/mfa/totp/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Turn TOTP off (password and a current or recovery code)",
    responses=_errors(401, 403, 409, 422, 429),
)
async def disable_totp(
    body: TotpDisableRequest, principal: SignedIn, ctx: Context, meta: Meta
) -> Response:
    await service.disable_totp(
        ctx,
        user_id=principal.subject,
        password=body.password,
        code=body.code,
        recovery_code=body.recovery_code,
        meta=meta,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/password/forgot",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Mail a reset token (answers 202 whether or not the account exists)",
    responses=_errors(400, 422),
)
async def forgot_password(body: ForgotPasswordRequest, ctx: Context, meta: Meta) -> Accepted:
    await service.forgot_password(ctx, email=body.email, meta=meta)
    return Accepted(detail="If the address belongs to an account, a reset token was sent.")


@router.post(
    "/auth/password/reset",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a reset token; every session ends",
    responses=_errors(400, 422),
)
async def reset_password(body: ResetPasswordRequest, ctx: Context, meta: Meta) -> Response:
    await service.reset_password(ctx, token=body.token, new_password=body.new_password, meta=meta)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/password/change",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change the password; every other session ends",
    responses=_errors(401, 403, 422, 429),
)
async def change_password(
    body: ChangePasswordRequest, principal: SignedIn, ctx: Context, meta: Meta
) -> Response:
    await service.change_password(
        ctx,
        user_id=principal.subject,
        session_id=principal.session_id,
        current_password=body.current_password,
        new_password=body.new_password,
        meta=meta,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/auth/whoami",
    response_model=WhoAmI,
    summary="The authenticated caller: user or API key, role, permissions and scopes",
    responses=_errors(401),
)
async def whoami(principal: Live) -> WhoAmI:
    return WhoAmI(
        subject=principal.subject,
        kind=principal.kind,
        role=principal.role,  # type: ignore[arg-type]
        permissions=sorted(principal.permissions),
        session_id=principal.session_id,
        api_key_id=principal.api_key_id,
        scopes=sorted(principal.scopes),
    )


# --- users ------------------------------------------------------------------------------------


@router.get(
    "/users/me",
    response_model=User,
    summary="The signed-in user and their profile",
    responses=_errors(401),
)
async def get_me(principal: CurrentPrincipal, ctx: Context) -> User:
    return await service.get_me(ctx, principal=principal)


@router.patch(
    "/users/me",
    response_model=User,
    summary="Change your own profile (name, phone, addresses, locale, preferences)",
    responses=_errors(401, 403, 422),
)
async def update_me(body: ProfileUpdate, principal: SignedIn, ctx: Context, meta: Meta) -> User:
    return await service.update_profile(ctx, user_id=principal.subject, changes=body, meta=meta)


@router.get(
    "/users",
    response_model=UserPage,
    summary="List users (filter by role, status or exact email)",
    responses=_errors(401, 403, 422),
)
async def list_users(
    ctx: Context,
    _principal: Annotated[Principal, Depends(allowed("users:read"))],
    role: RoleName | None = None,
    user_status: Annotated[UserStatus | None, Query(alias="status")] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    return await service.list_users(
        ctx,
        role=role,
        status=user_status.value if user_status else None,
        email=email,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/users/{user_id}",
    response_model=User,
    summary="One user",
    responses=_errors(401, 403, 404),
)
async def get_user(
    user_id: str,
    ctx: Context,
    _principal: Annotated[Principal, Depends(allowed("users:read"))],
) -> User:
    return await service.get_user(ctx, user_id=user_id)


@router.patch(
    "/users/{user_id}",
    response_model=User,
    summary="Change a user's role or status (disabling ends their sessions)",
    responses=_errors(401, 403, 404, 409, 422),
)
async def update_user(
    user_id: str,
    body: AdminUserUpdate,
    ctx: Context,
    meta: Meta,
    principal: Annotated[Principal, Depends(allowed("users:manage"))],
) -> User:
    return await service.admin_update_user(
        ctx, actor_id=principal.subject, user_id=user_id, changes=body, meta=meta
    )


# --- API keys ---------------------------------------------------------------------------------


@router.get(
    "/api-keys",
    response_model=list[ApiKey],
    summary="Your API keys (all keys with `all=true` and api_keys:manage)",
    responses=_errors(401, 403),
)
async def list_api_keys(
    ctx: Context,
    principal: Annotated[Principal, Depends(allowed("api_keys:write_own"))],
    all_keys: Annotated[bool, Query(alias="all")] = False,
) -> list[ApiKey]:
    if all_keys and not principal.has("api_keys:manage"):
        raise Forbidden("Listing everyone's keys needs the 'api_keys:manage' permission.")
    return await service.list_api_keys(ctx, user_id=None if all_keys else principal.subject)


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key; the secret is shown only in this response",
    responses=_errors(401, 403, 422),
)
async def create_api_key(
    body: ApiKeyCreate,
    ctx: Context,
    meta: Meta,
    principal: Annotated[Principal, Depends(allowed("api_keys:write_own"))],
) -> ApiKeyCreated:
    if principal.kind != "user":
        raise Forbidden("API keys are created by signed-in users.", type="user-required")
    return await service.create_api_key(
        ctx,
        user_id=principal.subject,
        role=principal.role,
        name=body.name,
        scopes=body.scopes,
        meta=meta,
    )


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    responses=_errors(401, 403, 404),
)
async def revoke_api_key(
    key_id: str,
    ctx: Context,
    meta: Meta,
    principal: Annotated[Principal, Depends(allowed("api_keys:write_own"))],
) -> Response:
    owner = await service.api_key_owner(ctx, key_id=key_id)
    ensure_owner(principal, owner, bypass="api_keys:manage", detail=service.API_KEY_NOT_FOUND)
    await service.revoke_api_key(ctx, key_id=key_id, actor_id=principal.subject, meta=meta)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- audit ------------------------------------------------------------------------------------


@router.get(
    "/audit-events",
    response_model=AuditPage,
    summary="Security events, newest first (cursor pagination)",
    responses=_errors(401, 403, 422),
)
async def list_audit_events(
    ctx: Context,
    _principal: Annotated[Principal, Depends(allowed("audit:read"))],
    event_type: Annotated[str | None, Query(alias="type", max_length=64)] = None,
    actor_id: Annotated[str | None, Query(max_length=64)] = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    since: QueryTimestamp | None = None,
    until: QueryTimestamp | None = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditPage:
    return await service.list_audit_events(
        ctx,
        type=event_type,
        actor_id=actor_id,
        user_id=user_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
