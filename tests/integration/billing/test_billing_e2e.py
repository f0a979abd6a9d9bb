"""Every billing path end to end: a bootstrap node (serving the development ledger, clock x60)
and provider processes on 127.0.0.1, a renter (``dgpu.client``) in the test process.

One wall second is one ledger minute, so rentals of a few "minutes" take a few seconds. After
each path the escrow is checked on the ledger: paid + fee + refunded == deposited.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dgpu.client import Client, JobFailed, SyncClient
from dgpu.client.client import RentalResult
from dgpu.client.demo import DemoNetwork
from dgpu.contracts.escrow_api import EscrowView
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.services.billing import BillingPolicy, renter_billing
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.messages import JobState, LogChunk

pytestmark = pytest.mark.integration

PROVIDER_FLAGS = ["--executor", "script", "--claim-interval", "120", "--billing-grace", "60",
                  "--billing-poll", "0.3", "--meter-interval", "1", "--start-window", "3"]
PRICE = 1_000


@pytest.fixture(scope="module")
def network() -> Iterator[DemoNetwork]:
    # script jobs run as nobody under the providers' folders: every parent must be traversable,
    # which pytest's own tmp folders (0700) are not
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-billing-"))
    workdir.chmod(0o711)
    net = DemoNetwork(workdir, log_level="INFO")
    deadline = time.monotonic() + 60
    try:
        net.start_bootstrap(deadline, ledger_speed=60)
        net.start_provider("provider", "RTX 4090:24576:1", PRICE, deadline, extra=PROVIDER_FLAGS)
        yield net
    finally:
        net.stop()
        remove_tree(workdir)  # and the job folders a killed provider left mounted


@asynccontextmanager
async def renter(net: DemoNetwork, tmp_path: Path, **policy: float) -> AsyncIterator[Client]:
    billing = BillingPolicy(poll_interval_s=0.3, **policy)  # type: ignore[arg-type]
    async with Client.connect([net.addrs["bootstrap"]], ledger_url=net.ledger_url, data_dir=tmp_path,
                              accept_simulated=True, billing_policy=billing) as client:
        assert client.ledger is not None
        await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        # a fresh node learns offers by gossip; on a loaded machine that can take a few seconds
        assert await client.find_offers(gpu_model="RTX 4090", wait_s=30), "the provider's offer never arrived"
        yield client


def script(seconds: int) -> str:
    return f'echo started\nfor i in $(seq 1 {seconds}); do sleep 1; echo "tick $i"; done\necho done\n'


def assert_conserved(view: EscrowView | None, deposited: int) -> None:
    assert view is not None and view.status is EscrowStatus.CLOSED and view.vault_balance == 0
    assert view.deposited == deposited
    assert view.paid + view.fee_paid + view.refunded == view.deposited
    assert view.paid + view.fee_paid == view.claimed_minutes * view.rate_per_minute
    assert view.fee_paid == view.claimed_minutes * view.rate_per_minute * view.fee_bps // 10_000


async def test_full_run_pays_the_minutes_used_and_refunds_the_rest(network: DemoNetwork, tmp_path: Path) -> None:
    async with renter(network, tmp_path) as client:
        start = await client.balance()
        rental = await client.rent(script=script(3), max_minutes=10, gpu_model="RTX 4090")
        lines: list[str] = []
        result = await rental.run(on_log=lambda c: lines.extend(c.data.splitlines()))
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert lines[0] == "started" and lines[-1] == "done"
        assert_conserved(result.escrow, 10 * PRICE)
        assert 1 <= result.minutes < 10 and result.refunded == (10 - result.minutes) * PRICE
        assert await client.balance() == start - result.paid - result.fee


async def test_early_close_stops_the_job_and_refunds_every_unaccrued_minute(network: DemoNetwork,
                                                                          tmp_path: Path) -> None:
    async with renter(network, tmp_path) as client:
        rental = await client.rent(script=script(60), max_minutes=30, gpu_model="RTX 4090")
        started = trio.Event()

        def on_log(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data:
                started.set()

        results: list[RentalResult] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _collect(rental.run(on_log=on_log), results))
            await started.wait()
            closed = await rental.close()
        assert closed is not None and closed.status is EscrowStatus.CLOSED
        result = results[0]
        assert result.state is JobState.CANCELLED  # the provider saw the closed escrow and stopped
        assert_conserved(result.escrow, 30 * PRICE)
        assert result.refunded >= 20 * PRICE


async def _collect(coro: object, into: list[RentalResult]) -> None:
    into.append(await coro)  # type: ignore[misc]


async def test_top_up_keeps_an_exhausting_job_running(network: DemoNetwork, tmp_path: Path) -> None:
    async with renter(network, tmp_path, warn_remaining_minutes=1, auto_top_up_minutes=10) as client:
        rental = await client.rent(script=script(5), max_minutes=3, gpu_model="RTX 4090")
        result = await rental.run()
        assert result.warnings  # warned when one paid minute was left, and topped up
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert result.escrow is not None and result.escrow.max_minutes == 13
        assert_conserved(result.escrow, 13 * PRICE)


async def test_exhaustion_then_grace_then_stop(network: DemoNetwork, tmp_path: Path) -> None:
    async with renter(network, tmp_path) as client:
        rental = await client.rent(script=script(60), max_minutes=2, gpu_model="RTX 4090")
        result = await rental.run()
        assert result.state is JobState.CANCELLED
        assert "exhausted" in result.reason
        assert_conserved(result.escrow, 2 * PRICE)
        assert result.minutes == 2 and result.refunded == 0


async def test_a_rental_never_started_is_refunded_after_the_deadline(network: DemoNetwork, tmp_path: Path) -> None:
    async with renter(network, tmp_path) as client:
        before = await client.balance()
        rental = await client.rent(script=script(1), max_minutes=10, gpu_model="RTX 4090")
        assert await client.balance() == before - 10 * PRICE  # locked
        assert client.ledger is not None and rental.escrow is not None
        # the job is never submitted, so the provider never starts the escrow
        result = await renter_billing(client.ledger, rental.escrow, policy=BillingPolicy(poll_interval_s=0.3))
        assert [r.action for r in result.receipts] == ["refund_unstarted"]
        assert await client.balance() == before
        assert_conserved(await rental.escrow_state(), 10 * PRICE)


async def test_a_provider_killed_mid_rental_leaves_the_renters_funds_recoverable(network: DemoNetwork,
                                                                                tmp_path: Path) -> None:
    victim = network.start_provider("victim", "A100:81920:1", PRICE, time.monotonic() + 30,
                                    extra=PROVIDER_FLAGS)
    assert victim
    async with renter(network, tmp_path) as client:
        offers = await client.find_offers(gpu_model="A100", wait_s=20)
        assert offers, "the victim's offer never arrived"
        rental = await client.rent(offers[0], script=script(60), max_minutes=30)

        def kill_on_tick(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data:
                network.procs["victim"].send_signal(signal.SIGKILL)

        with trio.fail_after(60), pytest.raises(JobFailed, match="lost"):
            await rental.run(on_log=kill_on_tick)
        view = await rental.escrow_state()  # the renter closed it: accrued minutes paid, the rest back
        assert_conserved(view, 30 * PRICE)
        assert view.refunded >= 20 * PRICE


async def test_the_blocking_client_rents_from_a_plain_script(network: DemoNetwork, tmp_path: Path) -> None:
    def notebook() -> tuple[RentalResult, int, int]:
        with SyncClient([network.addrs["bootstrap"]], ledger_url=network.ledger_url, data_dir=tmp_path,
                        accept_simulated=True) as gpu:
            gpu.faucet(100_000)
            offers = gpu.find_offers(gpu_model="RTX 4090", wait_s=10)
            lines: list[str] = []
            result = gpu.run(offers[0], script=script(1), max_minutes=5,
                             on_log=lambda chunk: lines.extend(chunk.data.splitlines()))
            assert lines[-1] == "done"
            return result, gpu.balance(), len(offers)

    result, balance, found = await trio.to_thread.run_sync(notebook)
    assert found >= 1 and result.state is JobState.FINISHED
    assert_conserved(result.escrow, 5 * PRICE)
    assert balance == 100_000 - result.paid - result.fee


INPUT_SCRIPT = """set -e
cat "$HOME/inputs/data/words.txt"
mkdir -p "$HOME/outputs/sub"
tr a-z A-Z < "$HOME/inputs/data/words.txt" > "$HOME/outputs/sub/upper.txt"
wc -c < "$HOME/inputs/data/words.txt" > "$HOME/outputs/count.txt"
"""


async def test_inputs_go_in_by_content_id_and_the_result_comes_back(network: DemoNetwork, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("hello blobs\n" * 10_000)  # 120 000 bytes: several blob frames
    async with renter(network, tmp_path / "renter") as client:
        rental = await client.rent(script=INPUT_SCRIPT, max_minutes=5, gpu_model="RTX 4090",
                                   inputs={"data/words.txt": words})
        lines: list[str] = []
        result = await rental.run(on_log=lambda c: lines.extend(c.data.splitlines()))
        assert result.state is JobState.FINISHED and result.exit_code == 0, result.reason
        assert lines[:2] == ["hello blobs", "hello blobs"]
        assert result.result is not None and result.result.size > 0
        seen: list[tuple[int, int]] = []
        out = tmp_path / "result"
        written = await rental.download_result(out, progress=lambda done, total: seen.append((done, total)))
        assert sorted(p.relative_to(out).as_posix() for p in written) == ["count.txt", "sub/upper.txt"]
        assert (out / "sub" / "upper.txt").read_text() == "HELLO BLOBS\n" * 10_000
        assert (out / "count.txt").read_text().strip() == "120000"
        assert seen[-1] == (result.result.size, result.result.size)
        assert_conserved(result.escrow, 5 * PRICE)


async def test_a_job_whose_input_cannot_be_fetched_fails_with_a_reason(network: DemoNetwork,
                                                                     tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("gone before the job starts\n")
    async with renter(network, tmp_path / "renter") as client:
        rental = await client.rent(script=INPUT_SCRIPT, max_minutes=5, gpu_model="RTX 4090",
                                   inputs={"data/words.txt": words})
        for entry in list(client.shelf._entries):  # the renter no longer offers it
            client.shelf.remove(entry)
        result = await rental.run()
        assert result.state is JobState.FAILED and "could not fetch the inputs" in result.reason
        assert result.result is None


async def test_an_api_job_ships_its_inputs_and_keeps_its_verified_result(network: DemoNetwork, tmp_path: Path) -> None:
    from dgpu.node.app import wall_clock
    from dgpu.node.services import api as svc
    from dgpu.node.services.blobs import safe_unpack

    async with renter(network, tmp_path / "renter") as client:
        assert client.ledger is not None
        backend = svc.NetworkJobBackend(client, results_dir=tmp_path / "api-results", progress_interval_s=1.0)
        local = tmp_path / "question.txt"
        local.write_text("six times seven\n")
        spec = svc.JobSpec(script='mkdir -p "$HOME/outputs"; wc -w < "$HOME/inputs/q.txt" > "$HOME/outputs/answer.txt"',
                           max_minutes=5, gpu_model="RTX 4090", inputs={"q.txt": str(local)})
        job = svc.ApiJob(id="api-result-1", spec=spec, created_at=wall_clock(), log_capacity=10)
        final = await backend.run(spec, job)
        assert final.state is svc.ApiJobState.FINISHED, final.reason
        assert job.result_file is not None
        files = await trio.to_thread.run_sync(safe_unpack, job.result_file, tmp_path / "out")
        assert [p.name for p in files] == ["answer.txt"] and files[0].read_text().strip() == "3"
