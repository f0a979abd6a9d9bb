"""The renter library: an async (trio) ``Client`` over an in-process renter node.

::

    async with Client.connect(bootstrap=[addr], ledger_url=url) as client:
        offers = await client.find_offers(gpu_model="RTX 4090", max_price_per_minute=30_000)
        rental = await client.rent(offers[0], image="pytorch/pytorch:2.4", command=["python", "train.py"],
                                   max_minutes=30)
        result = await rental.run(on_log=print)      # streams logs; billing runs alongside
        print(result.exit_code, result.paid, result.refunded)

``Client.connect`` starts a renter node (libp2p host, gossip, discovery) in a nursery and stops it
on exit. The workflow itself (``rent`` negotiates and locks the deposit in escrow before
accepting; ``Rental.run`` follows the job and settles the escrow, so every unaccrued minute
comes back) is the node's renter service, :class:`dgpu.node.services.renter.Renter`; the node's
local HTTP API rents through the same code.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from dgpu.node.adapters.bootstrap_client import upload_link
from dgpu.node.adapters.forward_tcp import listen_local
from dgpu.node.app import NodeRuntime, new_nonce, run_node, wall_clock
from dgpu.node.config import NodeConfig
from dgpu.node.logging import quiet_libp2p
from dgpu.node.services.billing import BillingPolicy
from dgpu.node.services.renter import OfferInfo, Rental, RentalResult, Renter
from dgpu.protocol.ledger import EscrowLedger

__all__ = ["Client", "OfferInfo", "Rental", "RentalResult"]


class Client(Renter):
    """A renter's handle on the network. Build it with :meth:`connect`."""

    def __init__(self, runtime: NodeRuntime, ledger: EscrowLedger | None, *,
                 billing_policy: BillingPolicy | None = None) -> None:
        super().__init__(runtime.node, runtime.key, runtime.book, runtime.blobs, ledger,
                         accept_simulated=runtime.config.accept_simulated, clock=wall_clock, nonce=new_nonce,
                         billing_policy=billing_policy, rentals=runtime.store, listen=listen_local,
                         settlements=runtime.settlements if ledger is runtime.ledger else None)
        self.runtime = runtime

    async def upload_link(self, bootstrap_url: str, bucket: str, key: str, *, max_bytes: int = 1024**3,
                          ttl_s: int = 24 * 3600) -> str:
        """A signed link of our storage bucket at the bootstrap node ``bootstrap_url`` (its HTTP
        address), for ``rent(result_upload=...)``: the provider pushes the result there."""
        return await upload_link(bootstrap_url, self.key, bucket, key, max_bytes=max_bytes, ttl_s=ttl_s,
                                 clock=wall_clock)

    @classmethod
    @asynccontextmanager
    async def connect(cls, bootstrap: Sequence[str], *, ledger_url: str | None = None,
                      data_dir: Path | None = None, accept_simulated: bool = False,
                      ledger: EscrowLedger | None = None,
                      billing_policy: BillingPolicy | None = None) -> AsyncIterator[Client]:
        """Start a renter node joined through ``bootstrap``; stop it on exit.

        ``ledger_url`` is the development ledger (a bootstrap node's HTTP address); pass a
        ready ``ledger`` (e.g. ``SolanaEscrow``) instead for Solana. ``data_dir`` holds the
        identity (created on first use, mode 0600); by default a temporary one."""
        quiet_libp2p()
        with tempfile.TemporaryDirectory(prefix="dgpu-client-") as tmp:
            # the node chooses (and closes) its ledger client from the config, unless one is given
            config = NodeConfig(role="renter", bootstrap=tuple(bootstrap), data_dir=data_dir or Path(tmp),
                                accept_simulated=accept_simulated, ledger_url=ledger_url if ledger is None else None)
            async with trio.open_nursery() as nursery:
                runtime: NodeRuntime = await nursery.start(run_node, config)
                client = cls(runtime, ledger if ledger is not None else runtime.ledger,
                             billing_policy=billing_policy)
                try:
                    yield client
                finally:
                    client.closed = True
                    nursery.cancel_scope.cancel()
