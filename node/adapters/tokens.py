"""Offline checks of the bootstrap node's access tokens (EdDSA JWTs).

Any node that knows the bootstrap node's public key (``TokenVerifier.from_jwks`` with the
document served at ``GET /api/v1/auth/jwks``, or the key itself) verifies tokens without a
call. The time is an argument, so tests expire tokens without waiting.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dgpu.protocol.auth import AccessClaims, Role

from .http_server import Unauthorized

__all__ = ["MAX_TOKEN_LEN", "TokenVerifier", "b64url_decode"]

MAX_TOKEN_LEN = 4096  # bounds the bearer token we parse


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenVerifier:
    """Checks access tokens: signature (EdDSA only), issuer, audience, time, claims."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        issuer: str,
        audience: str,
        leeway: int = 0,
    ) -> None:
        self._keys = dict(keys)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    @classmethod
    def from_jwks(
        cls, jwks: Mapping[str, Any], issuer: str, audience: str, leeway: int = 0
    ) -> TokenVerifier:
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
                keys[str(jwk["kid"])] = Ed25519PublicKey.from_public_bytes(
                    b64url_decode(str(jwk["x"]))
                )
        return cls(keys, issuer, audience, leeway)

    def verify(self, token: str, now: float) -> AccessClaims:
        """The token's claims; ``Unauthorized`` if it is malformed, forged, expired or early."""
        if len(token) > MAX_TOKEN_LEN:
            raise Unauthorized("token too long", code="invalid_token")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None:
                raise Unauthorized("token signed by an unknown key", code="invalid_token")
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                # Time is checked below against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "sub", "exp", "iat", "role", "fam", "jti"],
                },
            )
        except jwt.InvalidTokenError:
            # The library's message is not echoed: it is generic enough, and ours is stable.
            raise Unauthorized("invalid token", code="invalid_token") from None
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int) or not isinstance(nbf, int):
            raise Unauthorized("invalid token times", code="invalid_token")
        if now >= exp + self.leeway:
            raise Unauthorized("token expired", code="token_expired")
        if now + self.leeway < nbf:
            raise Unauthorized("token not yet valid", code="invalid_token")
        try:
            role = Role(claims["role"])
        except ValueError:
            raise Unauthorized("invalid token role", code="invalid_token") from None
        return AccessClaims(
            wallet=str(claims["sub"]),
            role=role,
            family_id=str(claims["fam"]),
            issued_at=int(claims["iat"]),
            expires_at=exp,
            token_id=str(claims["jti"]),
        )
