"""Connection and stream bounds that are given back when their holder goes away.

The node under test runs in the test's trio loop; the strangers that wear its bounds down run
in a separate OS process (``_STRANGER``: fresh identities that connect and leave, one after
another), as they would on a real network. py-libp2p 0.8.1 alone never returns an inbound
connection slot, so on it the newcomer at the end of the first test is refused.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap

import pytest
import trio

from dgpu.node.adapters.p2p import P2PConfig, P2PNode, open_node
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.errors import NetworkError
from dgpu.protocol.ids import JOB_PROTOCOL, NEGOTIATE_PROTOCOL
from dgpu.protocol.keys import SigningKey

ECHO = "/dgpu-test/echo/1.0.0"

_STRANGER = textwrap.dedent("""
    import secrets, sys, trio
    from dgpu.node.adapters.p2p import P2PConfig, open_node
    from dgpu.protocol.keys import SigningKey

    async def main(target: str, times: int) -> None:
        for _ in range(times):
            async with open_node(SigningKey(secrets.token_bytes(32)), P2PConfig(gossip=None)) as node:
                await node.connect(target)
            print("left", flush=True)

    trio.run(main, sys.argv[1], int(sys.argv[2]))
""")


async def _echo(fs: FramedStream) -> None:
    await fs.write_frame(await fs.read_frame())


async def _round_trip(node: P2PNode, peer: str, protocol: str) -> bytes:
    fs = await node.open_stream(peer, protocol, max_frame_bytes=1024, read_timeout_s=10)
    try:
        await fs.write_frame(b"ping")
        return await fs.read_frame()
    finally:
        await fs.close()


async def _wait_for(pred: object, timeout_s: float = 30.0) -> None:
    with trio.fail_after(timeout_s):
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.05)


def _fresh() -> SigningKey:
    return SigningKey(secrets.token_bytes(32))


async def test_connections_far_beyond_the_cap_leave_room_for_a_newcomer() -> None:
    cap = 6
    async with open_node(_fresh(), P2PConfig(gossip=None, max_connections=cap)) as target:
        target.set_handler(ECHO, _echo, max_frame_bytes=1024, read_timeout_s=10)
        # 5 x the cap, one after another, from a separate process
        strangers = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", _STRANGER, target.multiaddr, str(5 * cap)],
            capture_output=True, text=True, timeout=300, check=False))
        assert strangers.returncode == 0, strangers.stderr[-2000:]
        assert strangers.stdout.count("left") == 5 * cap
        await _wait_for(lambda: target.connections.live == 0)
        async with open_node(_fresh(), P2PConfig(gossip=None)) as newcomer:
            await newcomer.connect(target.multiaddr)
            assert await _round_trip(newcomer, target.peer_id, ECHO) == b"ping"
        assert target.connections.refused["inbound_total"] == 0


async def test_one_address_gets_only_its_share_of_connections() -> None:
    config = P2PConfig(gossip=None, max_connections=32, max_connections_per_ip=3, limit_loopback=True)
    async with open_node(_fresh(), config) as target, trio.open_nursery() as nursery:
        target.set_handler(ECHO, _echo, max_frame_bytes=1024, read_timeout_s=10)
        held: list[P2PNode] = []
        stop = trio.Event()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with open_node(_fresh(), P2PConfig(gossip=None)) as node:
                held.append(node)
                try:
                    await node.connect(target.multiaddr)
                    await _round_trip(node, target.peer_id, ECHO)
                except NetworkError:
                    pass  # refused: what the bound is for
                task_status.started()
                await stop.wait()

        for _ in range(6):
            await nursery.start(hold)
        assert target.connections.live == 3
        assert target.connections.refused["inbound_per_ip"] >= 1
        stop.set()
        await _wait_for(lambda: target.connections.live == 0)
        async with open_node(_fresh(), P2PConfig(gossip=None)) as newcomer:
            await newcomer.connect(target.multiaddr)
            assert await _round_trip(newcomer, target.peer_id, ECHO) == b"ping"


@pytest.mark.parametrize("idle_peers", [17])
async def test_idle_negotiate_streams_cannot_starve_job_streams_or_renters(idle_peers: int) -> None:
    async with open_node(_fresh(), P2PConfig(gossip=None, max_connections=64)) as provider, \
            open_node(_fresh(), P2PConfig(gossip=None)) as renter, trio.open_nursery() as nursery:
        for protocol in (NEGOTIATE_PROTOCOL, JOB_PROTOCOL):
            provider.set_handler(protocol, _echo, max_frame_bytes=1024, read_timeout_s=30)
        opened = 0
        stop = trio.Event()

        async def squat(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal opened
            async with open_node(_fresh(), P2PConfig(gossip=None)) as node:
                await node.connect(provider.multiaddr)
                streams = []
                for _ in range(8):  # idle: they never send a JobRequest
                    try:
                        streams.append(await node.open_stream(
                            provider.peer_id, NEGOTIATE_PROTOCOL, max_frame_bytes=1024, read_timeout_s=5))
                        opened += 1
                    except NetworkError:
                        pass
                task_status.started()
                await stop.wait()

        for _ in range(idle_peers):
            await nursery.start(squat)
        await renter.connect(provider.multiaddr)
        # another protocol's budget is untouched by the squatters
        assert await _round_trip(renter, provider.peer_id, JOB_PROTOCOL) == b"ping"
        # the squatters' silent streams lose their slots at the first-frame deadline
        with trio.fail_after(60):
            while True:
                try:
                    assert await _round_trip(renter, provider.peer_id, NEGOTIATE_PROTOCOL) == b"ping"
                    break
                except NetworkError:
                    await trio.sleep(0.5)
        assert provider.refused_by_protocol[NEGOTIATE_PROTOCOL] > 0
        stop.set()
