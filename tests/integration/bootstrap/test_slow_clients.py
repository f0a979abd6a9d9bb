"""Slow and greedy clients against a real bootstrap server on 127.0.0.1 (issue 14, item 3).

The attacks: a crowd of sockets that never finish their request head (the server used to answer
503 to everyone once they filled its connection limit), an upload at 1 byte/s (it used to be
accepted indefinitely), and connections over the per-address bound (their share must come back
when they close). Deadlines are generous; nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from pathlib import Path

import pytest
import trio

from dgpu.node.adapters.http_server import ConnectionLimits

from .harness import bootstrap_server, new_user

#: sockets held open by the attack: the issue's 1,100, over the 1,024 connections the server
#: used to allow in all (it then answered 503 to everyone)
SLOW = 1100
PARTIAL_HEAD = b"GET /api/v1/auth/jwks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    """Room for the attack's sockets and the server's side of them, in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * SLOW
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"this test needs {need} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


async def _connect(port: int, source: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def _read_to_eof(sock: trio.socket.SocketType, limit: int = 64 * 1024) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = await sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def _status_and_code(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, str(json.loads(body)["error"]["code"])


async def _count_closed_by_server(socks: list[trio.socket.SocketType], at_least: int) -> int:
    """Wait (10 s at most) until ``at_least`` of ``socks`` see the server close them."""
    closed = 0
    enough = trio.Event()

    async def watch(sock: trio.socket.SocketType) -> None:
        nonlocal closed
        with contextlib.suppress(OSError):  # a reset is a close too
            await _read_to_eof(sock)
        closed += 1
        if closed >= at_least:
            enough.set()

    async with trio.open_nursery() as nursery:
        for sock in socks:
            nursery.start_soon(watch, sock)
        with trio.move_on_after(10):
            await enough.wait()
        nursery.cancel_scope.cancel()
    return closed


@pytest.mark.parametrize(
    ("sources", "limits"),
    [
        # one attacker on the request's own address (as every client of a node's local API)
        (["127.0.0.1"], ConnectionLimits()),
        # many attackers, each under the per-address bound, together over the total bound
        ([f"127.0.0.{i}" for i in range(2, 12)], ConnectionLimits(max_connections=200)),
    ],
    ids=["one-address", "many-addresses"],
)
async def test_a_crowd_of_unfinished_heads_does_not_lock_out_a_request(
    tmp_path: Path, sources: list[str], limits: ConnectionLimits
) -> None:
    async with bootstrap_server(tmp_path, connections=limits) as h:
        port = int(h.base_url.rsplit(":", 1)[1])
        slow = []
        try:
            for i in range(SLOW):
                sock = await _connect(port, sources[i % len(sources)])
                slow.append(sock)
                await sock.send(PARTIAL_HEAD)
            with trio.fail_after(10):
                r = await h.client.get("/api/v1/auth/jwks")
            assert r.status_code == 200, r.text
            assert r.json()["keys"]
            # the server holds no more of them than its bounds allow: the others were displaced
            held = min(limits.max_connections, len(sources) * limits.max_connections_per_address)
            assert await _count_closed_by_server(slow, SLOW - held) >= SLOW - held
        finally:
            for sock in slow:
                sock.close()


async def test_an_unfinished_head_gets_408_and_a_silent_socket_is_closed(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, connections=ConnectionLimits(header_timeout_s=1)) as h:
        port = int(h.base_url.rsplit(":", 1)[1])
        partial, silent = await _connect(port), await _connect(port)
        with partial, silent:
            await partial.send(PARTIAL_HEAD)
            with trio.fail_after(20):
                assert _status_and_code(await _read_to_eof(partial)) == (408, "header_timeout")
                assert await _read_to_eof(silent) == b""


async def test_an_upload_at_one_byte_per_second_is_refused(tmp_path: Path) -> None:
    """With the default bounds (500 bytes/s over 10 s): refused, and nothing is kept."""
    async with bootstrap_server(tmp_path) as h:
        _, auth = await new_user(h.client)
        port = int(h.base_url.rsplit(":", 1)[1])
        sock = await _connect(port)
        with sock:
            await sock.send(
                b"PUT /api/v1/storage/data/slow.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: " + auth["authorization"].encode() + b"\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
            )

            async def trickle() -> None:
                for _ in range(1000):
                    await sock.send(b"x")
                    await trio.sleep(1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                with trio.fail_after(60):
                    answer = await _read_to_eof(sock)
                nursery.cancel_scope.cancel()
        assert _status_and_code(answer) == (408, "upload_too_slow")
        r = await h.client.get("/api/v1/storage/data/slow.bin", headers=auth)
        assert r.status_code == 404, r.text


async def test_the_per_address_bound_refuses_busy_excess_and_is_released_on_close(tmp_path: Path) -> None:
    limits = ConnectionLimits(max_connections_per_address=3, min_upload_rate=0, body_timeout_s=120)
    async with bootstrap_server(tmp_path, connections=limits) as h:
        port = int(h.base_url.rsplit(":", 1)[1])
        busy = []
        try:
            with trio.fail_after(20):
                # three requests whose bodies are still arriving: busy, so never displaced
                for _ in range(3):
                    sock = await _connect(port, "127.0.0.3")
                    busy.append(sock)
                    await sock.send(b"POST /api/v1/auth/challenge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                                    b"Expect: 100-continue\r\n\r\n")
                    # the server has read the head and the app waits for the body
                    assert (await sock.recv(100)).startswith(b"HTTP/1.1 100 ")
                    await sock.send(b'{"wal')
                extra = await _connect(port, "127.0.0.3")
                with extra:
                    assert _status_and_code(await _read_to_eof(extra)) == (503, "too_many_connections_from_address")
                # another address is not affected
                assert (await h.client.get("/healthz")).status_code == 200
                busy.pop().close()
                # once the server has seen that close, the address has room again
                while True:
                    again = await _connect(port, "127.0.0.3")
                    with again:
                        await again.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                        answer = await _read_to_eof(again)
                    if answer.split(b" ", 2)[1] == b"200":
                        break
                    assert _status_and_code(answer) == (503, "too_many_connections_from_address")
                    await trio.sleep(0.1)
        finally:
            for sock in busy:
                sock.close()
