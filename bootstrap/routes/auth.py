"""``/api/v1/auth``: challenge, login, register, refresh, logout, JWKS, me."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from dgpu.protocol.auth import (
    DOMAINS,
    ChallengeIn,
    ChallengeOut,
    MeOut,
    RefreshIn,
    RegisterOut,
    SignedIn,
    TokenOut,
)

from ..http_state import Claims, State, limit_ip
from ..schemas import token_out

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/auth", tags=["auth"])

    @r.post("/challenge", response_model=ChallengeOut)
    async def challenge(body: ChallengeIn, state: State) -> ChallengeOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        ch = state.auth.challenge(body.wallet, body.action, body.role)
        domain = DOMAINS[ch.action]
        return ChallengeOut(
            nonce=ch.nonce,
            expires_at=ch.expires_at,
            message=ch.canonical().decode("ascii"),
            domain=domain.decode("ascii"),
            signing_bytes_hex=(domain + ch.canonical()).hex(),
        )

    @r.post("/login", response_model=TokenOut)
    async def login(body: SignedIn, state: State) -> TokenOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        return token_out(await state.auth.login(body.wallet, body.nonce, body.signature))

    @r.post("/register", response_model=RegisterOut)
    async def register(body: SignedIn, state: State) -> RegisterOut:
        state.limit(state.wallet_limiter, body.wallet, "wallet")
        role = await state.auth.register(body.wallet, body.nonce, body.signature)
        return RegisterOut(wallet=body.wallet, role=role.value)

    @r.post("/refresh", response_model=TokenOut)
    async def refresh(body: RefreshIn, state: State) -> TokenOut:
        return token_out(await state.auth.refresh(body.refresh_token))

    @r.post("/logout", status_code=204)
    async def logout(body: RefreshIn, state: State) -> Response:
        await state.auth.logout(body.refresh_token)
        return Response(status_code=204)

    @r.get("/jwks")
    async def jwks(state: State) -> dict[str, Any]:
        """The bootstrap node's token-signing public key (JWK Set); kid = base58 public key."""
        return {**state.issuer.jwks(), "issuer": state.issuer.issuer,
                "audience": state.issuer.audience}

    @r.get("/families/{family_id}", dependencies=[Depends(limit_ip)])
    async def family(family_id: Annotated[str, Path(max_length=64)], state: State) -> dict[str, Any]:
        """Whether a token family was revoked (logout, reuse, admin): nodes ask this to refuse
        revoked access tokens within seconds. A family id is random and grants nothing."""
        revoked = await state.db.run(state.db.sync.family_revoked, family_id)
        return {"family_id": family_id, "revoked": revoked}

    @r.get("/me", response_model=MeOut)
    async def me(claims: Claims) -> MeOut:
        return MeOut(wallet=claims.wallet, role=claims.role.value, expires_at=claims.expires_at)

    return r
