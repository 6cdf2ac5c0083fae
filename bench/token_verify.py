"""Access-token verifications per second in one process, against a same-run baseline.

Baseline: PyJWT decoding EdDSA tokens with the key given directly (the floor of what any verifier
built on it can cost). Measured: the platform's TokenVerifier on distinct tokens (every one a full
signature and claims check: JWKS lookup by kid, claim checks, principal construction), and on one
token presented repeatedly (the verifier remembers verified tokens until they expire).
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
    tokens = [
        encode_access_token(
            key,
            subject=f"u{i}",
            role="customer",
            session_id=f"s{i}",
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=900,
        )
        for i in range(N)
    ]
    token = tokens[0]
    verifier = TokenVerifier(settings, cache=MemoryCache())

    async def provider() -> dict[str, object]:
        return jwks

    verifier.add_local_jwks(provider)
    await verifier.verify_access_token(token)  # warm the key cache

    public = key.private_key.public_key()
    start = time.perf_counter()
    for each in tokens:
        jwt.decode(
            each,
            public,
            algorithms=["EdDSA"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    baseline = time.perf_counter() - start

    start = time.perf_counter()
    for each in tokens:
        await verifier.verify_access_token(each)
    distinct = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(N):
        await verifier.verify_access_token(token)
    repeated = time.perf_counter() - start

    print(f"machine: {describe()}")
    print(f"baseline  PyJWT EdDSA decode, key in hand       : {rate(N, baseline)}")
    print(f"measured  TokenVerifier, {N:,} distinct tokens : {rate(N, distinct)}")
    print(f"measured  TokenVerifier, one token repeated     : {rate(N, repeated)}")
    print(f"distinct-token throughput vs baseline: {baseline / distinct:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
