"""The provider's forward and shell servers over in-memory streams: who may reach a job, which
ports, and the bounds (connections, idle time, bytes per second, the job's end)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.errors import ExecutorFailure, StreamError
from dgpu.node.services.forward import AccessPolicy, ForwardServer, Grants
from dgpu.node.services.shell import ShellServer
from dgpu.protocol.envelope import ReplayCache, open_envelope, seal
from dgpu.protocol.forward import (
    TO_RENTER_ACCESS,
    AccessGranted,
    ForwardOpen,
    ShellFrame,
    ShellOpen,
    parse_exit,
    parse_shell_frame,
    resize_frame,
    shell_frame,
    signal_frame,
)
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import JobRequest, Reject
from dgpu.protocol.peers import peer_id_of_wallet

NOW = 50_000
JOB = "ab" * 32
Pair = Callable[..., tuple[FramedStream, FramedStream]]


def request(renter: SigningKey, provider: SigningKey, ports: tuple[int, ...] = (8080,)) -> JobRequest:
    return JobRequest(request_id="01" * 8, renter=renter.public_key.wallet, provider=provider.public_key.wallet,
                      offer_seq=1, image="busybox", command=("sh",), max_minutes=5, max_price_per_minute=10,
                      forward_ports=ports)


class EchoAccess:
    """The job as the JobAccess port shows it: each connection echoes what it gets until EOF."""

    def __init__(self, nursery: trio.Nursery, *, refuse: bool = False) -> None:
        self.nursery = nursery
        self.refuse = refuse
        self.connected: list[int] = []
        self.shells: list[FakeShell] = []

    async def connect(self, job_id: str, port: int) -> Any:
        if self.refuse:
            raise ExecutorFailure("connection refused")
        self.connected.append(port)
        ours, theirs = trio.testing.memory_stream_pair()

        async def echo() -> None:
            async with theirs:
                while data := await theirs.receive_some(65536):
                    await theirs.send_all(data)

        self.nursery.start_soon(echo)
        return ours

    async def shell(self, job_id: str, argv: Sequence[str], *, rows: int, cols: int, tty: bool) -> Any:
        proc = FakeShell(list(argv), rows, cols)
        self.shells.append(proc)
        return proc


class FakeShell:
    """A command that echoes its input, records window sizes and signals, and exits 7 at EOF."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.argv, self.sizes, self.signals = argv, [(rows, cols)], []
        self.send, self.recv = trio.open_memory_channel[bytes](16)
        self.killed = False

    async def read(self, max_bytes: int) -> bytes:
        try:
            return await self.recv.receive()
        except trio.EndOfChannel:
            return b""

    async def write(self, data: bytes) -> None:
        await self.send.send(b"echo:" + data)

    async def close_input(self) -> None:
        await self.send.aclose()

    async def resize(self, rows: int, cols: int) -> None:
        self.sizes.append((rows, cols))

    async def signal(self, signum: int) -> None:
        self.signals.append(signum)

    async def wait(self) -> int:
        return 7

    async def kill(self) -> None:
        self.killed = True


class World:
    def __init__(self, nursery: trio.Nursery, pair: Pair, policy: AccessPolicy) -> None:
        self.provider, self.renter = SigningKey(secrets.token_bytes(32)), SigningKey(secrets.token_bytes(32))
        self.nursery, self.pair = nursery, pair
        self.grants = Grants(policy)
        self.access = EchoAccess(nursery)
        self.clock = lambda: NOW
        self.forward = ForwardServer(self.provider, self.grants, self.access, clock=self.clock, nonce=self.nonce)
        self.shell = ShellServer(self.provider, self.grants, self.access, clock=self.clock, nonce=self.nonce)
        self.handled = 0

    @staticmethod
    def nonce() -> bytes:
        return secrets.token_bytes(16)

    def run_job(self, ports: tuple[int, ...] = (8080,)) -> None:
        self.grants.open(JOB, request(self.renter, self.provider, ports), self.renter.public_key)

    async def open(self, server: Any, opening: Any, key: SigningKey | None = None,
                   peer: str | None = None) -> tuple[FramedStream, AccessGranted | Reject, trio.Event]:
        key = key or self.renter
        srv, cli = self.pair(peer if peer is not None else peer_id_of_wallet(key.public_key.wallet))
        done = trio.Event()

        async def serve() -> None:
            try:
                await server.handle(srv)
            finally:
                await srv.close()
                done.set()

        self.nursery.start_soon(serve)
        await cli.write_frame(seal(opening, key, nonce=self.nonce(), issued_at=NOW, expires_at=NOW + 60))
        answer = open_envelope(await cli.read_frame(), TO_RENTER_ACCESS, now=NOW, replay_cache=ReplayCache(8),
                               expected_signer=self.provider.public_key).message
        return cli, answer, done


@pytest.fixture
async def world(framed_pair: Pair) -> Any:
    async with trio.open_nursery() as nursery:
        yield lambda **policy: World(nursery, framed_pair, AccessPolicy(**policy))
        nursery.cancel_scope.cancel()


async def test_a_forward_carries_bytes_both_ways_and_ends_on_eof(world: Any) -> None:
    w = world(allow_forward=True)
    w.run_job()
    cli, answer, done = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    assert isinstance(answer, AccessGranted) and w.access.connected == [8080]
    await cli.write_frame(b"ping")
    assert await cli.read_frame() == b"ping"
    await cli.write_frame(b"")  # our half-close: the job's side ends, and so does its answer
    assert await cli.read_frame() == b""
    with trio.fail_after(5):
        await done.wait()
    assert w.grants.get(JOB) is not None and w.grants.get(JOB).live == 0


@pytest.mark.parametrize(("case", "expected"), [
    ("policy_off", "does not allow forward"),
    ("no_job", "no such job"),
    ("stranger", "only the renter"),
    ("other_peer", "only the renter"),
    ("unasked_port", "not asked for"),
    ("ended", "no such job"),
])
async def test_forward_refusals(world: Any, case: str, expected: str) -> None:
    w = world(allow_forward=case != "policy_off")
    if case != "no_job":
        w.run_job()
    if case == "ended":
        w.grants.end(JOB)
    stranger = SigningKey(secrets.token_bytes(32))
    key = stranger if case == "stranger" else None
    peer = peer_id_of_wallet(stranger.public_key.wallet) if case == "other_peer" else None
    port = 9999 if case == "unasked_port" else 8080
    _, answer, _ = await w.open(w.forward, ForwardOpen(job_id=JOB, port=port), key=key, peer=peer)
    assert isinstance(answer, Reject) and expected in answer.message
    assert w.access.connected == []  # nothing was connected inside the job


async def test_a_port_the_job_does_not_serve_is_refused_with_the_reason(world: Any) -> None:
    w = world(allow_forward=True)
    w.run_job()
    w.access.refuse = True
    _, answer, _ = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    assert isinstance(answer, Reject) and "connection refused" in answer.message


async def test_connections_per_rental_are_bounded(world: Any) -> None:
    w = world(allow_forward=True, allow_shell=True, max_connections=2)
    w.run_job()
    _held1, a, _ = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    _held2, b, _ = await w.open(w.shell, ShellOpen(job_id=JOB))
    _, c, _ = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    assert isinstance(a, AccessGranted) and isinstance(b, AccessGranted)
    assert isinstance(c, Reject) and c.code == "busy"


async def test_the_job_ending_cuts_its_connections(world: Any) -> None:
    w = world(allow_forward=True)
    w.run_job()
    cli, answer, done = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    assert isinstance(answer, AccessGranted)
    w.grants.end(JOB)
    with trio.fail_after(5):
        await done.wait()
    with pytest.raises(StreamError):
        await cli.read_frame()


async def test_an_idle_connection_is_closed(world: Any, autojump_clock: trio.testing.MockClock) -> None:
    w = world(allow_forward=True, idle_timeout_s=30.0)
    w.run_job()
    cli, _, done = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    start = trio.current_time()
    await done.wait()
    assert trio.current_time() - start >= 30.0
    with pytest.raises(StreamError):
        await cli.read_frame(timeout_s=3600)


async def test_bytes_per_second_are_bounded(world: Any, autojump_clock: trio.testing.MockClock) -> None:
    w = world(allow_forward=True, bytes_per_second=10_000)
    w.run_job()
    cli, _, _ = await w.open(w.forward, ForwardOpen(job_id=JOB, port=8080))
    start = trio.current_time()
    received = 0
    for _ in range(10):  # 100 kB through a 10 kB/s bucket (one second's burst allowed)
        await cli.write_frame(b"x" * 10_000)
        received += len(await cli.read_frame())
    assert received == 100_000
    assert trio.current_time() - start >= 8.0  # virtual time: the bucket made the job wait


async def test_the_shell_passes_keys_sizes_signals_and_the_exit_code(world: Any) -> None:
    w = world(allow_shell=True)
    w.run_job()
    cli, answer, done = await w.open(w.shell, ShellOpen(job_id=JOB, argv=("sh",), rows=30, cols=90))
    assert isinstance(answer, AccessGranted)
    await cli.write_frame(shell_frame(ShellFrame.DATA, b"ls\n"))
    assert parse_shell_frame(await cli.read_frame()) == (ShellFrame.DATA, b"echo:ls\n")
    await cli.write_frame(resize_frame(50, 120))
    await cli.write_frame(signal_frame(2))
    await cli.write_frame(b"\x09junk")  # an unknown kind is ignored, the session goes on
    await cli.write_frame(shell_frame(ShellFrame.EOF))
    kind, payload = parse_shell_frame(await cli.read_frame())
    assert kind is ShellFrame.EXIT and parse_exit(payload) == 7
    with trio.fail_after(5):
        await done.wait()
    (proc,) = w.access.shells
    assert proc.argv == ["sh"] and proc.sizes == [(30, 90), (50, 120)] and proc.signals == [2] and proc.killed


async def test_a_stranger_gets_no_shell_and_shells_are_off_by_default(world: Any) -> None:
    w = world(allow_shell=True)
    w.run_job()
    _, answer, _ = await w.open(w.shell, ShellOpen(job_id=JOB), key=SigningKey(secrets.token_bytes(32)))
    assert isinstance(answer, Reject) and "only the renter" in answer.message
    off = world()
    off.run_job()
    _, answer, _ = await off.open(off.shell, ShellOpen(job_id=JOB))
    assert isinstance(answer, Reject) and "does not allow shell" in answer.message
    assert w.access.shells == [] and off.access.shells == []
