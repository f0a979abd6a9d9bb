from __future__ import annotations

import dgpu.protocol


def test_exported_members() -> None:
    assert sorted(dgpu.protocol.__all__) == sorted([
        "JOB_PROTOCOL", "NEGOTIATE_PROTOCOL", "OFFERS_TOPIC", "Accept", "Agreement", "EscrowError", "EscrowRef",
        "GpuSpec", "JobRequest", "JobSession", "LocalProtocolError", "Negotiation", "Offer", "Opened",
        "ProtocolError", "PublicKey", "Quote", "Reject", "RejectCode", "RemoteProtocolError", "ReplayCache", "Role",
        "SigningKey", "State", "canonical_bytes", "escrow", "open_envelope", "pricing", "seal",
    ])
    for name in dgpu.protocol.__all__:
        assert getattr(dgpu.protocol, name) is not None
