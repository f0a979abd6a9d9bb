from __future__ import annotations

import dgpu.protocol


def test_exported_members() -> None:
    assert sorted(dgpu.protocol.__all__) == sorted([
        "GOSSIP_ADAPTER", "JOB_PROTOCOL", "MAX_FRAME_BYTES", "MAX_OFFER_BYTES", "MAX_OFFER_TTL_S",
        "NEGOTIATE_PROTOCOL", "OFFERS_TOPIC", "TO_PROVIDER_JOB", "TO_PROVIDER_NEGOTIATION", "TO_RENTER_JOB",
        "TO_RENTER_NEGOTIATION", "UNCHECKED", "Accept", "Agreement", "AgreementTerms", "EscrowError", "EscrowRef",
        "Executor", "GpuSpec", "JobRequest", "JobSession", "LocalProtocolError", "Negotiation", "Offer", "Opened",
        "ProtocolError", "PublicKey", "Quote", "Reject", "RejectCode", "RemoteProtocolError", "ReplayCache", "Role",
        "SigningKey", "State", "canonical_bytes", "escrow", "open_envelope", "pricing", "reconcile", "seal",
    ])
    for name in dgpu.protocol.__all__:
        assert getattr(dgpu.protocol, name) is not None
