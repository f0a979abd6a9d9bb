"""The SQLite store: transitions, the usage UNIQUE constraint, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dgpu.node.adapters.store import MIGRATIONS, TRANSITIONS, JobState, Store
from dgpu.node.errors import IllegalTransition, SchemaError, UnknownJob

JOB = "0123456789abcdef"


async def new_store(tmp_path: Path) -> Store:
    store = await Store.open(tmp_path / "s.db")
    await store.add_job(JOB, "r1", "docker", {"k": 1})
    return store


async def test_lifecycle_persisted_and_reopened(tmp_path: Path) -> None:
    store = await new_store(tmp_path)
    await store.transition(JOB, JobState.STARTING)
    await store.transition(JOB, JobState.RUNNING, container_id="c1", started_at=100.0)
    await store.transition(JOB, JobState.FINISHED, exit_code=0, reason="finished")
    await store.close()
    store = await Store.open(tmp_path / "s.db")
    job = await store.get_job(JOB)
    assert (job.state, job.container_id, job.started_at, job.exit_code) == (
        JobState.FINISHED, "c1", 100.0, 0
    )
    assert await store.events(JOB) == [
        ("accepted", "starting"), ("starting", "running"), ("running", "finished")
    ]
    await store.close()


@pytest.mark.parametrize("start", list(JobState))
async def test_every_illegal_transition_raises_and_changes_nothing(
    tmp_path: Path, start: JobState
) -> None:
    store = await Store.open(tmp_path / "s.db")
    path = {
        JobState.ACCEPTED: [],
        JobState.STARTING: [JobState.STARTING],
        JobState.RUNNING: [JobState.STARTING, JobState.RUNNING],
    }.get(start, [JobState.STARTING, JobState.RUNNING, start])
    for to in JobState:
        job = f"{list(JobState).index(to):02d}" + "0" * 14
        await store.add_job(job, "r", "docker", {})
        for step in path:
            await store.transition(job, step)
        assert (await store.get_job(job)).state is start
        if to in TRANSITIONS[start]:
            await store.transition(job, to)
            assert (await store.get_job(job)).state is to
        else:
            events_before = await store.events(job)
            with pytest.raises(IllegalTransition):
                await store.transition(job, to)
            assert (await store.get_job(job)).state is start
            assert await store.events(job) == events_before
    await store.close()


async def test_unknown_job(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    with pytest.raises(UnknownJob):
        await store.transition("f" * 16, JobState.STARTING)
    await store.close()


async def test_a_minute_is_recorded_once(tmp_path: Path) -> None:
    store = await new_store(tmp_path)
    assert await store.record_minute(JOB, 0, 60.0, [{"uuid": "g"}])
    assert not await store.record_minute(JOB, 0, 60.0, [], backfilled=True)
    assert await store.record_minute(JOB, 1, 12.5)
    [m0, m1] = await store.minutes(JOB)
    assert (m0.minute_index, m0.samples, m0.backfilled) == (0, [{"uuid": "g"}], False)
    assert m1.wall_seconds == 12.5
    assert await store.last_minute_index(JOB) == 1
    await store.close()
    conn = sqlite3.connect(tmp_path / "s.db")  # the constraint holds below the code, too
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO usage_minutes (job_id, minute_index, wall_seconds, recorded_at) "
            "VALUES (?, 0, 60, 0)", (JOB,)
        )
    conn.close()


async def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    extra = (*MIGRATIONS, "CREATE TABLE later (x INTEGER)")
    store = await Store.open(tmp_path / "m.db")
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    store = await Store.open(tmp_path / "m.db", migrations=extra)
    assert await store.schema_version() == len(extra)
    await store.close()
    store = await Store.open(tmp_path / "m.db", migrations=extra)  # nothing re-applied
    assert await store.schema_version() == len(extra)
    await store.close()
    with pytest.raises(SchemaError):
        await Store.open(tmp_path / "m.db")  # the database is newer than this code


async def test_money_is_integer(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    await store.add_rental("r1", "renter", 7, 60)
    assert (await store.get_rental("r1")) is not None
    with pytest.raises(TypeError):
        await store.add_rental("r2", "renter", 0.5, 60)  # type: ignore[arg-type]
    await store.close()


def _files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


async def test_database_files_are_private(tmp_path: Path) -> None:
    store = await new_store(tmp_path)
    await store.transition(JOB, JobState.STARTING)
    files = _files(tmp_path / "s.db")
    assert len(files) == 3  # WAL mode: all three exist while open
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}
    await store.close()
    (tmp_path / "s.db").chmod(0o644)  # a database from before: narrowed when opened
    store = await Store.open(tmp_path / "s.db")
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600
    await store.close()


async def test_job_environment_kept_while_running_and_gone_from_every_file_after(
    tmp_path: Path,
) -> None:
    secret = "API_KEY_VALUE_" + "x9" * 20
    path = tmp_path / "s.db"
    store = await Store.open(path)
    await store.add_job(JOB, "r1", "docker", {"env": {"API_KEY": secret}, "k": 1})
    await store.transition(JOB, JobState.STARTING)
    await store.transition(JOB, JobState.RUNNING, container_id="c1")
    await store.close()
    store = await Store.open(path)  # a daemon restart while it runs: reconcile needs the spec
    assert (await store.get_job(JOB)).spec["env"] == {"API_KEY": secret}
    await store.transition(JOB, JobState.FINISHED, exit_code=0)
    assert (await store.get_job(JOB)).spec == {"env": {}, "k": 1}
    raw = b"".join(p.read_bytes() for p in _files(path))  # while open, and after close
    assert secret.encode() not in raw
    await store.close()
    assert secret.encode() not in b"".join(p.read_bytes() for p in _files(path))


async def test_migration_blanks_environments_of_jobs_ended_before(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await Store.open(path, migrations=MIGRATIONS[:2])
    await store.add_job(JOB, "r1", "docker", {"env": {"A": "old-secret"}})
    await store.transition(JOB, JobState.CANCELLED)
    await store.add_job("f" * 16, "r1", "docker", {"env": {"B": "still-needed"}})
    await store.close()
    # the code before this change kept the env; emulate it by putting it back
    conn = sqlite3.connect(path)
    conn.execute("UPDATE jobs SET spec_json = ? WHERE job_id = ?", ('{"env": {"A": "old-secret"}}', JOB))
    conn.commit()
    conn.close()
    store = await Store.open(path)
    assert (await store.get_job(JOB)).spec["env"] == {}
    assert (await store.get_job("f" * 16)).spec["env"] == {"B": "still-needed"}
    await store.close()
