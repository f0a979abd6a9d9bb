"""The node's ports: the interfaces its services depend on, and the values that cross them.

Layering: ``cli → config → app → services → ports ← adapters``. Services import only this
package, ``dgpu.protocol`` and each other; adapters (libp2p, Docker, NVML, SQLite, ledgers,
HTTP) implement these interfaces; ``app`` picks the adapters once and hands each service what
it needs (``tests/protocol/test_layering.py`` keeps it so).

One module per port: :mod:`.network` (framed streams, gossip, peers), :mod:`.store` (durable
jobs, minutes, receipts), :mod:`.execution` (executors and job specs), :mod:`.gpu` (GPU
sources and samples), :mod:`.metrics` (what services report to the metrics). The ledger port
is :mod:`dgpu.protocol.ledger` (pure, shared with the ledger clients in ``dgpu.contracts``) and is
re-exported here.
"""

from dgpu.protocol.ledger import EscrowHandle as EscrowHandle
from dgpu.protocol.ledger import EscrowLedger as EscrowLedger
from dgpu.protocol.ledger import EscrowReceipt as EscrowReceipt
from dgpu.protocol.ledger import EscrowView as EscrowView

from .execution import ContainerInfo as ContainerInfo
from .execution import Executor as Executor
from .execution import ExitReason as ExitReason
from .execution import ExitStatus as ExitStatus
from .execution import JobHandle as JobHandle
from .execution import JobSpec as JobSpec
from .execution import LogChunk as LogChunk
from .execution import ReattachableExecutor as ReattachableExecutor
from .execution import ResourceLimits as ResourceLimits
from .gpu import GpuInfo as GpuInfo
from .gpu import GpuSample as GpuSample
from .gpu import GpuSampler as GpuSampler
from .gpu import GpuScan as GpuScan
from .gpu import GpuSource as GpuSource
from .metrics import LedgerObserver as LedgerObserver
from .metrics import MeterObserver as MeterObserver
from .network import FramedStream as FramedStream
from .network import GossipMessage as GossipMessage
from .network import Network as Network
from .network import StreamHandler as StreamHandler
from .network import TopicValidator as TopicValidator
from .network import Verdict as Verdict
from .store import JobRecord as JobRecord
from .store import JobStore as JobStore
from .store import ReceiptSink as ReceiptSink
from .store import UsageMinute as UsageMinute

__all__ = [
    "ContainerInfo",
    "EscrowHandle",
    "EscrowLedger",
    "EscrowReceipt",
    "EscrowView",
    "Executor",
    "ExitReason",
    "ExitStatus",
    "FramedStream",
    "GossipMessage",
    "GpuInfo",
    "GpuSample",
    "GpuSampler",
    "GpuScan",
    "GpuSource",
    "JobHandle",
    "JobRecord",
    "JobSpec",
    "JobStore",
    "LedgerObserver",
    "LogChunk",
    "MeterObserver",
    "Network",
    "ReattachableExecutor",
    "ReceiptSink",
    "ResourceLimits",
    "StreamHandler",
    "TopicValidator",
    "UsageMinute",
    "Verdict",
]
