"""Every billing path end to end, on both escrow ledgers (``ledgers.py``: one network per ledger).

The rental tests run once on the development ledger and once on the escrow program behind the
local Solana endpoint, both with a clock x60: one wall second is one ledger minute, so rentals
of a few "minutes" take a few seconds. After each path the rental's money is read back from the
ledger (the closed escrow, or Solana's token accounts and the program-wide audit) and checked
conserved: paid + fee + refunded == deposited. The renter's own account of it (``RentalResult``,
from the ledger's settlement) must agree. The tests of what a rental carries (the blocking
client, inputs and results, API jobs) run on the development ledger only.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dgpu.client import JobFailed, SyncClient
from dgpu.client.client import RentalResult
from dgpu.contracts.escrow_api import EscrowView
from dgpu.node.services.billing import BillingPolicy, renter_billing
from dgpu.protocol.escrow import EscrowStatus
from dgpu.protocol.messages import JobState, LogChunk

from .ledgers import PRICE, Accounting, LedgerNet, dev_network, solana_network

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev_net() -> Iterator[LedgerNet]:
    yield from dev_network()


@pytest.fixture(scope="module", params=["dev", "solana"])
def ledger_net(request: pytest.FixtureRequest) -> Iterator[LedgerNet]:
    """One network per ledger; the development one is shared with the dev-only tests."""
    if request.param == "dev":
        yield request.getfixturevalue("dev_net")
    else:
        yield from solana_network()


def script(seconds: int) -> str:
    return f'echo started\nfor i in $(seq 1 {seconds}); do sleep 1; echo "tick $i"; done\necho done\n'


def assert_reported(result: RentalResult, money: Accounting) -> None:
    """The renter's RentalResult says what the ledger holds (from the settlement, on Solana too)."""
    assert result.settlement is not None
    assert (result.settlement.deposited, result.paid, result.fee, result.refunded, result.minutes) == (
        money.deposited, money.paid, money.fee, money.refunded, money.minutes)


async def test_full_run_pays_the_minutes_used_and_refunds_the_rest(ledger_net: LedgerNet, tmp_path: Path) -> None:
    async with ledger_net.renter(tmp_path) as client:
        start = await client.balance()
        before = await ledger_net.balances(client)
        rental = await client.rent(script=script(3), max_minutes=10, gpu_model="RTX 4090")
        lines: list[str] = []
        result = await rental.run(on_log=lambda c: lines.extend(c.data.splitlines()))
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert lines[0] == "started" and lines[-1] == "done"
        assert rental.escrow is not None
        money = await ledger_net.accounting(client, rental.escrow, deposited=10 * PRICE, before=before)
        assert 1 <= money.minutes < 10 and money.refunded == (10 - money.minutes) * PRICE
        assert_reported(result, money)
        assert await client.balance() == start - money.paid - money.fee


async def test_early_close_stops_the_job_and_refunds_every_unaccrued_minute(ledger_net: LedgerNet,
                                                                          tmp_path: Path) -> None:
    async with ledger_net.renter(tmp_path) as client:
        before = await ledger_net.balances(client)
        rental = await client.rent(script=script(60), max_minutes=30, gpu_model="RTX 4090")
        started = trio.Event()

        def on_log(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data:
                started.set()

        results: list[RentalResult] = []

        async def run() -> None:
            results.append(await rental.run(on_log=on_log))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await started.wait()
            closed = await rental.close()
        # the development ledger keeps the closed escrow; Solana reclaims its account
        assert (closed is not None and closed.status is EscrowStatus.CLOSED) or (
            closed is None and ledger_net.ledger == "solana")
        assert rental.close_receipt is not None and rental.close_receipt.action == "close"
        result = results[0]
        assert result.state is JobState.CANCELLED  # the provider saw the closed escrow and stopped
        assert rental.escrow is not None
        money = await ledger_net.accounting(client, rental.escrow, deposited=30 * PRICE, before=before)
        assert money.refunded >= 20 * PRICE
        assert_reported(result, money)


async def test_top_up_keeps_an_exhausting_job_running(ledger_net: LedgerNet, tmp_path: Path) -> None:
    async with ledger_net.renter(tmp_path, warn_remaining_minutes=1, auto_top_up_minutes=10) as client:
        before = await ledger_net.balances(client)
        rental = await client.rent(script=script(5), max_minutes=3, gpu_model="RTX 4090")
        result = await rental.run()
        assert result.warnings  # warned when one paid minute was left, and topped up
        assert result.state is JobState.FINISHED and result.exit_code == 0
        assert rental.escrow is not None
        money = await ledger_net.accounting(client, rental.escrow, deposited=13 * PRICE, before=before)
        assert_reported(result, money)


async def test_exhaustion_then_grace_then_stop(ledger_net: LedgerNet, tmp_path: Path) -> None:
    async with ledger_net.renter(tmp_path) as client:
        before = await ledger_net.balances(client)
        rental = await client.rent(script=script(60), max_minutes=2, gpu_model="RTX 4090")
        result = await rental.run()
        assert result.state is JobState.CANCELLED
        assert "exhausted" in result.reason
        assert rental.escrow is not None
        money = await ledger_net.accounting(client, rental.escrow, deposited=2 * PRICE, before=before)
        assert money.minutes == 2 and money.refunded == 0
        assert_reported(result, money)


async def test_a_rental_never_started_is_refunded_after_the_deadline(ledger_net: LedgerNet, tmp_path: Path) -> None:
    async with ledger_net.renter(tmp_path) as client:
        before = await ledger_net.balances(client)
        start = await client.balance()
        rental = await client.rent(script=script(1), max_minutes=10, gpu_model="RTX 4090")
        assert await client.balance() == start - 10 * PRICE  # locked
        assert client.ledger is not None and rental.escrow is not None
        # the job is never submitted, so the provider never starts the escrow
        result = await renter_billing(client.ledger, rental.escrow, policy=BillingPolicy(poll_interval_s=0.3))
        assert [r.action for r in result.receipts] == ["refund_unstarted"]
        assert result.receipts[0].refunded == 10 * PRICE
        assert await client.balance() == start
        money = await ledger_net.accounting(client, rental.escrow, deposited=10 * PRICE, before=before)
        assert money.minutes == 0 and money.refunded == 10 * PRICE


async def test_a_provider_killed_mid_rental_leaves_the_renters_funds_recoverable(ledger_net: LedgerNet,
                                                                                tmp_path: Path) -> None:
    victim = await trio.to_thread.run_sync(
        lambda: ledger_net.start_provider("victim", "A100:81920:1", time.monotonic() + 30))
    async with ledger_net.renter(tmp_path, gpu_model="A100") as client:
        offers = await client.find_offers(gpu_model="A100", wait_s=20)
        assert offers and offers[0].provider == victim
        before = await ledger_net.balances(client, victim)
        rental = await client.rent(offers[0], script=script(60), max_minutes=30)

        def kill_on_tick(chunk: LogChunk) -> None:
            if "tick 2" in chunk.data:
                ledger_net.net.procs["victim"].send_signal(signal.SIGKILL)

        with trio.fail_after(60), pytest.raises(JobFailed, match="lost"):
            await rental.run(on_log=kill_on_tick)
        # the renter closed it: the accrued minutes paid, the rest back
        assert rental.escrow is not None
        money = await ledger_net.accounting(client, rental.escrow, deposited=30 * PRICE, before=before)
        assert money.refunded >= 20 * PRICE
        settled = await rental.settlement()
        assert settled is not None and (settled.paid, settled.fee, settled.refunded) == (
            money.paid, money.fee, money.refunded)


def assert_conserved(view: EscrowView | None, deposited: int) -> None:
    assert view is not None and view.status is EscrowStatus.CLOSED and view.vault_balance == 0
    assert view.deposited == deposited
    assert view.paid + view.fee_paid + view.refunded == view.deposited
    assert view.paid + view.fee_paid == view.claimed_minutes * view.rate_per_minute
    assert view.fee_paid == view.claimed_minutes * view.rate_per_minute * view.fee_bps // 10_000


async def test_the_blocking_client_rents_from_a_plain_script(dev_net: LedgerNet, tmp_path: Path) -> None:
    def notebook() -> tuple[RentalResult, int, int]:
        with SyncClient([dev_net.net.addrs["bootstrap"]], ledger_url=dev_net.net.ledger_url, data_dir=tmp_path,
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


async def test_inputs_go_in_by_content_id_and_the_result_comes_back(dev_net: LedgerNet, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("hello blobs\n" * 10_000)  # 120 000 bytes: several blob frames
    async with dev_net.renter(tmp_path / "renter") as client:
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


async def test_a_job_whose_input_cannot_be_fetched_fails_with_a_reason(dev_net: LedgerNet,
                                                                     tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("gone before the job starts\n")
    async with dev_net.renter(tmp_path / "renter") as client:
        rental = await client.rent(script=INPUT_SCRIPT, max_minutes=5, gpu_model="RTX 4090",
                                   inputs={"data/words.txt": words})
        for entry in list(client.shelf._entries):  # the renter no longer offers it
            client.shelf.remove(entry)
        result = await rental.run()
        assert result.state is JobState.FAILED and "could not fetch the inputs" in result.reason
        assert result.result is None


async def test_an_api_job_ships_its_inputs_and_keeps_its_verified_result(dev_net: LedgerNet, tmp_path: Path) -> None:
    from dgpu.node.app import wall_clock
    from dgpu.node.services import api as svc
    from dgpu.node.services.blobs import safe_unpack

    async with dev_net.renter(tmp_path / "renter") as client:
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
