"""The node's wallet on its ledger, as the local API shows and moves it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from dgpu.node.services.api.errors import Conflict, Forbidden, NotImplementedOnLedger, Unavailable
from dgpu.node.services.api.schema import BalanceOut, DepositOut, WalletOut, WithdrawOut, format_amount
from dgpu.protocol.ledger import ContractsError, EscrowLedger, LedgerError, RequestRejected

__all__ = ["WalletService"]

T = TypeVar("T")


class WalletService:
    """The node's wallet on its ledger (``EscrowLedger``; development ledger or Solana)."""

    def __init__(self, ledger: EscrowLedger | None, wallet: str) -> None:
        self.ledger = ledger
        self.wallet = wallet

    def _ledger(self) -> EscrowLedger:
        if self.ledger is None:
            raise Unavailable("this node has no ledger configured", "no_ledger")
        return self.ledger

    @property
    def development(self) -> bool:
        return self.ledger is not None and self.ledger.ledger == "development"

    async def info(self) -> WalletOut:
        ledger = self._ledger()
        mint = await _ledger_call(ledger.mint_info())
        balance = await _ledger_call(ledger.balance(self.wallet))
        return WalletOut(address=self.wallet, ledger=ledger.ledger, mint=mint.address, decimals=mint.decimals,
                         balance=balance, balance_display=format_amount(balance, mint.decimals),
                         real_value=not self.development)

    async def balance(self, wallet: str) -> BalanceOut:
        ledger = self._ledger()
        mint = await _ledger_call(ledger.mint_info())
        balance = await _ledger_call(ledger.balance(wallet))
        return BalanceOut(address=wallet, balance=balance, decimals=mint.decimals,
                          balance_display=format_amount(balance, mint.decimals), real_value=not self.development)

    def _own(self, wallet: str) -> None:
        if wallet != self.wallet:
            raise Forbidden("this node can only act for its own wallet", "not_own_wallet")

    async def deposit(self, wallet: str, amount: int) -> DepositOut:
        self._own(wallet)
        ledger = self._ledger()
        if self.development:
            faucet = getattr(ledger, "faucet", None)
            if faucet is None:
                raise NotImplementedOnLedger("this development ledger client has no faucet", "no_faucet")
            minted: int = await _ledger_call(faucet(amount))
            balance = await _ledger_call(ledger.balance(self.wallet))
            return DepositOut(address=self.wallet, credited=minted, balance=balance, real_value=False,
                              note="development ledger faucet: these tokens are worth nothing")
        # on a real ledger a deposit is a transfer the owner makes to this address; the node
        # never credits an amount a client claims to have sent
        return DepositOut(address=self.wallet, credited=0, real_value=True, deposit_address=self.wallet,
                          note="send tokens of the mint to this wallet; the balance shows them once confirmed")

    async def withdraw(self, wallet: str, to: str, amount: int) -> WithdrawOut:
        """Send ``amount`` base units from this node's wallet to ``to`` (a signed ledger transfer)."""
        self._own(wallet)
        ledger = self._ledger()
        transfer = getattr(ledger, "transfer", None)
        if transfer is None:  # the Solana client sends escrow instructions only; use a wallet app
            raise NotImplementedOnLedger(
                f"the {ledger.ledger} ledger client has no transfer instruction, so this node cannot "
                "withdraw; send the tokens with any Solana wallet holding this key", "withdraw_unsupported")
        tx: str = await _ledger_call(transfer(to, amount))
        balance = await _ledger_call(ledger.balance(self.wallet))
        return WithdrawOut(address=self.wallet, to=to, amount=amount, tx=tx, balance=balance,
                           real_value=not self.development)


async def _ledger_call(awaitable: Awaitable[T]) -> T:
    """Await a ledger call, converting the contracts' errors once (refusals into ``Conflict``,
    the rest into ``Unavailable``)."""
    try:
        return await awaitable
    except (LedgerError, RequestRejected) as exc:
        raise Conflict(f"the ledger refused: {exc}"[:300], "ledger_refused") from exc
    except ContractsError as exc:
        raise Unavailable(f"ledger error: {exc}"[:300], "ledger_error") from exc
