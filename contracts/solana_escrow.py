"""``SolanaEscrow``: the escrow interface over the dgpu_escrow Anchor program, via any RPC URL.

solana-py's ``AsyncClient`` (httpx) runs natively under trio, except its confirmation helpers
(asyncio.sleep): every transaction is sent with ``skip_confirmation=True`` and confirmed here by a
trio loop (``get_signature_statuses`` + ``trio.sleep`` under ``trio.fail_after``). Instructions are
built by ``dgpu.contracts.solana_ix`` (hand-written borsh with Anchor's discriminators) until the
program's IDL is committed. Library errors (httpx, solana-py RPC errors, transaction errors) are
converted here, once, into ``dgpu.contracts.errors``; the program's custom errors become
:class:`~dgpu.contracts.errors.EscrowRefused` with the shared code.

What a receipt reports: the amounts are the differences of the escrow account before and after
the transaction, except for the exits (close, settle_expired, refund_unstarted), which close the
escrow's account: theirs are the transaction's token movements (getTransaction). ``now`` is
``started_at`` for ``start``, the block time for exits, and otherwise the Clock sysvar read right
after confirmation. A settled escrow's whole accounting (:meth:`SolanaEscrow.settlement`) is summed
from the token movements of every transaction that named it, since its account is gone. The
mint's decimals are read from the mint account. No floats anywhere.

The program cannot be built to SBF on these machines; ``tests/contracts/test_local_rpc.py`` runs
this client against the program executing natively behind the local development endpoint
(``dgpu-local-rpc``), and the Rust tests replay ``tests/vectors/escrow_instructions.json``.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import httpx
import trio
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed, Finalized, Processed
from solana.rpc.core import RPCException
from solana.rpc.types import TxOpts
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.token.state import Mint, TokenAccount
from solders.transaction import Transaction
from solders.transaction_status import TransactionConfirmationStatus, UiRawMessage
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (
    TransferCheckedParams,
    create_idempotent_associated_token_account,
    get_associated_token_address,
    transfer_checked,
)

from dgpu._http import async_client

from . import solana_ix as ix
from .errors import (
    ConfirmationError,
    ConfirmationTimeout,
    EscrowNotFound,
    LedgerError,
    LedgerTimeout,
    ProgramError,
    TransportError,
)
from .escrow_api import Action, EscrowHandle, EscrowReceipt, EscrowView, MintInfo, Settlement

__all__ = ["SolanaEscrow"]

_CUSTOM = re.compile(r"Custom\((\d+)\)")
_DONE = {
    Processed: (TransactionConfirmationStatus.Processed, TransactionConfirmationStatus.Confirmed,
                TransactionConfirmationStatus.Finalized),
    Confirmed: (TransactionConfirmationStatus.Confirmed, TransactionConfirmationStatus.Finalized),
    Finalized: (TransactionConfirmationStatus.Finalized,),
}


class SolanaEscrow:
    """The Anchor escrow program as an :class:`~dgpu.contracts.escrow_api.EscrowLedger`, signing as ``keypair``."""

    ledger = "solana"

    def __init__(
        self,
        rpc: str | AsyncClient,
        program_id: Pubkey | str,
        keypair: Keypair,
        *,
        commitment: Commitment = Confirmed,
        confirm_timeout_s: float = 60.0,
        poll_interval_s: float = 0.5,
        compute_unit_price: int | None = None,
        compute_unit_limit: int | None = None,
    ) -> None:
        self._own_client = not isinstance(rpc, AsyncClient)
        self._url = str(rpc._provider.endpoint_uri) if isinstance(rpc, AsyncClient) else rpc
        self._client = rpc if isinstance(rpc, AsyncClient) else AsyncClient(rpc, commitment=commitment)
        self.program_id = program_id if isinstance(program_id, Pubkey) else Pubkey.from_string(program_id)
        self._keypair = keypair
        self._commitment = commitment
        self._confirm_timeout_s = confirm_timeout_s
        self._poll_s = poll_interval_s
        self._config: ix.ConfigAccount | None = None
        # a priority fee and a CU cap for real clusters, prepended to every transaction
        self._budget: list[Instruction] = (
            ([set_compute_unit_limit(compute_unit_limit)] if compute_unit_limit is not None else [])
            + ([set_compute_unit_price(compute_unit_price)] if compute_unit_price is not None else []))

    @property
    def wallet(self) -> str:
        return str(self._keypair.pubkey())

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.close()

    # -- RPC plumbing (the one place solana-py and httpx errors are converted) ----------------

    async def _rpc(self, call: Any) -> Any:
        try:
            return await call
        except (SolanaRpcException, httpx.HTTPError) as exc:
            cause = exc.__cause__ if isinstance(exc, SolanaRpcException) else exc
            if isinstance(cause, httpx.TimeoutException):
                raise LedgerTimeout("Solana RPC did not answer in time") from exc
            raise TransportError(f"Solana RPC unreachable: {type(cause).__name__}") from exc
        except RPCException as exc:
            raise _rpc_error(exc) from exc

    async def _account(self, key: Pubkey) -> bytes | None:
        resp = await self._rpc(self._client.get_account_info(key, commitment=self._commitment))
        return None if resp.value is None else bytes(resp.value.data)

    async def config(self) -> ix.ConfigAccount:
        """The program's Config (pinned mint, treasury, fee), read once and cached."""
        if self._config is None:
            data = await self._account(ix.config_pda(self.program_id))
            if data is None:
                raise TransportError(f"program {self.program_id} has no Config account on this cluster")
            self._config = ix.decode_config(data)
        return self._config

    async def _send(self, instructions: list[Instruction]) -> str:
        """Sign, send (skip_confirmation) and confirm; returns the signature.

        A preflight refused with BlockhashNotFound landed nothing, so it is re-signed with a fresh
        blockhash (a blockhash can expire between fetching and sending on a fast cluster)."""
        opts = TxOpts(skip_confirmation=True, skip_preflight=False, preflight_commitment=self._commitment)
        for attempt in range(_BLOCKHASH_RETRIES):
            blockhash: Hash = (await self._rpc(self._client.get_latest_blockhash(self._commitment))).value.blockhash
            message = Message.new_with_blockhash(self._budget + instructions, self._keypair.pubkey(), blockhash)
            tx = Transaction([self._keypair], message, blockhash)
            try:
                resp = await self._rpc(self._client.send_raw_transaction(bytes(tx), opts=opts))
                break
            except ProgramError as exc:
                if "BlockhashNotFound" not in exc.detail or attempt == _BLOCKHASH_RETRIES - 1:
                    raise
        signature: Signature = resp.value
        await self._confirm(signature)
        return str(signature)

    async def _confirm(self, signature: Signature) -> None:
        """Poll until ``signature`` reaches the commitment; raise on failure or at the deadline."""
        wanted = _DONE[self._commitment]
        try:
            with trio.fail_after(self._confirm_timeout_s):
                while True:
                    resp = await self._rpc(self._client.get_signature_statuses([signature]))
                    status = resp.value[0] if resp.value else None
                    if status is not None:
                        if status.err is not None:
                            raise _tx_error(status.err, str(signature))
                        if status.confirmation_status in wanted:
                            return
                    await trio.sleep(self._poll_s)
        except trio.TooSlowError:
            raise ConfirmationTimeout(
                f"transaction {signature} not {self._commitment} after {self._confirm_timeout_s} s; "
                "it may still land: fetch the escrow before retrying",
                str(signature),
            ) from None

    # -- reads -------------------------------------------------------------------------------

    async def mint_info(self) -> MintInfo:
        mint = (await self.config()).mint
        data = await self._account(mint)
        if data is None:
            raise TransportError(f"mint {mint} does not exist on this cluster")
        return MintInfo(address=str(mint), decimals=Mint.from_bytes(data).decimals)

    async def now(self) -> int:
        data = await self._account(ix.CLOCK_SYSVAR)
        if data is None or len(data) < 40:
            raise TransportError("the cluster returned no Clock sysvar")
        (unix_timestamp,) = struct.unpack_from("<q", data, 32)
        return int(unix_timestamp)

    async def clock_speed(self) -> int:
        """1 on a real cluster; the local development endpoint reports its speed (``dgpu_info``)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "dgpu_info", "params": []}
        try:
            async with async_client(timeout=10.0) as http:
                answer = (await http.post(self._url, json=body)).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TransportError(f"Solana RPC unreachable: {type(exc).__name__}") from exc
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):  # "Method not found" on a real cluster
            return 1
        return max(1, int(result.get("clock_speed", 1)))

    async def _token_balance(self, token_account: Pubkey) -> int:
        data = await self._account(token_account)
        return 0 if data is None else TokenAccount.from_bytes(data).amount

    async def balance(self, wallet: str) -> int:
        mint = (await self.config()).mint
        return await self._token_balance(get_associated_token_address(Pubkey.from_string(wallet), mint))

    async def fetch(self, address: str) -> EscrowView:
        key = Pubkey.from_string(address)
        data = await self._account(key)
        if data is None:
            raise EscrowNotFound(f"no escrow at {address}")
        try:
            a = ix.decode_escrow(data)
        except ValueError as exc:
            raise TransportError(f"{address} is not a dgpu escrow account: {exc}") from None
        vault = await self._token_balance(ix.vault_address(key, Pubkey.from_string(a.escrow.mint)))
        return EscrowView.of(a.escrow, ledger=self.ledger, address=address, vault_balance=vault,
                             now=await self.now())

    # -- instruction builders (no I/O beyond the cached config) --------------------------------

    def escrow_address(self, renter: str, provider: str, rental_id: int) -> str:
        return str(ix.escrow_pda(self.program_id, Pubkey.from_string(renter), Pubkey.from_string(provider),
                                 rental_id))

    def instructions(self, action: Action, handle: EscrowHandle, config: ix.ConfigAccount,
                     *, args: dict[str, int] | None = None) -> list[Instruction]:
        """The exact instructions :meth:`open`, :meth:`claim`, ... send for ``handle`` (pure)."""
        me = self._keypair.pubkey()
        renter, provider = Pubkey.from_string(handle.renter), Pubkey.from_string(handle.provider)
        escrow = Pubkey.from_string(handle.address)
        mint = config.mint
        accounts = {
            "renter": renter, "provider": provider, "caller": me, "config": ix.config_pda(self.program_id),
            "mint": mint, "escrow": escrow, "vault": ix.vault_address(escrow, mint),
            "renter_state": ix.renter_pda(self.program_id, renter),
            "renter_token": get_associated_token_address(renter, mint),
            "provider_token": get_associated_token_address(provider, mint), "treasury": config.treasury,
        }
        # The signer slot (provider of start/claim, renter of top_up/refund_unstarted, caller of
        # close) is always this key: a wrong key is refused by the program (Unauthorized).
        for name, is_signer, _ in ix.ACCOUNTS[action]:
            if is_signer:
                accounts[name] = me
        out: list[Instruction] = []
        if action in ("claim", "close", "settle_expired"):
            # The payees' token accounts must exist; creating them is idempotent and paid by the sender.
            for owner in (provider,) if action == "claim" else (renter, provider):
                out.append(create_idempotent_associated_token_account(me, owner, mint))
        out.append(ix.build(self.program_id, action, accounts, args))
        return out

    # -- instructions ------------------------------------------------------------------------

    async def _apply(self, action: Action, handle: EscrowHandle, *, args: dict[str, int] | None = None,
                     before: EscrowView | None = None) -> EscrowReceipt:
        config = await self.config()
        if before is None and action != "open":
            before = await self.fetch(handle.address)
        signature = await self._send(self.instructions(action, handle, config, args=args))
        if action in _EXITS:
            return await self._exit_receipt(action, handle, config, signature)
        after = await self.fetch(handle.address)

        def diff(field: str) -> int:
            return int(getattr(after, field)) - (int(getattr(before, field)) if before is not None else 0)

        now = after.started_at if action == "start" and after.started_at is not None else after.now
        return EscrowReceipt(action=action, escrow=handle, now=now, tx=signature,
                             deposited=diff("deposited"), paid=diff("paid"), fee=diff("fee_paid"),
                             refunded=diff("refunded"))

    async def _transaction(self, signature: str) -> tuple[Any, list[Pubkey], int | None]:
        """A confirmed transaction's metadata, its account keys and its block time."""
        resp = await self._rpc(self._client.get_transaction(
            Signature.from_string(signature), commitment=self._commitment, max_supported_transaction_version=0))
        found = resp.value
        meta = found.transaction.meta if found is not None else None
        message = found.transaction.transaction.message if found is not None else None
        if found is None or meta is None or not isinstance(message, UiRawMessage):
            raise TransportError(f"transaction {signature} confirmed but its metadata is not available")
        return meta, list(message.account_keys), found.block_time

    def _token_account(self, owner: str, config: ix.ConfigAccount) -> Pubkey:
        return get_associated_token_address(Pubkey.from_string(owner), config.mint)

    async def _exit_receipt(self, action: Action, handle: EscrowHandle, config: ix.ConfigAccount,
                            signature: str) -> EscrowReceipt:
        """An exit closes the escrow's account, so its receipt is the transaction's token movements
        (``refunded`` includes any dust that was in the vault)."""
        meta, keys, block_time = await self._transaction(signature)
        now = block_time if block_time is not None else await self.now()
        return EscrowReceipt(action=action, escrow=handle, now=now, tx=signature, deposited=0,
                             paid=_moved(meta, keys, self._token_account(handle.provider, config)),
                             fee=_moved(meta, keys, config.treasury),
                             refunded=_moved(meta, keys, self._token_account(handle.renter, config)))

    async def settlement(self, escrow: EscrowHandle) -> Settlement | None:
        """The settled escrow's accounting, summed from every landed transaction naming it
        (getSignaturesForAddress, then getTransaction each): deposits are the renter's token
        outflows, payments the provider's and the treasury's inflows, the refund the renter's
        inflow at the exit (the transaction that left the escrow's account without lamports).
        ``None`` while no exit has landed. A rental of ``n`` claims costs ``n + 4`` reads or so."""
        config = await self.config()
        key = Pubkey.from_string(escrow.address)
        renter_token, provider_token = (self._token_account(escrow.renter, config),
                                        self._token_account(escrow.provider, config))
        signatures: list[str] = []
        before: Signature | None = None
        for _ in range(_HISTORY_PAGES):
            page = (await self._rpc(self._client.get_signatures_for_address(
                key, before=before, limit=_HISTORY_PAGE, commitment=self._commitment))).value
            signatures += [str(s.signature) for s in page if s.err is None]
            if len(page) < _HISTORY_PAGE:
                break
            before = page[-1].signature
        else:
            raise TransportError(f"escrow {escrow.address} has more than {_HISTORY_PAGES * _HISTORY_PAGE} "
                                 "transactions")
        deposited = paid = fee = refunded = 0
        exit_tx: str | None = None
        for signature in signatures:
            meta, keys, _ = await self._transaction(signature)
            renter_moved = _moved(meta, keys, renter_token)
            paid += _moved(meta, keys, provider_token)
            fee += _moved(meta, keys, config.treasury)
            at = keys.index(key) if key in keys else None
            if at is not None and meta.pre_balances[at] > 0 and meta.post_balances[at] == 0:  # it closed here
                exit_tx, refunded = signature, renter_moved
            else:
                deposited -= renter_moved
        if exit_tx is None:
            return None
        return Settlement(escrow=escrow, deposited=deposited, paid=paid, fee=fee, refunded=refunded,
                          exit_tx=exit_tx)

    async def open(
        self, rental_id: int, provider: str, rate_per_minute: int, max_minutes: int, start_deadline: int
    ) -> EscrowReceipt:
        handle = EscrowHandle(self.ledger, self.escrow_address(self.wallet, provider, rental_id), self.wallet,
                              provider, rental_id)
        args = {"rental_id": rental_id, "rate_per_minute": rate_per_minute, "max_minutes": max_minutes,
                "start_deadline": start_deadline}
        return await self._apply("open", handle, args=args)

    async def start(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._apply("start", escrow)

    async def claim(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._apply("claim", escrow)

    async def top_up(self, escrow: EscrowHandle, extra_minutes: int) -> EscrowReceipt:
        return await self._apply("top_up", escrow, args={"extra_minutes": extra_minutes})

    async def close(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._apply("close", escrow)

    async def settle_expired(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._apply("settle_expired", escrow)

    async def refund_unstarted(self, escrow: EscrowHandle) -> EscrowReceipt:
        return await self._apply("refund_unstarted", escrow)

    async def sol_balance(self, wallet: str | None = None) -> int:
        """Lamports held by ``wallet`` (default: this wallet); transactions are paid in SOL."""
        who = self._keypair.pubkey() if wallet is None else Pubkey.from_string(wallet)
        return int((await self._rpc(self._client.get_balance(who, commitment=self._commitment))).value)

    async def ensure_token_account(self, owner: str | None = None) -> str:
        """Create ``owner``'s (default: this wallet's) token account for the mint if missing; its address."""
        mint = (await self.config()).mint
        who = self._keypair.pubkey() if owner is None else Pubkey.from_string(owner)
        ata = get_associated_token_address(who, mint)
        if await self._account(ata) is None:
            await self._send([create_idempotent_associated_token_account(self._keypair.pubkey(), who, mint)])
        return str(ata)


    async def transfer(self, to: str, amount: int) -> str:
        """Send ``amount`` base units of the mint from this wallet to ``to``'s token account
        (created if missing, paid by this wallet); the transaction's signature."""
        if amount <= 0:
            raise ValueError("a transfer moves a positive amount")
        mint = await self.mint_info()
        mint_key = Pubkey.from_string(mint.address)
        me, dest_owner = self._keypair.pubkey(), Pubkey.from_string(to)
        source = get_associated_token_address(me, mint_key)
        dest = get_associated_token_address(dest_owner, mint_key)
        return await self._send([
            create_idempotent_associated_token_account(me, dest_owner, mint_key),
            transfer_checked(TransferCheckedParams(program_id=TOKEN_PROGRAM_ID, source=source, mint=mint_key,
                                                   dest=dest, owner=me, amount=amount, decimals=mint.decimals)),
        ])


_BLOCKHASH_RETRIES = 3
_EXITS = ("close", "settle_expired", "refund_unstarted")
#: getSignaturesForAddress pages read for one settlement (1000 signatures a page)
_HISTORY_PAGE = 1000
_HISTORY_PAGES = 10


def _moved(meta: Any, keys: list[Pubkey], account: Pubkey) -> int:
    """What ``account``'s token balance gained in a transaction (negative: lost)."""
    total = 0
    for sign, balances in ((-1, meta.pre_token_balances), (1, meta.post_token_balances)):
        for b in balances or []:
            if keys[b.account_index] == account:
                total += sign * int(b.ui_token_amount.amount)
    return total


def _custom_code(err: Any) -> int | None:
    inner = getattr(err, "err", None)
    code = getattr(inner, "code", None)
    if isinstance(code, int):
        return code
    match = _CUSTOM.search(str(err))
    return int(match.group(1)) if match else None


def _tx_error(err: Any, signature: str | None = None) -> LedgerError | ConfirmationError:
    code = _custom_code(err)
    if code is not None:
        return ix.error_from_code(code)
    text = str(err)[:300]
    if signature is not None:
        return ConfirmationError(f"transaction {signature} failed: {text}", signature)
    return ProgramError("TransactionError", text)


def _rpc_error(exc: RPCException) -> LedgerError | ConfirmationError | TransportError:
    payload = exc.args[0] if exc.args else None
    data = getattr(payload, "data", None)
    err = getattr(data, "err", None)
    if err is not None:  # preflight simulation failed: the transaction was refused, nothing changed
        return _tx_error(err)
    message = getattr(payload, "message", None) or str(payload)
    code = _custom_code(message)
    if code is not None:
        return ix.error_from_code(code)
    return TransportError(f"Solana RPC error: {str(message)[:300]}")


