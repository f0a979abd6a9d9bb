"""The development ledger: the embedded default escrow ledger, served by a bootstrap node.

**It holds no real value**: its tokens come from a faucet. It implements the same escrow rules as
the Solana program by calling ``dgpu.protocol.escrow`` (``model.py``), serves them over HTTP with
signed, replay-protected requests (``server.py``, ``messages.py``) and is reached through
:class:`DevLedgerEscrow` (``client.py``), which implements ``dgpu.contracts.escrow_api.EscrowLedger``.
"""

from .client import DevLedgerEscrow as DevLedgerEscrow
from .model import DevLedger as DevLedger
from .model import DevLedgerConfig as DevLedgerConfig
from .server import ledger_router as ledger_router

__all__ = ["DevLedger", "DevLedgerConfig", "DevLedgerEscrow", "ledger_router"]
