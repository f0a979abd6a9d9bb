"""The bootstrap node's libp2p side: DHT server + rendezvous for ``dgpu/providers``.

No pubsub: a bootstrap node helps peers find each other; it is not in the offers mesh.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from dgpu.node.adapters.files import write_addr_file
from dgpu.node.adapters.keystore import load_or_create
from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.config import BootstrapConfig

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

__all__ = ["run_bootstrap"]

log = logging.getLogger(__name__)


async def run_bootstrap(config: BootstrapConfig, *,
                        task_status: TaskStatus[P2PNode] = trio.TASK_STATUS_IGNORED) -> None:
    key = load_or_create(config.key_file, passphrase=os.environ.get(config.passphrase_env))
    p2p = P2PConfig(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        dht_server=True,
        rendezvous_server=True,
        gossip=None,
        # every node of a small network dials us; 512 keeps a 30-node bench far from the cap
        max_connections=512,
    )
    async with open_node(key, p2p) as node:
        print(node.multiaddr, flush=True)
        if config.addr_file is not None:
            write_addr_file(config.addr_file, node.multiaddr)
        log.info("bootstrap %s listening on %s", key.public_key.wallet, node.multiaddr)
        task_status.started(node)
        await trio.sleep_forever()
