"""``/api/v1/billing``: the node's wallet on its ledger and the pricing estimate."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field

from dgpu.node.adapters.http_api.context import ERRORS, Ctx, Protected, in_trio
from dgpu.node.services import api as svc
from dgpu.node.services.api.schema import (
    BalanceOut,
    DepositIn,
    DepositOut,
    ErrorOut,
    EstimateOut,
    WalletOut,
    WithdrawIn,
    WithdrawOut,
)

__all__ = ["billing_router"]


def billing_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/billing", tags=["billing"], dependencies=Protected,
                       responses=ERRORS)
    ledger_errors: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorOut}, 501: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    @router.get("/wallet", response_model=WalletOut, responses=ledger_errors)
    async def wallet(ctx: Ctx) -> WalletOut:
        """The node's wallet: address, token balance, mint and decimals (from the ledger)."""
        return await in_trio(ctx.wallet.info)

    @router.get("/wallet/{wallet_id}/balance", response_model=BalanceOut, responses=ledger_errors)
    async def balance(wallet_id: Annotated[str, Field(min_length=32, max_length=44,
                                                      pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")],
                      ctx: Ctx) -> BalanceOut:
        return await in_trio(ctx.wallet.balance, wallet_id)

    @router.post("/wallet/{wallet_id}/deposit", response_model=DepositOut, responses=ledger_errors)
    async def deposit(wallet_id: Annotated[str, Field(max_length=44)], body: DepositIn, ctx: Ctx) -> DepositOut:
        """Development ledger: the faucet mints ``amount`` (worth nothing, ``real_value`` false).
        A real ledger: the deposit address; nothing is ever credited on a client's word."""
        return await in_trio(ctx.wallet.deposit, wallet_id, body.amount)

    @router.post("/wallet/{wallet_id}/withdraw", response_model=WithdrawOut, responses=ledger_errors)
    async def withdraw(wallet_id: Annotated[str, Field(max_length=44)], body: WithdrawIn,
                       ctx: Ctx) -> WithdrawOut:
        """A signed transfer from the node's wallet (501 on a ledger client without transfers)."""
        return await in_trio(ctx.wallet.withdraw, wallet_id, body.to, body.amount)

    @router.post("/pricing/estimate", response_model=EstimateOut)
    async def pricing_estimate(body: svc.EstimateIn, ctx: Ctx) -> EstimateOut:
        """The pricing engine: hourly price per GPU (dGPU, decimal string) and integer amounts."""
        decimals = 6
        if ctx.wallet.ledger is not None:
            with contextlib.suppress(svc.ApiError):
                decimals = (await in_trio(ctx.wallet.info)).decimals
        return svc.price_estimate(body, decimals=decimals)

    return router
