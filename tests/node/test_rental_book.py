"""The renter's rental book (``rental_store.py`` in the node's SQLite store) and the API's
re-attach (``JobManager.attach``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dgpu.node.adapters.rental_store import ENDED_KEEP_S
from dgpu.node.adapters.store import Store
from dgpu.node.services.api import ApiJob, ApiJobState, JobFinal, JobManager, JobSpec, NotFound

AGREEMENT = "ab" * 32


async def test_a_rental_is_kept_until_it_ends_and_its_secrets_never_are(tmp_path: Path) -> None:
    now = [1000.0]
    store = await Store.open(tmp_path / "s.db", clock=lambda: now[0])
    await store.add_rental_record(AGREEMENT, "peer", {"terms": 1}, provider_addrs=["/ip4/127.0.0.1/tcp/1"],
                                  stop_on_disconnect=False)
    await store.link_api_job(AGREEMENT, "job1", {"script": "echo", "env": {"TOKEN": "s3cr3t-value"}})
    await store.rental_progress(AGREEMENT, log_offset=7, state=None)
    await store.rental_progress(AGREEMENT, log_offset=5, state="running")  # an offset never goes back
    await store.close()
    store = await Store.open(tmp_path / "s.db", clock=lambda: now[0])  # a restart
    [kept] = await store.open_rental_records()
    assert (kept.agreement_id, kept.provider_peer, kept.log_offset, kept.state) == (AGREEMENT, "peer", 7, "running")
    assert kept.provider_addrs == ("/ip4/127.0.0.1/tcp/1",) and kept.api_spec == {"script": "echo"}
    assert await store.rental_record("job1") == kept
    await store.end_rental_record(AGREEMENT, "finished")
    assert await store.open_rental_records() == []
    assert (await store.rental_record(AGREEMENT)).ended  # type: ignore[union-attr]
    now[0] += ENDED_KEEP_S + 1
    await store.open_rental_records()  # prunes what ended long ago
    assert await store.rental_record(AGREEMENT) is None
    await store.close()
    assert b"s3cr3t-value" not in _all_bytes(tmp_path)


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir())


class KeptForTests:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.spec = JobSpec(script="echo kept")


class ReattacherForTests:
    """TEST DOUBLE of the network backend's re-attach (in-memory tests only)."""

    def __init__(self) -> None:
        self.kept_jobs = [KeptForTests("kept1")]
        self.release = trio.Event()
        self.runs: list[str] = []

    async def kept(self) -> list[KeptForTests]:
        return list(self.kept_jobs)

    async def find(self, key: str) -> KeptForTests | None:
        return next((k for k in self.kept_jobs if k.job_id == key), None)

    async def reattach(self, kept: Any, job: ApiJob) -> JobFinal:
        self.runs.append(kept.job_id)
        job.agreed("p" * 44, 10, escrow=None, agreement_id=AGREEMENT)
        await self.release.wait()
        return JobFinal(ApiJobState.FINISHED, exit_code=0)


async def test_the_api_re_attaches_kept_jobs_at_start_and_on_demand() -> None:
    reattacher = ReattacherForTests()
    manager = JobManager(None, max_active=4, max_records=8, log_lines=10, clock=lambda: 1,
                         reattacher=reattacher)
    async with trio.open_nursery() as n:
        await n.start(manager.run)
        job = manager.get("kept1")  # re-attached as the node started
        await trio.testing.wait_all_tasks_blocked()
        assert await manager.attach(AGREEMENT) is job  # already followed: the same job
        reattacher.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert job.state is ApiJobState.FINISHED
        again = await manager.attach("kept1")  # ended, but still kept: re-attached again
        await trio.testing.wait_all_tasks_blocked()
        assert again is not job and again.id == "kept1" and reattacher.runs == ["kept1", "kept1"]
        with pytest.raises(NotFound):
            await manager.attach("nothing-here")
        n.cancel_scope.cancel()
