"""dgpu.contracts: the escrow ledgers behind one interface.

``EscrowLedger`` (``escrow_api.py``) is what the node's billing service calls; two implementations:
``DevLedgerEscrow`` (the development ledger served by a bootstrap node; holds no real value) and
``SolanaEscrow`` (the Anchor program ``contracts/programs/dgpu_escrow`` through any RPC URL).
Errors are in ``dgpu.contracts.errors``. Everything not in ``__all__`` is private.
"""

from .devledger.client import DevLedgerEscrow as DevLedgerEscrow
from .escrow_api import EscrowHandle as EscrowHandle
from .escrow_api import EscrowLedger as EscrowLedger
from .escrow_api import EscrowReceipt as EscrowReceipt
from .escrow_api import EscrowView as EscrowView
from .escrow_api import MintInfo as MintInfo
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
