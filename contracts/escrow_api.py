"""The one escrow interface both ledgers implement (development ledger and Solana).

The node's billing service talks to an :class:`EscrowLedger` and never to a concrete ledger:
the renter side calls ``open``/``top_up``/``close``/``refund_unstarted``, the provider side
``start``/``claim``/``close``, anyone ``settle_expired``; both sides ``fetch`` to watch an
escrow. The rules are ``docs/escrow-rules.md``; refusals raise
:class:`~dgpu.contracts.errors.EscrowRefused` with the shared ``EscrowErrorCode``.

Every method acts as the implementation's own key (its ``wallet``): the ledger decides who the
actor is from the signature, never from a field. Every mutating method returns an
:class:`EscrowReceipt` with the ledger's time and the amounts moved. All amounts are integers
of the mint's base unit; the decimals come from :meth:`EscrowLedger.mint_info`, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.messages import EscrowRef

__all__ = [
    "Action",
    "EscrowHandle",
    "EscrowLedger",
    "EscrowReceipt",
    "EscrowView",
    "MintInfo",
]

Action = Literal["open", "start", "claim", "top_up", "close", "settle_expired", "refund_unstarted"]


@dataclass(frozen=True, slots=True)
class EscrowHandle:
    """Everything needed to address one escrow on its ledger (fixed at open)."""

    #: ``"development"`` or ``"solana"``; goes into the negotiated EscrowRef
    ledger: str
    #: base58 address: the Solana PDA, or the development ledger's derived id
    address: str
    renter: str
    provider: str
    rental_id: int

    def to_ref(self) -> EscrowRef:
        """The reference the renter puts into its ``Accept``."""
        return EscrowRef(ledger=self.ledger, address=self.address, rental_id=self.rental_id)


@dataclass(frozen=True, slots=True)
class MintInfo:
    """The token: its address and decimals, as the ledger reports them."""

    address: str
    decimals: int


@dataclass(frozen=True, slots=True)
class EscrowReceipt:
    """What one applied instruction did, in base units, at the ledger's time ``now``."""

    action: Action
    escrow: EscrowHandle
    #: the ledger's clock when the instruction ran (unix seconds)
    now: int
    #: transaction id (Solana signature, or the development ledger's tx id)
    tx: str
    #: renter -> vault (open, top_up)
    deposited: int = 0
    #: vault -> provider
    paid: int = 0
    #: vault -> treasury
    fee: int = 0
    #: vault -> renter
    refunded: int = 0


@dataclass(frozen=True, slots=True)
class EscrowView:
    """The state of one escrow (the fields of docs/escrow-rules.md) plus derived values at ``now``."""

    handle: EscrowHandle
    mint: str
    rate_per_minute: int
    max_minutes: int
    #: == rate_per_minute * max_minutes
    deposited: int
    fee_bps: int
    start_deadline: int
    started_at: int | None
    claimed_minutes: int
    paid: int
    fee_paid: int
    refunded: int
    status: EscrowStatus
    #: what the vault token account holds (0 once closed; may exceed the accounting by dust on Solana)
    vault_balance: int
    #: the ledger's clock when this view was read
    now: int
    #: whole minutes accrued at ``now`` (clamped to max_minutes; 0 before the start)
    accrued_minutes: int
    #: started_at + 60 * max_minutes, or None before the start
    expires_at: int | None

    @property
    def address(self) -> str:
        return self.handle.address

    @property
    def claimable_minutes(self) -> int:
        """Minutes the provider could claim now."""
        return max(self.accrued_minutes - self.claimed_minutes, 0)

    @property
    def remaining(self) -> int:
        """What the accounting says the vault still owes: deposited - paid - fee_paid - refunded."""
        return self.deposited - self.paid - self.fee_paid - self.refunded


@runtime_checkable
class EscrowLedger(Protocol):
    """One escrow ledger, acting as one key. All methods are trio-compatible coroutines.

    Errors: :class:`~dgpu.contracts.errors.LedgerError` (refused, nothing changed),
    :class:`~dgpu.contracts.errors.RequestRejected`, :class:`~dgpu.contracts.errors.TransportError`
    and :class:`~dgpu.contracts.errors.ConfirmationError` (state unknown: ``fetch`` before retrying).
    """

    #: ``"development"`` or ``"solana"``
    ledger: str

    @property
    def wallet(self) -> str:
        """The base58 address of the key this ledger client signs with."""
        ...

    async def open(
        self, rental_id: int, provider: str, rate_per_minute: int, max_minutes: int, start_deadline: int
    ) -> EscrowReceipt:
        """Renter: deposit ``rate_per_minute * max_minutes``; ``receipt.escrow`` is the new handle."""
        ...

    async def start(self, escrow: EscrowHandle) -> EscrowReceipt:
        """Provider: accrual starts at the ledger's ``now`` (must be before the start deadline)."""
        ...

    async def claim(self, escrow: EscrowHandle) -> EscrowReceipt:
        """Provider: be paid every accrued, unclaimed whole minute (fee to the treasury)."""
        ...

    async def top_up(self, escrow: EscrowHandle, extra_minutes: int) -> EscrowReceipt:
        """Renter: deposit ``rate * extra_minutes`` more (before expiry)."""
        ...

    async def close(self, escrow: EscrowHandle) -> EscrowReceipt:
        """Renter or provider: pay the accrued minutes, refund the rest, close."""
        ...

    async def settle_expired(self, escrow: EscrowHandle) -> EscrowReceipt:
        """Anyone, after expiry: pay every minute, refund any remainder, close."""
        ...

    async def refund_unstarted(self, escrow: EscrowHandle) -> EscrowReceipt:
        """Renter, at or after the start deadline of a never-started rental: refund everything."""
        ...

    async def fetch(self, address: str) -> EscrowView:
        """The escrow's state, vault balance and derived values at the ledger's ``now``."""
        ...

    async def balance(self, wallet: str) -> int:
        """Token balance of ``wallet`` in base units (0 when it has no token account)."""
        ...

    async def mint_info(self) -> MintInfo:
        """The mint's address and decimals, read from the ledger."""
        ...

    async def now(self) -> int:
        """The ledger's clock (unix seconds)."""
        ...
