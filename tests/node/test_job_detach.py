"""The job stream's detach, re-attach and heartbeats, in memory: the provider's JobServer against
hand-driven renter streams (and the renter's ``run_job`` against the server), on trio's autojump
clock so heartbeat intervals and the silence bound pass without wall time."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

from dgpu.node.adapters.p2p_framing import FramedStream
from dgpu.node.errors import ProviderSilentError
from dgpu.node.ports.execution import ExitReason, ExitStatus, JobHandle, JobSpec, ResourceLimits
from dgpu.node.ports.execution import LogChunk as ExecLogChunk
from dgpu.node.services.job_renter import run_job
from dgpu.node.services.job_stream import JobServer
from dgpu.protocol.envelope import open_envelope, seal
from dgpu.protocol.job_frames import HEARTBEAT_INTERVAL_S, SILENCE_BOUND_S, TO_RENTER_JOB_V2, JobAttach, JobHeartbeat
from dgpu.protocol.job_session import JobSession
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import (
    Agreement,
    JobState,
    JobStatus,
    JobSubmit,
    LogChunk,
    Offer,
    Reject,
    RejectCode,
)
from tests.node.test_negotiation_service import NOW, MemRaw, _exchange, _provider, _request


class HeldHandleForTests:
    """TEST DOUBLE of a running job (in-memory tests only): logs are what the test sends, it
    ends when the test says so (or when stopped)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.send, self._receive = trio.open_memory_channel[bytes](16)
        self.ended = trio.Event()
        self.stopped = trio.Event()
        self.status = ExitStatus(0, ExitReason.FINISHED)

    async def logs(self) -> AsyncIterator[ExecLogChunk]:
        seq = 0
        async with self._receive:
            async for data in self._receive:
                yield ExecLogChunk(seq=seq, stream="stdout", data=data)
                seq += 1

    async def wait(self) -> ExitStatus:
        await self.ended.wait()
        return self.status

    async def finish(self) -> None:
        await self.send.aclose()
        self.ended.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        self.stopped.set()
        self.status = ExitStatus(None, ExitReason.CANCELLED)
        await self.finish()

    async def cleanup(self) -> None:
        pass


class HeldExecutorForTests:
    def __init__(self) -> None:
        self.handles: list[HeldHandleForTests] = []
        self.started = trio.Event()

    async def start(self, spec: JobSpec, limits: ResourceLimits) -> JobHandle:
        handle = HeldHandleForTests(spec.job_id)
        self.handles.append(handle)
        self.started.set()
        return handle


def pipe() -> tuple[FramedStream, FramedStream]:
    a, b = trio.testing.memory_stream_pair()
    return (FramedStream(MemRaw(a), max_frame_bytes=65536, read_timeout_s=5),
            FramedStream(MemRaw(b), max_frame_bytes=65536, read_timeout_s=5))


def sealed(message: Any, key: SigningKey) -> bytes:
    return seal(message, key, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + 60)


async def agreed(key: SigningKey, renter: SigningKey, offer_factory: Callable[..., Offer], **request: Any
                 ) -> tuple[JobServer, HeldExecutorForTests, Agreement]:
    offer = offer_factory(key, seq=3, now=NOW, executors=("script",))
    prov = _provider(offer, key)
    agreement = (await _exchange(prov, renter, _request(renter, offer, **request)))[1]
    assert isinstance(agreement, Agreement)
    executor = HeldExecutorForTests()
    server = JobServer(key, prov.agreements, prov.inventory, executor_for=lambda e: executor,
                       limits_cap=ResourceLimits(), clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))
    return server, executor, agreement


async def read(fs: FramedStream, session: JobSession | None = None) -> Any:
    msg = open_envelope(await fs.read_frame(timeout_s=60), TO_RENTER_JOB_V2, now=NOW, max_bytes=65536).message
    if session is not None:
        session.receive(msg)
    return msg


async def until_log(fs: FramedStream, session: JobSession, text: str) -> None:
    while not (isinstance(msg := await read(fs, session), LogChunk) and msg.data == text):
        pass


async def test_a_job_runs_on_when_its_renter_goes_and_the_renter_re_attaches_for_the_rest(
        key: SigningKey, offer_factory: Callable[..., Offer], autojump_clock: trio.testing.MockClock) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    server, executor, agreement = await agreed(key, renter, offer_factory)
    provider_end, renter_end = pipe()
    async with trio.open_nursery() as n:
        n.start_soon(server.handle_v2, provider_end)
        await renter_end.write_frame(sealed(JobSubmit(agreement=agreement), renter))
        first = JobSession(agreement.agreement_id)
        await executor.started.wait()
        handle = executor.handles[0]
        await handle.send.send(b"one\n")
        await until_log(renter_end, first, "one\n")
        await renter_end.close()  # the renter's node goes away mid-job
        await handle.send.send(b"two\n")
        await handle.send.send(b"three\n")
        await trio.sleep(30 * HEARTBEAT_INTERVAL_S)  # long after the provider saw the stream break
        assert not handle.stopped.is_set()  # a batch job runs on without its renter

        again_provider, again_renter = pipe()
        n.start_soon(server.handle_v2, again_provider)
        await again_renter.write_frame(sealed(JobAttach(job_id=agreement.agreement_id,
                                                        log_offset=first.next_log_seq), renter))
        second = JobSession(agreement.agreement_id, attach_from=first.next_log_seq)
        await until_log(again_renter, second, "three\n")
        await handle.finish()
        logs: list[str] = []
        while not second.done:
            msg = await read(again_renter, second)
            if isinstance(msg, LogChunk):
                logs.append(msg.data)
        assert second.state is JobState.FINISHED and first.next_log_seq == 1 and second.next_log_seq == 3
        await again_renter.close()


async def test_stop_on_disconnect_stops_the_job_when_the_renter_goes(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    server, executor, agreement = await agreed(key, renter, offer_factory, stop_on_disconnect=True)
    provider_end, renter_end = pipe()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(server.handle_v2, provider_end)
            await renter_end.write_frame(sealed(JobSubmit(agreement=agreement), renter))
            await executor.started.wait()
            await renter_end.close()
            await executor.handles[0].stopped.wait()
    assert server.running == set()


async def test_only_the_agreements_renter_may_re_attach(
        key: SigningKey, offer_factory: Callable[..., Offer]) -> None:
    renter, stranger = SigningKey(secrets.token_bytes(32)), SigningKey(secrets.token_bytes(32))
    server, executor, agreement = await agreed(key, renter, offer_factory)
    provider_end, renter_end = pipe()
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(server.handle_v2, provider_end)
            await renter_end.write_frame(sealed(JobSubmit(agreement=agreement), renter))
            await executor.started.wait()
            spy_provider, spy = pipe()
            n.start_soon(server.handle_v2, spy_provider)
            await spy.write_frame(sealed(JobAttach(job_id=agreement.agreement_id), stranger))
            refused = await read(spy)
            assert isinstance(refused, Reject) and refused.code is RejectCode.BAD_SIGNATURE
            unknown_provider, lost = pipe()
            n.start_soon(server.handle_v2, unknown_provider)
            await lost.write_frame(sealed(JobAttach(job_id="ab" * 32), renter))
            refused = await read(lost)
            assert isinstance(refused, Reject) and refused.code is RejectCode.INVALID_REQUEST
            await executor.handles[0].finish()
            session = JobSession(agreement.agreement_id)
            while not session.done:
                await read(renter_end, session)
    assert session.state is JobState.FINISHED


async def test_a_quiet_job_gets_heartbeats(key: SigningKey, offer_factory: Callable[..., Offer],
                                           autojump_clock: trio.testing.MockClock) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    server, executor, agreement = await agreed(key, renter, offer_factory)
    provider_end, renter_end = pipe()
    async with trio.open_nursery() as n:
        n.start_soon(server.handle_v2, provider_end)
        await renter_end.write_frame(sealed(JobSubmit(agreement=agreement), renter))
        session = JobSession(agreement.agreement_id)
        beats: list[JobHeartbeat] = []
        while len(beats) < 3:
            msg = await read(renter_end, session)
            if isinstance(msg, JobHeartbeat):
                beats.append(msg)
        assert beats[-1].state is JobState.RUNNING and session.heartbeat == beats[-1]
        await executor.handles[0].finish()
        while not session.done:
            await read(renter_end, session)
        await renter_end.close()


class OneStreamNetworkForTests:
    """TEST DOUBLE of the network port (in-memory tests only): every stream opened is ``fs``."""

    def __init__(self, fs: FramedStream) -> None:
        self.fs = fs

    async def open_stream(self, peer: str, protocol: str, *, max_frame_bytes: int,
                          read_timeout_s: float) -> FramedStream:
        return self.fs


@pytest.mark.parametrize("finish_first", [False, True])
async def test_the_renter_gives_a_silent_provider_up_and_says_what_it_knew(
        key: SigningKey, offer_factory: Callable[..., Offer], autojump_clock: trio.testing.MockClock,
        finish_first: bool) -> None:
    renter = SigningKey(secrets.token_bytes(32))
    _, _, agreement = await agreed(key, renter, offer_factory)
    provider_end, renter_end = pipe()
    job_id = agreement.agreement_id

    async def hung_provider() -> None:  # answers, then falls silent (frozen), stream left open
        await provider_end.read_frame()
        for seq, state in enumerate([JobState.ACCEPTED, JobState.STARTING, JobState.RUNNING]
                                    + ([JobState.FINISHED] if finish_first else [])):
            await provider_end.write_frame(sealed(JobStatus(job_id=job_id, seq=seq, state=state, at=NOW,
                                                            exit_code=0 if state.terminal else None), key))
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        n.start_soon(hung_provider)
        t0 = trio.current_time()
        if finish_first:
            outcome = await run_job(OneStreamNetworkForTests(renter_end), renter, agreement, "peer",  # type: ignore[arg-type]
                                    clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))
            assert outcome.state is JobState.FINISHED and outcome.result is None
            assert "silent after the job finished" in outcome.reason
        else:
            with pytest.raises(ProviderSilentError) as info:
                await run_job(OneStreamNetworkForTests(renter_end), renter, agreement, "peer",  # type: ignore[arg-type]
                              clock=lambda: NOW, nonce=lambda: secrets.token_bytes(16))
            assert info.value.state == "running" and info.value.next_log_seq == 0
        assert trio.current_time() - t0 <= SILENCE_BOUND_S + 1  # the bound, on the virtual clock
        n.cancel_scope.cancel()
