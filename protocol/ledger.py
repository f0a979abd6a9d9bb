"""The escrow ledger port: the one interface both ledgers implement, its values and its errors.

The node's billing service talks to an :class:`EscrowLedger` and never to a concrete ledger:
the renter side calls ``open``/``top_up``/``close``/``refund_unstarted``, the provider side
``start``/``claim``/``close``, anyone ``settle_expired``; both sides ``fetch`` to watch an
escrow. The rules are ``docs/escrow-rules.md`` (the record and its math: :mod:`.escrow`);
refusals raise :class:`EscrowRefused` with the shared ``EscrowErrorCode``.

Why here and not in ``dgpu.contracts``: importing anything under ``dgpu.contracts`` runs its
package ``__init__``, which loads both clients (httpx, solana, solders); the node's services
must depend on the interface alone. Like the rest of ``dgpu.protocol`` this module is pure.
The implementations (``dgpu.contracts.DevLedgerEscrow``, ``dgpu.contracts.SolanaEscrow``) and
``dgpu.contracts.escrow_api`` / ``dgpu.contracts.errors`` re-export these names unchanged.

Every method acts as the implementation's own key (its ``wallet``): the ledger decides who the
actor is from the signature, never from a field. Every mutating method returns an
:class:`EscrowReceipt` with the ledger's time and the amounts moved. All amounts are integers
of the mint's base unit; the decimals come from :meth:`EscrowLedger.mint_info`, never assumed.

Errors, one tree for both ledgers, converted once in each client::

    ContractsError                     anything a ledger client raises on purpose
    ├── LedgerError                    the ledger refused the instruction; nothing changed
    │   ├── EscrowRefused              an escrow rule refused it; ``.code`` is the shared EscrowErrorCode
    │   ├── ProgramError               an on-chain-only check (wrong mint, vault, same party, ...); ``.name``
    │   ├── InsufficientFunds          the payer's token account holds less than the transfer
    │   └── EscrowNotFound             no escrow at that address
    ├── RequestRejected                the ledger refused the *request* itself (``.reason``): bad signature,
    │                                  replay, expired or malformed envelope, faucet limit, not in test mode
    ├── TransportError                 the ledger could not be reached or answered nonsense (HTTP, RPC)
    │   ├── LedgerTimeout              no answer within the timeout
    │   ├── LedgerBusy                 refused for load (HTTP 429): nothing applied, retry later
    │   └── LedgerUnavailable          raised by a node's workflow, not a client: an escrow could not be
    │                                  settled for an outage; its message says what happens next
    └── ConfirmationError              a transaction was sent but did not confirm (``.signature``)
        └── ConfirmationTimeout        not confirmed before the deadline: it may still land later

``EscrowRefused`` is what the billing service branches on (``exc.code is
EscrowErrorCode.NOTHING_TO_CLAIM`` and so on); ``TransportError`` and ``ConfirmationTimeout`` mean
"state unknown, fetch before retrying". Messages never hold keys, signatures or request bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Protocol, runtime_checkable

from .errors import EscrowErrorCode
from .escrow import Escrow
from .escrow import accrued_minutes as _accrued_minutes
from .escrow import expires_at as _expires_at
from .messages import EscrowRef

__all__ = [
    "Action",
    "ConfirmationError",
    "ConfirmationTimeout",
    "ContractsError",
    "EscrowHandle",
    "EscrowLedger",
    "EscrowNotFound",
    "EscrowReceipt",
    "EscrowRefused",
    "EscrowView",
    "InsufficientFunds",
    "LedgerBusy",
    "LedgerError",
    "LedgerTimeout",
    "LedgerUnavailable",
    "MintInfo",
    "ProgramError",
    "RequestRejected",
    "Settlement",
    "TransportError",
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
class Settlement:
    """A settled escrow's whole accounting (base units): what went in and where all of it went.

    Read from the ledger's transactions, not from the escrow's account: Solana reclaims a settled
    escrow's account (its rent back to the renter), so the final state cannot be read back, but
    the transactions that moved the escrow's money can. paid + fee + refunded == deposited."""

    escrow: EscrowHandle
    #: renter -> vault (open and every top-up)
    deposited: int
    #: vault -> provider (every claim and the exit)
    paid: int
    #: vault -> treasury
    fee: int
    #: vault -> renter at the exit (on Solana including any dust a stranger sent to the vault)
    refunded: int
    #: the exit's transaction (Solana signature); None where the ledger keeps the closed escrow
    exit_tx: str | None = None

    @property
    def charged(self) -> int:
        """What the renter paid for minutes: provider's share plus fee."""
        return self.paid + self.fee


@dataclass(frozen=True, slots=True)
class EscrowView(Escrow):
    """One escrow as a ledger reports it: the record (:class:`~dgpu.protocol.escrow.Escrow`, its
    fields defined there once) plus where it lives and when it was read; values derived at ``now``
    come from the record's own math."""

    #: ``"development"`` or ``"solana"``
    ledger: str
    address: str
    #: what the vault token account holds (0 once closed; may exceed the accounting by dust on Solana)
    vault_balance: int
    #: the ledger's clock when this view was read
    now: int

    @classmethod
    def of(cls, record: Escrow, *, ledger: str, address: str, vault_balance: int, now: int) -> EscrowView:
        """The view of ``record`` read from ``ledger`` at ``now``."""
        return cls(**{f.name: getattr(record, f.name) for f in fields(Escrow)}, ledger=ledger,
                   address=address, vault_balance=vault_balance, now=now)

    @property
    def handle(self) -> EscrowHandle:
        return EscrowHandle(self.ledger, self.address, self.renter, self.provider, self.rental_id)

    @property
    def accrued_minutes(self) -> int:
        """Whole minutes accrued at ``now`` (clamped to max_minutes; 0 before the start)."""
        return _accrued_minutes(self, self.now)

    @property
    def expires_at(self) -> int | None:
        """started_at + 60 * max_minutes, or None before the start."""
        return _expires_at(self)

    @property
    def claimable_minutes(self) -> int:
        """Minutes the provider could claim now."""
        return max(self.accrued_minutes - self.claimed_minutes, 0)

    @property
    def remaining(self) -> int:
        """What the accounting says the vault still owes: deposited - paid - fee_paid - refunded."""
        return self.vault


@runtime_checkable
class EscrowLedger(Protocol):
    """One escrow ledger, acting as one key. All methods are trio-compatible coroutines.

    Errors: :class:`LedgerError` (refused, nothing changed), :class:`RequestRejected`,
    :class:`TransportError` and :class:`ConfirmationError` (state unknown: ``fetch`` before retrying).
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

    async def settlement(self, escrow: EscrowHandle) -> Settlement | None:
        """The settled escrow's accounting, from the ledger's record of its transactions; ``None``
        while it is not settled (still open)."""
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

    async def clock_speed(self) -> int:
        """Ledger seconds per wall second: 1 on a real cluster, more on a development ledger
        or endpoint run fast for demos and tests."""
        ...

    async def aclose(self) -> None:
        """Release the client's connections (idempotent)."""
        ...


# -- errors ------------------------------------------------------------------------------------


class ContractsError(Exception):
    """Base of every error a ledger client raises on purpose."""


class LedgerError(ContractsError):
    """The ledger refused the instruction; balances and escrow are unchanged."""


class EscrowRefused(LedgerError):
    """An escrow rule (docs/escrow-rules.md) refused the instruction."""

    def __init__(self, code: EscrowErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
        self.code = code
        self.detail = detail


class ProgramError(LedgerError):
    """The on-chain program refused with one of its account checks (no ledger-model counterpart)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail


class InsufficientFunds(LedgerError):
    """The paying token account holds less than the amount to move."""


class EscrowNotFound(LedgerError):
    """There is no escrow at that address (never opened, or another ledger's address)."""


class RequestRejected(ContractsError):
    """The ledger refused the request before looking at the instruction (``reason`` says why)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class TransportError(ContractsError):
    """The ledger could not be reached, or its answer was not understood; state is unknown."""


class LedgerTimeout(TransportError):
    """The ledger did not answer in time; the request may or may not have been applied."""


class LedgerBusy(TransportError):
    """The ledger refused the request for load (a rate limit) before applying it: retry after
    ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LedgerUnavailable(TransportError):
    """The ledger could not be reached to settle an escrow; the node keeps the settlement and
    retries it (``.escrow``: its address; ``.expires_at``: ledger time after which anyone may
    settle it, None when it never started)."""

    def __init__(self, message: str, *, escrow: str, expires_at: int | None = None) -> None:
        super().__init__(message)
        self.escrow = escrow
        self.expires_at = expires_at


class ConfirmationError(ContractsError):
    """A transaction was sent but failed to confirm."""

    def __init__(self, message: str, signature: str | None = None) -> None:
        super().__init__(message)
        self.signature = signature


class ConfirmationTimeout(ConfirmationError):
    """Not confirmed before the deadline; it may still land, so fetch the escrow before retrying."""
