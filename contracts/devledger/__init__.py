"""The development ledger: the embedded default escrow ledger, served by a bootstrap node.

**It holds no real value**: its tokens come from a faucet. It implements the same escrow rules as
the Solana program by calling ``dgpu.protocol.escrow`` (``model.py``), serves them over HTTP with
signed, replay-protected requests (``server.py``, ``messages.py``) and is reached through
:class:`DevLedgerEscrow` (``client.py``), which implements ``dgpu.contracts.escrow_api.EscrowLedger``.
The server side (FastAPI) is loaded on first use: a node only needs the client (idle RSS).
"""

from typing import TYPE_CHECKING, Any

from .client import DevLedgerEscrow as DevLedgerEscrow

if TYPE_CHECKING:
    from .model import DevLedger as DevLedger
    from .model import DevLedgerConfig as DevLedgerConfig
    from .server import ledger_router as ledger_router

__all__ = ["DevLedger", "DevLedgerConfig", "DevLedgerEscrow", "ledger_router"]


def __getattr__(name: str) -> Any:
    if name in ("DevLedger", "DevLedgerConfig"):
        from . import model

        return getattr(model, name)
    if name == "ledger_router":
        from .server import ledger_router

        return ledger_router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
