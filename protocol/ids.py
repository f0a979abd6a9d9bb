"""Protocol identifiers, known versions and size limits: the constants every peer agrees on."""

from __future__ import annotations

from typing import Final

__all__ = [
    "BLOB_PROTOCOL",
    "DOMAIN_PREFIX",
    "JOB_PROTOCOL",
    "JOB_PROTOCOL_V2",
    "KNOWN_WIRE_VERSIONS",
    "MAX_ENVELOPE_TTL_S",
    "MAX_FRAME_BYTES",
    "MAX_LOG_CHUNK_CHARS",
    "MAX_OFFER_BYTES",
    "MAX_OFFER_TTL_S",
    "NEGOTIATE_PROTOCOL",
    "OFFERS_SYNC_PROTOCOL",
    "OFFERS_TOPIC",
    "RENDEZVOUS_NAMESPACE",
    "WIRE_VERSION",
]

#: gossipsub topic of signed offers
OFFERS_TOPIC: Final = "dgpu/offers/1"
#: request/response negotiation stream
NEGOTIATE_PROTOCOL: Final = "/dgpu/negotiate/1.0.0"
#: job session stream: submit, status, logs, usage, cancel, result
JOB_PROTOCOL: Final = "/dgpu/job/1.0.0"
#: the job stream with heartbeats and re-attach (``job_frames``), served beside 1.0.0
JOB_PROTOCOL_V2: Final = "/dgpu/job/1.1.0"
#: a joining node asks a neighbour for the offers it holds (each validated as if gossiped)
OFFERS_SYNC_PROTOCOL: Final = "/dgpu/offers-sync/1.0.0"
#: content-addressed transfer between peers
BLOB_PROTOCOL: Final = "/dgpu/blob/1.0.0"
#: rendezvous namespace under which providers advertise
RENDEZVOUS_NAMESPACE: Final = "dgpu/providers"

#: version of the envelope format; a breaking change gets a new number *and* new protocol ids
WIRE_VERSION: Final = 1
#: versions this code can read, oldest first
KNOWN_WIRE_VERSIONS: Final = (1,)
#: every signature is over DOMAIN_PREFIX + message type + NUL + canonical payload
DOMAIN_PREFIX: Final = b"dgpu/1/"

#: gossip offers stay far below py-libp2p's ~64 KiB interleaving hazard (LIBP2P-NOTES.md)
MAX_OFFER_BYTES: Final = 8 * 1024
#: one framed message on a stream (a log chunk, a job request with its env)
MAX_FRAME_BYTES: Final = 64 * 1024
#: a log chunk's text, so a frame always fits in MAX_FRAME_BYTES
MAX_LOG_CHUNK_CHARS: Final = 16 * 1024
#: longest validity of a negotiation/job envelope; also bounds the replay cache's memory
MAX_ENVELOPE_TTL_S: Final = 300
#: longest validity of an offer; providers republish before expiry
MAX_OFFER_TTL_S: Final = 3600
