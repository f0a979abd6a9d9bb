"""dgpu.contracts: the escrow ledgers behind one interface.

``EscrowLedger`` (``escrow_api.py``) is what the node's billing service calls; two implementations:
``DevLedgerEscrow`` (the development ledger served by a bootstrap node; holds no real value) and
``SolanaEscrow`` (the Anchor program ``contracts/programs/dgpu_escrow`` through any RPC URL).
Errors are in ``dgpu.contracts.errors``. Everything not in ``__all__`` is private.
``SolanaEscrow`` is loaded on first use: the development ledger's client (every local node) must
not pull in the Solana libraries (idle RSS).
"""

from typing import TYPE_CHECKING, Any

from .devledger.client import DevLedgerEscrow as DevLedgerEscrow
from .escrow_api import EscrowHandle as EscrowHandle
from .escrow_api import EscrowLedger as EscrowLedger
from .escrow_api import EscrowReceipt as EscrowReceipt
from .escrow_api import EscrowView as EscrowView
from .escrow_api import MintInfo as MintInfo

if TYPE_CHECKING:
    from .solana_escrow import SolanaEscrow as SolanaEscrow

__all__ = [
    "DevLedgerEscrow",
    "EscrowHandle",
    "EscrowLedger",
    "EscrowReceipt",
    "EscrowView",
    "MintInfo",
    "SolanaEscrow",
]


def __getattr__(name: str) -> Any:
    if name == "SolanaEscrow":
        from .solana_escrow import SolanaEscrow

        return SolanaEscrow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
