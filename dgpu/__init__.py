"""dGPU: a peer-to-peer GPU rental network paid per minute in an SPL token on Solana.

The distribution's parts live in the repository's top-level folders (``protocol/``,
``node/``, ``client/``, ``contracts/``, ``bootstrap/``); this package links them under
the single ``dgpu`` namespace so they are never importable as bare top-level modules.
"""

__version__ = "0.1.0"
