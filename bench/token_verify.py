"""Access-token verifications per second in one process, against a same-run baseline.

Baseline: PyJWT decoding the same EdDSA token with the key given directly (the floor of what any
verifier built on it can cost). Measured: the platform's TokenVerifier, the path every request
takes (JWKS lookup by kid, claim checks, principal construction).
"""

from __future__ import annotations

import asyncio
import time

import jwt

from machine import describe

from ecosistema.platform.auth import TokenVerifier
from ecosistema.platform.cache import MemoryCache
from ecosistema.platform.config import Settings
from ecosistema.platform.tokens import encode_access_token, generate_signing_key, public_jwk

N = 20_000


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s ({seconds * 1e6 / n:.1f} us each)"


async def main() -> None:
    settings = Settings(environment="test")
    key = generate_signing_key()
    jwks = {"keys": [public_jwk(key)]}
    token = encode_access_token(
        key,
        subject="u1",
        role="customer",
        session_id="s1",
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=900,
    )
    verifier = TokenVerifier(settings, cache=MemoryCache())

    async def provider() -> dict[str, object]:
        return jwks

    verifier.add_local_jwks(provider)
    await verifier.verify_access_token(token)  # warm the key cache

    public = key.private_key.public_key()
    start = time.perf_counter()
    for _ in range(N):
        jwt.decode(
            token,
            public,
            algorithms=["EdDSA"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    baseline = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(N):
        await verifier.verify_access_token(token)
    measured = time.perf_counter() - start

    print(f"machine: {describe()}")
    print(f"baseline  PyJWT EdDSA decode, key in hand : {rate(N, baseline)}")
    print(f"measured  TokenVerifier.verify_access_token: {rate(N, measured)}")
    print(f"ratio measured/baseline throughput: {baseline / measured:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
