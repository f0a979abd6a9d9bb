"""Fresh offers on a running network: a provider that stops withdraws its offer (a running renter
drops it at once, not when it expires), and the same provider restarted on a new port is reached
there by that renter at once, although the renter's libp2p peerstore still holds the old port and
its dialler blocks the peer after the failed dial."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import pytest

from dgpu.node.errors import NetworkError, RejectedError
from dgpu.node.services.negotiation import negotiate
from dgpu.protocol.ids import NEGOTIATE_PROTOCOL
from dgpu.protocol.messages import Offer

from .test_negotiation_jobs import clock, job, nonce, offer_of

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _reaches(renter: Any, offer: Offer) -> None:
    """One negotiation with the provider of ``offer``; its refusal (no H100 here) proves it answered."""
    with pytest.raises(RejectedError, match="gpu_mismatch"):
        await negotiate(renter.node, renter.key, offer, job(gpu_model="H100"), escrow=renter.funder(),
                        clock=clock, nonce=nonce)


async def test_a_stopped_provider_is_dropped_at_once_and_reached_at_its_new_port(
        network: Any, renter: Any, until: Any) -> None:
    first_port, second_port = _free_port(), _free_port()
    proc = network.provider("provider-c", "RTX 3090:24576:1", 150, "--port", str(first_port))
    wallet, peer = proc.key().public_key.wallet, proc.addr.split("/p2p/")[1]
    offer = await offer_of(renter, proc, until)
    assert any(f"/tcp/{first_port}/" in a for a in offer.addrs)
    await _reaches(renter, offer)

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=20) == 0
    # the withdrawal, not the offer's expiry (300 s away), takes it out of the renter's book
    await until(lambda: renter.book.get(wallet) is None)
    assert renter.validator.withdrawn >= 1 and offer.expires_at > time.time() + 60
    # a dial to the old port fails: py-libp2p now blocks the peer for 60 s
    with pytest.raises(NetworkError):
        await renter.node.open_stream(peer, NEGOTIATE_PROTOCOL, max_frame_bytes=1024, read_timeout_s=5)

    (network.workdir / "provider-c.addr").unlink()  # the same identity (data dir), another port
    proc = network.provider("provider-c", "RTX 3090:24576:1", 150, "--port", str(second_port))
    assert proc.addr.split("/p2p/")[1] == peer
    await until(lambda: (e := renter.book.get(wallet)) is not None and e.offer.seq > offer.seq, timeout=45)
    fresh = renter.book.get(wallet).offer
    assert any(f"/tcp/{second_port}/" in a for a in fresh.addrs)
    await _reaches(renter, fresh)  # dialled at its newest offer's address, at once
