"""``/api/v1/admin``: wallets and their roles, revoking a wallet's sessions (admin role)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from dgpu.protocol.auth import Role

from ..http_state import MAX_LIST, State, require_role
from ..schemas import RevokeOut, WalletRoleOut

__all__ = ["router"]


def router() -> APIRouter:
    r = APIRouter(
        prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_role(Role.ADMIN))]
    )

    @r.get("/wallets", response_model=list[WalletRoleOut])
    async def wallets(
        state: State,
        after: Annotated[str, Query(max_length=64)] = "",
        limit: Annotated[int, Query(gt=0, le=MAX_LIST)] = 100,
    ) -> list[WalletRoleOut]:
        rows = await state.db.run(state.db.sync.list_roles, limit, after)
        return [WalletRoleOut(wallet=w, role=r) for w, r in rows]

    @r.post("/wallets/{wallet}/revoke", response_model=RevokeOut)
    async def revoke(wallet: str, state: State) -> RevokeOut:
        return RevokeOut(revoked_sessions=await state.auth.revoke_wallet(wallet))

    return r
