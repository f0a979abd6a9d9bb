"""Discovery through a bootstrap node; offers reach every node; bad messages are rejected."""

from __future__ import annotations

import secrets
import signal
import time
from typing import Any

import pytest
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from dgpu.node.adapters.keystore import libp2p_key_pair
from dgpu.node.adapters.p2p_framing import encode_frame
from dgpu.protocol.envelope import seal
from dgpu.protocol.ids import OFFERS_TOPIC
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import GpuSpec, Offer

pytestmark = pytest.mark.integration

MINT = SigningKey(b"\x07" * 32).public_key.wallet


def _offer(key: SigningKey, *, seq: int, now: int, ttl: int = 300) -> Offer:
    return Offer(provider=key.public_key.wallet,
                 gpus=(GpuSpec(model="RTX 4090", vram_mib=24576, simulated=True),),
                 price_per_minute=1, mint=MINT, ledger="dev", seq=seq, issued_at=now,
                 expires_at=now + ttl)


def _sealed(offer: Offer, key: SigningKey, *, now: int, ttl: int = 300) -> bytes:
    return seal(offer, key, nonce=secrets.token_bytes(16), issued_at=now, expires_at=now + ttl)


async def test_discovery_and_offers_reach_every_node(network: Any, renter: Any, until: Any) -> None:
    a, b = network.procs["provider-a"], network.procs["provider-b"]
    wa, wb = a.key().public_key.wallet, b.key().public_key.wallet
    # the renter found both providers through the bootstrap node's rendezvous
    await until(lambda: {a.addr.split("/p2p/")[1], b.addr.split("/p2p/")[1]}
                <= set(renter.node.connected_peers()))
    # a fresh republish from each provider reaches the renter and the other provider
    a.popen.send_signal(signal.SIGUSR1)
    b.popen.send_signal(signal.SIGUSR1)
    await until(lambda: renter.book.get(wa) is not None and renter.book.get(wb) is not None)
    await until(lambda: b.status()["offers"].get(wa) == a.status()["own_seq"]
                and a.status()["offers"].get(wb) == b.status()["own_seq"])
    assert renter.book.get(wa).offer.simulated
    # what offer sync brought each provider is in its status (and on /metrics)
    assert all(set(p.status()["synced"]) == {"join", "refresh", "refreshes"} for p in (a, b))


async def _raw_pubsub_frame(renter: Any, peer: str, payload: bytes) -> None:
    stream = await renter.node.host.new_stream(ID.from_base58(peer), [PROTOCOL_ID_V11])
    await stream.write(encode_frame(payload))
    await stream.close()


def _signed_pubsub_msg(key: SigningKey, data: bytes) -> rpc_pb2.Message:
    """A pubsub message as `key`'s libp2p identity would publish it (origin = key)."""
    kp = libp2p_key_pair(key)
    msg = rpc_pb2.Message(data=data, topicIDs=[OFFERS_TOPIC],
                          from_id=ID.from_pubkey(kp.public_key).to_bytes(),
                          seqno=secrets.token_bytes(8))
    msg.signature = kp.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = kp.public_key.serialize()
    return msg


async def test_bad_messages_are_rejected_and_every_node_keeps_working(
        network: Any, renter: Any, until: Any) -> None:
    a, b = network.procs["provider-a"], network.procs["provider-b"]
    key_a = a.key()
    peer_a, peer_b = a.addr.split("/p2p/")[1], b.addr.split("/p2p/")[1]
    await until(lambda: {peer_a, peer_b} <= set(renter.node.topic_peers(OFFERS_TOPIC)))
    # router.publish sends to mesh peers: wait until both providers are in our mesh
    mesh = renter.node.pubsub.router.mesh
    await until(lambda: {peer_a, peer_b} <= {str(p) for p in mesh.get(OFFERS_TOPIC, ())})
    now = int(time.time())
    before = [a.status(), b.status()]
    ps = renter.node.pubsub

    # signed pubsub messages from our own identity, sent through the router directly:
    # ps.publish would run our own validator first and never send them
    async def inject(data: bytes, origin: SigningKey | None = None) -> None:
        await ps.router.publish(ps.my_id, _signed_pubsub_msg(origin or mine, data))

    mine = renter.key
    # 1. forged: an offer naming provider A, signed by another key
    other = SigningKey(secrets.token_bytes(32))
    await inject(_sealed(_offer(key_a, seq=10**15, now=now), other, now=now))
    # 2. expired: our own valid signature, but past its expiry
    await inject(_sealed(_offer(mine, seq=1, now=now - 1000), mine, now=now - 1000))
    # 3. replayed older seq: provider A's genuine key, an old seq, relayed by us (gossipsub
    #    never sends a message back to its origin, so only B sees this one)
    await inject(_sealed(_offer(key_a, seq=5, now=now), key_a, now=now), key_a)
    # 4. oversized: 50 KB (under the frame cap, over the offer limit)
    await inject(b"x" * 50_000)
    # 5. malformed payload through the normal path
    await inject(b'{"v":1,"type":"offer"}')
    # raw frames last: each one makes the receiver drop our pubsub stream
    bad_key = rpc_pb2.Message(data=b"{}", topicIDs=[OFFERS_TOPIC], from_id=b"\x00\x01garbage",
                              seqno=b"\x00" * 8, signature=b"\x01" * 64, key=b"\xff\xfe\xfd")
    big = _signed_pubsub_msg(mine, b"x" * 100_000)
    for peer in (peer_a, peer_b):
        # 6. a frame that is not a protobuf RPC
        await _raw_pubsub_frame(renter, peer, b"\xff\xff\xff\xff\x0f" + b"\x00" * 20)
        # 7. a message whose key/from fields are garbage
        await _raw_pubsub_frame(renter, peer, rpc_pb2.RPC(publish=[bad_key]).SerializeToString())
        # 8. a 100 KB frame (over the inbound RPC cap)
        await _raw_pubsub_frame(renter, peer, rpc_pb2.RPC(publish=[big]).SerializeToString())

    def rejected(status: dict[str, Any], reason: str, i: int) -> int:
        return status["rejected"].get(reason, 0) - before[i]["rejected"].get(reason, 0)

    await until(lambda: all(
        rejected(p.status(), "signer_not_sender", i) >= 1
        and rejected(p.status(), "expired", i) >= 1
        and rejected(p.status(), "invalid_request", i) >= 1
        and p.status()["guard_drops"]["oversize"] >= 1
        and p.status()["guard_drops"]["bad_message"] >= 1
        for i, p in enumerate((a, b))))
    await until(lambda: rejected(b.status(), "stale_seq", 1) >= 1)
    for p in (a, b):
        s = p.status()
        assert s["offers"].get(mine.public_key.wallet) is None
        assert s["offers"].get(key_a.public_key.wallet) != 10**15
    assert a.alive and b.alive
    # every node keeps working: fresh offers still cross between the providers
    for src, dst in ((b, a), (a, b)):
        seq0 = src.status()["own_seq"]
        src.popen.send_signal(signal.SIGUSR1)
        w = src.key().public_key.wallet
        await until(lambda src=src, seq0=seq0: src.status()["own_seq"] != seq0)
        await until(lambda src=src, dst=dst, w=w:
                    dst.status()["offers"].get(w) == src.status()["own_seq"])
    assert a.alive and b.alive
