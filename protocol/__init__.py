"""dgpu.protocol: the pure core of the dGPU network.

Wire messages, canonical bytes and signed envelopes, the negotiation and job-session state
machines, the pricing engine and the escrow accrual math. No I/O, no clock, no randomness:
time and nonces are arguments, so researchers can embed it and its tests are plain.

Layout: implementation in the submodules; this module re-exports the public surface (tested
in ``tests/protocol/test_public_surface.py``). Everything not listed in ``__all__`` is private.
"""

from . import escrow as escrow
from . import pricing as pricing
from .canonical import canonical_bytes as canonical_bytes
from .envelope import Opened as Opened
from .envelope import ReplayCache as ReplayCache
from .envelope import open_envelope as open_envelope
from .envelope import seal as seal
from .errors import EscrowError as EscrowError
from .errors import LocalProtocolError as LocalProtocolError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .ids import JOB_PROTOCOL as JOB_PROTOCOL
from .ids import NEGOTIATE_PROTOCOL as NEGOTIATE_PROTOCOL
from .ids import OFFERS_TOPIC as OFFERS_TOPIC
from .job_session import JobSession as JobSession
from .keys import PublicKey as PublicKey
from .keys import SigningKey as SigningKey
from .messages import Accept as Accept
from .messages import Agreement as Agreement
from .messages import EscrowRef as EscrowRef
from .messages import GpuSpec as GpuSpec
from .messages import JobRequest as JobRequest
from .messages import Offer as Offer
from .messages import Quote as Quote
from .messages import Reject as Reject
from .messages import RejectCode as RejectCode
from .negotiation import Negotiation as Negotiation
from .negotiation import Role as Role
from .negotiation import State as State

__all__ = [
    "JOB_PROTOCOL",
    "NEGOTIATE_PROTOCOL",
    "OFFERS_TOPIC",
    "Accept",
    "Agreement",
    "EscrowError",
    "EscrowRef",
    "GpuSpec",
    "JobRequest",
    "JobSession",
    "LocalProtocolError",
    "Negotiation",
    "Offer",
    "Opened",
    "ProtocolError",
    "PublicKey",
    "Quote",
    "Reject",
    "RejectCode",
    "RemoteProtocolError",
    "ReplayCache",
    "Role",
    "SigningKey",
    "State",
    "canonical_bytes",
    "escrow",
    "open_envelope",
    "pricing",
    "seal",
]
