"""dgpu.protocol: the pure core of the dGPU network.

Wire messages, canonical bytes and signed envelopes, the negotiation and job-session state
machines, the pricing engine and the escrow accrual math. No I/O, no clock, no randomness:
time and nonces are arguments, so researchers can embed it and its tests are plain.

Layout: implementation in the submodules; this module re-exports the public surface (tested
in ``tests/protocol/test_public_surface.py``). Everything not listed in ``__all__`` is private.
"""

from . import escrow as escrow
from . import pricing as pricing
from . import reconcile as reconcile
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
from .ids import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from .ids import MAX_OFFER_BYTES as MAX_OFFER_BYTES
from .ids import MAX_OFFER_TTL_S as MAX_OFFER_TTL_S
from .ids import NEGOTIATE_PROTOCOL as NEGOTIATE_PROTOCOL
from .ids import OFFERS_TOPIC as OFFERS_TOPIC
from .job_session import JobSession as JobSession
from .keys import PublicKey as PublicKey
from .keys import SigningKey as SigningKey
from .messages import GOSSIP_ADAPTER as GOSSIP_ADAPTER
from .messages import TO_PROVIDER_JOB as TO_PROVIDER_JOB
from .messages import TO_PROVIDER_NEGOTIATION as TO_PROVIDER_NEGOTIATION
from .messages import TO_RENTER_JOB as TO_RENTER_JOB
from .messages import TO_RENTER_NEGOTIATION as TO_RENTER_NEGOTIATION
from .messages import Accept as Accept
from .messages import Agreement as Agreement
from .messages import AgreementTerms as AgreementTerms
from .messages import EscrowRef as EscrowRef
from .messages import Executor as Executor
from .messages import GpuSpec as GpuSpec
from .messages import JobRequest as JobRequest
from .messages import Offer as Offer
from .messages import Quote as Quote
from .messages import Reject as Reject
from .messages import RejectCode as RejectCode
from .negotiation import UNCHECKED as UNCHECKED
from .negotiation import Negotiation as Negotiation
from .negotiation import Role as Role
from .negotiation import State as State

__all__ = [
    "GOSSIP_ADAPTER",
    "JOB_PROTOCOL",
    "MAX_FRAME_BYTES",
    "MAX_OFFER_BYTES",
    "MAX_OFFER_TTL_S",
    "NEGOTIATE_PROTOCOL",
    "OFFERS_TOPIC",
    "TO_PROVIDER_JOB",
    "TO_PROVIDER_NEGOTIATION",
    "TO_RENTER_JOB",
    "TO_RENTER_NEGOTIATION",
    "UNCHECKED",
    "Accept",
    "Agreement",
    "AgreementTerms",
    "EscrowError",
    "EscrowRef",
    "Executor",
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
    "reconcile",
    "seal",
]
