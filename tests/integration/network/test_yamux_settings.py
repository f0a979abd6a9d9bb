"""The node's yamux settings (``YAMUX_SETTINGS``): a reader does not answer every read with a
WINDOW_UPDATE frame, which py-libp2p 0.8.1 does by default (one more encrypted write for each
gossip RPC a node receives). An operator's own ``PY_YAMUX_*`` setting still wins.

The count comes from py-libp2p's own per-stream counter of updates sent for bytes read
(``_window_update_bytes_read_only``, pinned version): it is how the library tells the path taken.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio

from dgpu.node.adapters.p2p import YAMUX_SETTINGS, P2PConfig, open_node
from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.protocol.keys import SigningKey

SINK = "/dgpu-test/sink/1.0.0"
FRAMES = 40
RELEASE_ON_READ = "PY_YAMUX_RELEASE_ON_READ"


async def _updates_for_bytes_read() -> int:
    """Stream FRAMES frames, each read on its own; the reader's count of per-read updates."""
    read_one = trio.Semaphore(0)
    counted: list[int] = []

    async def sink(fs: FramedStream) -> None:
        for _ in range(FRAMES):
            await fs.read_frame()
            read_one.release()
        yamux: Any = fs.raw.muxed_stream  # type: ignore[attr-defined]
        counted.append(yamux._window_update_bytes_read_only)

    config = P2PConfig(gossip=None)
    async with open_node(SigningKey(secrets.token_bytes(32)), config) as reader, \
            open_node(SigningKey(secrets.token_bytes(32)), config) as writer:
        reader.set_handler(SINK, sink, max_frame_bytes=4096, read_timeout_s=30)
        await writer.connect(reader.multiaddr)
        fs = await writer.open_stream(reader.peer_id, SINK, max_frame_bytes=4096, read_timeout_s=30)
        with trio.fail_after(60):
            for _ in range(FRAMES):
                await fs.write_frame(b"x" * 1000)
                await read_one.acquire()  # one frame per read: no coalescing hides the updates
            while not counted:
                await trio.sleep(0.01)
        await fs.close()
    return counted[0]


async def test_a_node_does_not_send_a_window_update_for_every_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RELEASE_ON_READ, raising=False)
    assert await _updates_for_bytes_read() == 0
    assert YAMUX_SETTINGS[RELEASE_ON_READ] == "0"


async def test_the_operators_own_yamux_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RELEASE_ON_READ, "1")  # py-libp2p's default: an update on (almost) every read
    assert await _updates_for_bytes_read() >= FRAMES // 4
