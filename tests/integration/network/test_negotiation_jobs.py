"""Negotiation (success and each Reject path) and job streams (logs, cancel, provider death).

Every negotiation is paid for: the renter opens a real escrow on the network's development
ledger for the quote (``LedgerFunder``) and the provider reads it there before it agrees.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dgpu.contracts.devledger.client import DevLedgerEscrow
from dgpu.contracts.escrow_api import EscrowHandle, EscrowView
from dgpu.node.errors import JobLostError, RejectedError
from dgpu.node.services.job_renter import run_job
from dgpu.node.services.negotiation import negotiate
from dgpu.protocol.escrow import EscrowStatus, RentalIds
from dgpu.protocol.messages import EscrowRef, Executor, JobState, LogChunk, Offer, Quote

pytestmark = pytest.mark.integration


def clock() -> int:
    return int(time.time())


def nonce() -> bytes:
    return secrets.token_bytes(16)


def job(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"executor": Executor.SCRIPT, "script": "echo hi", "max_minutes": 2,
                            "gpu_count": 1, "max_price_per_minute": 10_000}
    base.update(over)
    return base


async def offer_of(renter: Any, proc: Any, until: Any) -> Offer:
    wallet = proc.key().public_key.wallet
    proc.popen.send_signal(signal.SIGUSR1)  # we may have joined after its last publish
    # a provider started just now: under load (CI with two busy loops) 15 s was once too short
    await until(lambda: renter.book.get(wallet) is not None, timeout=45)
    entry = renter.book.get(wallet)
    return entry.offer


class MisfundingRenter:
    """A renter that really opens an escrow on the ledger, but not the one the quote asks for:
    ``minutes_short`` fewer minutes (a smaller deposit), another ``provider``, or the reference
    named on another ``ledger``. The provider must refuse each (``escrow_invalid``)."""

    def __init__(self, ledger: DevLedgerEscrow, rental_ids: RentalIds, *, minutes_short: int = 0,
                 provider: str | None = None, ledger_name: str | None = None) -> None:
        self.ledger = ledger
        self.rental_ids = rental_ids
        self.minutes_short, self.provider, self.ledger_name = minutes_short, provider, ledger_name
        self.handle: EscrowHandle | None = None

    async def fund(self, quote: Quote) -> EscrowRef:
        receipt = await self.ledger.open(self.rental_ids(), self.provider or quote.provider,
                                         quote.rate_per_minute, quote.max_minutes - self.minutes_short,
                                         quote.start_deadline)
        self.handle = receipt.escrow
        ref = receipt.escrow.to_ref()
        return ref.model_copy(update={"ledger": self.ledger_name}) if self.ledger_name else ref


async def settled(ledger: DevLedgerEscrow, address: str) -> EscrowView:
    """The escrow once the provider has settled it (closed), for the accounting checks."""
    views: list[EscrowView] = []

    async def closed() -> bool:
        views.append(await ledger.fetch(address))
        return views[-1].status is EscrowStatus.CLOSED

    with trio.fail_after(20):
        while not await closed():
            await trio.sleep(0.2)
    return views[-1]


async def test_negotiation_success_and_every_reject_path(network: Any, renter: Any,
                                                         until: Any) -> None:
    b = network.procs["provider-b"]
    offer = await offer_of(renter, b, until)
    assert offer.ledger == renter.ledger.ledger  # the provider runs on the network's ledger
    opened: list[EscrowHandle] = []
    funds = await renter.ledger.balance(renter.key.public_key.wallet)  # the faucet's, in the fixture
    assert funds > 0

    async def go(escrow: Any = None, off: Offer = offer, **over: Any) -> Any:
        source = escrow or renter.funder()
        try:
            return await negotiate(renter.node, renter.key, off, job(**over), escrow=source,
                                   clock=clock, nonce=nonce)
        finally:
            if source.handle is not None:
                opened.append(source.handle)

    funder = renter.funder()
    result = await go(funder)
    terms = result.agreement.terms
    assert terms.provider == offer.provider and terms.renter == renter.key.public_key.wallet
    assert terms.rate_per_minute == offer.price_per_minute and terms.deposit == 2 * 200
    assert funder.handle is not None and terms.escrow == funder.handle.to_ref()
    locked = await renter.ledger.fetch(funder.handle.address)  # the deposit really is on the ledger
    assert (locked.deposited, locked.handle.provider, locked.status) == (terms.deposit, offer.provider,
                                                                         EscrowStatus.OPEN)
    assert await renter.ledger.balance(renter.key.public_key.wallet) == funds - terms.deposit

    cases = [
        ({"max_price_per_minute": 1}, "price_too_low"),
        ({"gpu_model": "H100"}, "gpu_mismatch"),
        ({"gpu_count": 3}, "gpu_mismatch"),
        ({"min_vram_mib": 80_000}, "gpu_mismatch"),
        ({"executor": Executor.DOCKER, "image": "busybox", "script": None},
         "executor_not_offered"),
        ({"egress": True}, "egress_not_allowed"),
        ({"max_minutes": 100_000}, "duration_out_of_range"),
    ]
    for over, code in cases:
        with pytest.raises(RejectedError) as info:
            await go(**over)
        assert info.value.code == code, over
    with pytest.raises(RejectedError) as info:
        await go(off=offer.model_copy(update={"seq": 1}))
    assert info.value.code == "stale_offer"
    assert len(opened) == 1  # a refused request is refused before anything is funded

    a_wallet = network.procs["provider-a"].key().public_key.wallet
    misfunded = {
        "too small a deposit": MisfundingRenter(renter.ledger, renter.rental_ids, minutes_short=1),
        "another provider": MisfundingRenter(renter.ledger, renter.rental_ids, provider=a_wallet),
        "an unknown ledger": MisfundingRenter(renter.ledger, renter.rental_ids, ledger_name="some-other-ledger"),
    }
    for what, source in misfunded.items():
        with pytest.raises(RejectedError) as info:
            await go(escrow=source)
        assert info.value.code == "escrow_invalid", what
        assert source.handle is not None, what  # it was really funded, just not for these terms

    # every deposit locked here comes back: none of these escrows was started
    assert len(opened) == 4
    for handle in opened:
        await renter.ledger.close(handle)
        view = await renter.ledger.fetch(handle.address)
        assert view.status is EscrowStatus.CLOSED and view.refunded == view.deposited
    assert await renter.ledger.balance(renter.key.public_key.wallet) == funds


async def test_job_runs_with_streamed_logs_then_no_capacity_while_busy_and_cancel(
        network: Any, renter: Any, until: Any) -> None:
    a = network.procs["provider-a"]  # one job slot
    offer = await offer_of(renter, a, until)
    script = 'for i in 1 2 3 4 5; do echo "line $i"; done; echo oops >&2; exit 7'
    funder = renter.funder()
    res = await negotiate(renter.node, renter.key, offer, job(script=script),
                          escrow=funder, clock=clock, nonce=nonce)
    lines: list[str] = []

    def on_log(chunk: LogChunk) -> None:
        lines.extend(chunk.data.splitlines())

    out = await run_job(renter.node, renter.key, res.agreement, res.provider_peer, clock=clock,
                        nonce=nonce, on_log=on_log)
    assert out.state is JobState.FAILED and out.exit_code == 7
    assert [ln for ln in lines if ln.startswith("line")] == [f"line {i}" for i in range(1, 6)]
    assert "oops" in lines
    assert funder.handle is not None  # the provider started, billed and settled the escrow
    view = await settled(renter.ledger, funder.handle.address)
    assert view.started_at is not None and view.deposited == res.agreement.terms.deposit
    assert view.paid + view.fee_paid + view.refunded == view.deposited

    # a long job holds the only slot: a second negotiation is refused; cancel ends the job
    res = await negotiate(renter.node, renter.key, offer, job(script="echo started; sleep 60"),
                          escrow=renter.funder(), clock=clock, nonce=nonce)
    cancel = trio.Event()
    started = trio.Event()
    outcome: list[Any] = []

    def on_log2(chunk: LogChunk) -> None:
        if "started" in chunk.data:
            started.set()

    async def follow() -> None:
        outcome.append(await run_job(renter.node, renter.key, res.agreement, res.provider_peer,
                                     clock=clock, nonce=nonce, on_log=on_log2, cancel=cancel))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.fail_after(15):
            await started.wait()
        with pytest.raises(RejectedError) as info:
            await negotiate(renter.node, renter.key, offer, job(),
                            escrow=renter.funder(), clock=clock, nonce=nonce)
        assert info.value.code == "no_capacity"
        cancel.set()
    assert outcome[0].state is JobState.CANCELLED


async def test_provider_killed_mid_job_fails_clearly(network: Any, renter: Any,
                                                     until: Any) -> None:
    doomed = network.provider("provider-doomed", "RTX 3090:24576:1", 50)
    offer = await offer_of(renter, doomed, until)
    res = await negotiate(renter.node, renter.key, offer, job(script="echo up; sleep 60"),
                          escrow=renter.funder(), clock=clock, nonce=nonce)
    started = trio.Event()

    def on_log(chunk: LogChunk) -> None:
        started.set()

    async def kill_when_started() -> None:
        await started.wait()
        doomed.popen.send_signal(signal.SIGKILL)

    t0 = trio.current_time()
    with trio.fail_after(30):  # a hang would fail here, not pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_started)
            with pytest.raises(JobLostError, match="provider"):
                await run_job(renter.node, renter.key, res.agreement, res.provider_peer,
                              clock=clock, nonce=nonce, on_log=on_log, silence_s=5)
    assert trio.current_time() - t0 < 30
    doomed.popen.wait()
    del network.procs["provider-doomed"]


async def test_what_the_daemons_wrote_is_owner_only_and_a_jobs_env_is_not_kept(
        network: Any, renter: Any, until: Any) -> None:
    b = network.procs["provider-b"]
    secret = "API_KEY_" + secrets.token_hex(16)
    offer = await offer_of(renter, b, until)
    res = await negotiate(renter.node, renter.key, offer,
                          job(script='[ -n "$API_KEY" ] && echo HAS-KEY', env={"API_KEY": secret}),
                          escrow=renter.funder(), clock=clock, nonce=nonce)
    lines: list[str] = []
    out = await run_job(renter.node, renter.key, res.agreement, res.provider_peer, clock=clock,
                        nonce=nonce, on_log=lambda c: lines.extend(c.data.splitlines()))
    assert out.state is JobState.FINISHED and "HAS-KEY" in lines  # control: the job had it
    db = b.data_dir / "node.sqlite3"
    held = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert secret.encode() not in held
    # the job's scratch folder goes away after its final status: walk once it has
    await until(lambda: b.status().get("running_jobs") == 0, timeout=30)
    for name in ("bootstrap", "provider-a", "provider-b"):  # node, bootstrap HTTP and ledger
        assert _group_or_world_accessible(network.procs[name].data_dir) == [], name


def _group_or_world_accessible(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) with any group or other permission bit; a file that
    vanishes during the walk (another node's temporary file) is skipped."""
    paths = [root, *(Path(folder, n) for folder, dirs, files in os.walk(root) for n in dirs + files)]
    found = []
    for path in paths:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path} {mode & 0o777:o}")
    return found
