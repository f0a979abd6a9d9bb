"""The per-minute meter: completed minutes, backfill after a restart, never twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from dgpu.node.adapters.store import Store, UsageMinute
from dgpu.node.ports.gpu import GpuSample
from dgpu.node.services.meter import Meter, build_usage_receipts

JOB = "0123456789abcdef"
AGREEMENT = "ab" * 32


class Sampler:
    def __init__(self) -> None:
        self.calls = 0

    async def sample(self, uuids: Sequence[str]) -> list[GpuSample]:
        self.calls += 1
        return [GpuSample(u, trio.current_time(), 10 * self.calls, 2 * 1024**3, 100_000, 60)
                for u in uuids]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # a threshold above zero: the store's worker-thread calls must not look like idleness
    return trio.testing.MockClock(autojump_threshold=0.2)


async def open_store(tmp_path: Path) -> Store:
    store = await Store.open(tmp_path / "m.db", clock=trio.current_time)
    await store.add_job(JOB, "r", "docker", {})
    return store


async def test_records_completed_minutes_with_samples(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    store = await open_store(tmp_path)
    sampler = Sampler()
    meter = Meter(store, sampler, interval_s=60, samples_per_interval=4, clock=trio.current_time)
    seen: list[UsageMinute] = []

    async def sink(m: UsageMinute) -> None:
        seen.append(m)

    started = trio.current_time()
    with trio.move_on_after(150):  # two full minutes and half of the third
        await meter.meter_job(JOB, started, ["GPU-a"], on_minute=sink)
    minutes = await store.minutes(JOB)
    assert [m.minute_index for m in minutes] == [0, 1] == [m.minute_index for m in seen]
    assert minutes[0].samples[0]["utilization_pct"] == 25  # mean of 10, 20, 30, 40
    assert minutes[0].samples[0]["n"] == 4 and not minutes[0].backfilled
    await meter.finish_job(JOB, started, trio.current_time())
    last = (await store.minutes(JOB))[-1]
    assert last.minute_index == 2 and abs(last.wall_seconds - 30) < 1e-6
    receipts = await build_usage_receipts(store, JOB, AGREEMENT)
    assert [(r.minute_index, r.minutes_total) for r in receipts] == [(0, 1), (1, 2), (2, 3)]
    assert receipts[0].gpus[0].memory_used_mib == 2048
    assert [r.minute_index for r in await build_usage_receipts(store, JOB, AGREEMENT,
                                                                from_index=2)] == [2]
    await store.close()


async def test_restart_backfills_and_never_repeats(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    store = await open_store(tmp_path)
    meter = Meter(store, None, interval_s=60, clock=trio.current_time)
    started = trio.current_time()
    with trio.move_on_after(130):  # "daemon" 1 records minutes 0, 1 then dies
        await meter.meter_job(JOB, started)
    first = await store.minutes(JOB)
    await trio.sleep(200)  # down for minutes 2..4 (the job kept running)
    meter2 = Meter(store, None, interval_s=60, clock=trio.current_time)
    with trio.move_on_after(70):
        await meter2.meter_job(JOB, started)
    minutes = await store.minutes(JOB)
    assert [m.minute_index for m in minutes] == list(range(len(minutes)))
    assert minutes[:2] == first  # untouched
    assert [m.minute_index for m in minutes if m.backfilled] == [2, 3, 4]
    # the end was at 400 s: a second finish call adds nothing
    await meter2.finish_job(JOB, started, started + 400)
    count = len(await store.minutes(JOB))
    await meter2.finish_job(JOB, started, started + 400)
    assert len(await store.minutes(JOB)) == count == 7  # 6 full + 40 s
    await store.close()


async def test_usage_stream_skips_no_minute_whose_notice_was_lost(tmp_path: Path) -> None:
    # the meter stores a minute, then is cancelled (the job ended) before it notifies: the
    # stream must still send that minute, before the next one (a renter refuses a gap)
    from dgpu.node.services.durable import DurableHandle

    store = await Store.open(tmp_path / "u.db")
    await store.add_job(JOB, "r", "docker", {})
    handle = DurableHandle(None, store, JOB)  # type: ignore[arg-type]  # the job service is not used here
    for index in range(4):
        await store.record_minute(JOB, index, 60.0, [], backfilled=False)
    await handle._usage_send.send((await store.minutes(JOB, from_index=0))[0])  # notice for minute 0 only
    await handle._usage_send.send((await store.minutes(JOB, from_index=3))[0])  # minutes 1-2 lost theirs
    await handle._usage_send.aclose()
    got = [r async for r in handle.usage(AGREEMENT)]
    assert [(r.minute_index, r.minutes_total) for r in got] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    await store.close()


class _JobServiceDouble:
    """Stands in for JobService.run: logs and minutes go to the sinks after the reader left."""

    def __init__(self, reader_gone: trio.Event) -> None:
        self.reader_gone = reader_gone

    async def run(self, job_id: str, *, log_sink, minute_sink):  # type: ignore[no-untyped-def]
        from dgpu.node.ports.execution import ExitReason, ExitStatus, LogChunk

        await log_sink(job_id, LogChunk(0, "stdout", b"first\n"))
        await self.reader_gone.wait()
        for seq in range(1, 300):  # more than the log buffer holds
            await log_sink(job_id, LogChunk(seq, "stdout", b"nobody reads this\n"))
        await minute_sink(UsageMinute(job_id, 0, 60.0, 0.0, False, []))
        return ExitStatus(0, ExitReason.FINISHED)


async def test_a_job_runs_on_when_its_stream_stops_reading(tmp_path: Path) -> None:
    # the renter's stream went away (relay died): the job must finish, not fail the node
    from dgpu.node.ports.execution import ExitReason
    from dgpu.node.services.durable import DurableHandle

    reader_gone = trio.Event()
    handle = DurableHandle(_JobServiceDouble(reader_gone), None, JOB)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle._run)
        logs = handle.logs()
        first = await logs.__anext__()
        await logs.aclose()
        handle._usage_recv.close()
        reader_gone.set()
        status = await handle.wait()
    assert first.data == b"first\n"
    assert status.reason is ExitReason.FINISHED
