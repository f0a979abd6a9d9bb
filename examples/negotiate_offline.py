"""A researcher's whole negotiation with dgpu.protocol alone: no network, no clock, no ledger.

Run: ``.venv/bin/python examples/negotiate_offline.py``

A provider prices its GPU and signs an offer; a renter verifies it, asks for a job, gets a quote,
"funds" an escrow (the reference math), accepts; both sign the agreement; then the rental runs
for 7 minutes and 30 seconds and the renter closes it. Every byte that would cross the network
goes through ``seal``/``open_envelope``, exactly as the node does.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from dgpu.protocol import (
    GOSSIP_ADAPTER,
    MAX_OFFER_BYTES,
    MAX_OFFER_TTL_S,
    TO_PROVIDER_NEGOTIATION,
    TO_RENTER_NEGOTIATION,
    EscrowRef,
    GpuSpec,
    JobRequest,
    Negotiation,
    Offer,
    Quote,
    ReplayCache,
    Role,
    SigningKey,
    escrow,
    open_envelope,
    pricing,
    seal,
)

DECIMALS = 6  # read from the mint in real use
NOW = 1_700_000_000  # time is an argument everywhere


def nonce(label: str) -> bytes:
    """Deterministic nonces for a reproducible example (the node uses os.urandom)."""
    return hashlib.sha256(label.encode()).digest()[:16]


def main() -> dict[str, int]:
    provider_key, renter_key = SigningKey(b"p" * 32), SigningKey(b"r" * 32)
    mint = SigningKey(b"m" * 32).public_key.wallet

    # 1. The provider prices an RTX 4090 and gossips a signed offer.
    hourly = pricing.hourly_price(pricing.PriceInputs("RTX 4090", vram_mib=24 * 1024, power_limit_w=450))
    rate = pricing.rate_per_minute(hourly, DECIMALS)
    offer = Offer(provider=provider_key.public_key.wallet, gpus=(GpuSpec(model="RTX 4090", vram_mib=24 * 1024),),
                  price_per_minute=rate, mint=mint, ledger="dev", seq=1, issued_at=NOW, expires_at=NOW + 600)
    wire = seal(offer, provider_key, nonce=nonce("offer"), issued_at=NOW, expires_at=NOW + 600)
    seen = open_envelope(wire, GOSSIP_ADAPTER, now=NOW + 1, max_bytes=MAX_OFFER_BYTES, max_ttl=MAX_OFFER_TTL_S)
    assert seen.signer.wallet == seen.message.provider  # whoever signed the offer gets paid
    print(f"offer: {offer.gpus[0].model} at {Decimal(hourly):.2f} dGPU/h = {rate} base units/min")

    # 2. Negotiation: both sides run the same state machine; replay caches guard each inbox.
    renter, provider = Negotiation(Role.RENTER), Negotiation(Role.PROVIDER)
    renter_inbox, provider_inbox = ReplayCache(), ReplayCache()

    def to_provider(message: JobRequest | object, t: int) -> None:
        data = seal(message, renter_key, nonce=nonce(f"r{t}"), issued_at=t, expires_at=t + 60)  # type: ignore[arg-type]
        opened = open_envelope(data, TO_PROVIDER_NEGOTIATION, now=t, replay_cache=provider_inbox)
        provider.receive(opened.message, t, signer=opened.signer)

    def to_renter(message: object, t: int) -> None:
        data = seal(message, provider_key, nonce=nonce(f"p{t}"), issued_at=t, expires_at=t + 60)  # type: ignore[arg-type]
        opened = open_envelope(data, TO_RENTER_NEGOTIATION, now=t, replay_cache=renter_inbox)
        renter.receive(opened.message, t, signer=opened.signer)

    request = JobRequest(request_id="00" * 8, renter=renter_key.public_key.wallet, provider=offer.provider,
                         offer_seq=offer.seq, gpu_model="RTX 4090", image="pytorch/pytorch:latest",
                         command=("python", "train.py"), max_minutes=30, max_price_per_minute=rate)
    renter.send(request, NOW + 2)
    to_provider(request, NOW + 2)
    quote = Quote.for_request(request, quote_id="01" * 8, rate_per_minute=rate, fee_bps=pricing.DEFAULT_FEE_BPS,
                              mint=mint, ledger="dev", start_deadline=NOW + 300, expires_at=NOW + 60)
    provider.send(quote, NOW + 3)
    to_renter(quote, NOW + 3)

    # 3. The renter locks the deposit (reference escrow math) and accepts, signing the terms.
    opened = escrow.open_escrow(renter=request.renter, provider=request.provider, mint=mint, rental_id=1,
                                rate_per_minute=quote.rate_per_minute, max_minutes=quote.max_minutes,
                                start_deadline=quote.start_deadline, fee_bps=quote.fee_bps, now=NOW + 4)
    accept = renter.accept(EscrowRef(ledger="dev", address="escrow-1", rental_id=1), renter_key, NOW + 4)
    to_provider(accept, NOW + 4)
    agreement = provider.agree(provider_key, NOW + 5)
    to_renter(agreement, NOW + 5)
    print(f"agreement {agreement.agreement_id[:16]}…: {renter.state} / {provider.state}")

    # 4. The rental runs 7 min 30 s, the renter closes early: 7 minutes paid, 23 refunded.
    started = escrow.start(opened.escrow, request.provider, NOW + 10).escrow
    closed = escrow.close(started, request.renter, NOW + 10 + 7 * 60 + 30).escrow
    summary = {"deposited": closed.deposited, "paid": closed.paid, "fee": closed.fee_paid, "refunded": closed.refunded}
    assert closed.paid + closed.fee_paid + closed.refunded == closed.deposited
    print("settlement:", summary)
    return summary


if __name__ == "__main__":
    main()
