"""The provider's inventory: what it offers, one lease per agreement, distinct GPUs, release and lapse."""

from __future__ import annotations

import secrets

import pytest

from dgpu.node.ports.gpu import GpuInfo, simulated_gpus
from dgpu.node.services.inventory import Inventory
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, GpuSpec, JobRequest

OWNER = SigningKey(b"\x01" * 32).public_key.wallet
RENTER = SigningKey(b"\x02" * 32).public_key.wallet


class Clock:
    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def request(**over: object) -> JobRequest:
    fields: dict[str, object] = {"executor": Executor.SCRIPT, "script": "true", "max_minutes": 10,
                                 "max_price_per_minute": 1000, "offer_seq": 1}
    fields.update(over)
    return JobRequest(request_id=secrets.token_hex(16), renter=RENTER, provider=OWNER, **fields)  # type: ignore[arg-type]


def inventory(*specs: GpuSpec, max_jobs: int = 4, clock: Clock | None = None) -> Inventory:
    return Inventory(simulated_gpus(specs, owner=OWNER), owner=OWNER, price_per_gpu_minute=100,
                     max_jobs=max_jobs, clock=clock or Clock())


RTX = GpuSpec(model="RTX 4090", vram_mib=24_576, count=2, simulated=True)
H100 = GpuSpec(model="H100", vram_mib=81_920, count=1, simulated=True)


def test_the_offer_lists_each_kind_once_with_its_count() -> None:
    inv = inventory(RTX, H100, GpuSpec(model="RTX 4090", vram_mib=24_576, simulated=True))
    assert inv.offered() == (GpuSpec(model="RTX 4090", vram_mib=24_576, count=3, simulated=True),
                             GpuSpec(model="H100", vram_mib=81_920, count=1, simulated=True))
    assert inv.simulated and inv.price_per_gpu_minute == 100


def test_leases_hold_distinct_gpus_that_fit_and_refuse_when_none_is_free() -> None:
    inv = inventory(RTX, H100)
    a = inv.lease("a", request(gpu_model="rtx 4090"), lapses_at=2_000)
    b = inv.lease("b", request(min_vram_mib=20_000), lapses_at=2_000)
    assert a is not None and b is not None and len(a.uuids) == len(b.uuids) == 1
    assert set(a.uuids).isdisjoint(b.uuids)
    assert inv.lease("c", request(gpu_model="RTX 4090"), lapses_at=2_000) is None  # both RTX leased
    c = inv.lease("c", request(min_vram_mib=80_000), lapses_at=2_000)
    assert c is not None and {g.uuid for g in inv.gpus if g.model == "H100"} == set(c.uuids)
    assert inv.free() == () and inv.leases == 3
    assert a.simulated and a.device_ids == ()  # a simulated GPU is never handed to a job
    assert inv.lease("a", request(), lapses_at=2_000) == a  # one lease per agreement


def test_a_lease_takes_k_gpus_or_none_and_a_cpu_only_job_takes_a_slot() -> None:
    inv = inventory(RTX, max_jobs=2)
    assert inv.lease("big", request(gpu_count=3), lapses_at=2_000) is None
    pair = inv.lease("pair", request(gpu_count=2), lapses_at=2_000)
    assert pair is not None and len(set(pair.uuids)) == 2
    cpu = inv.lease("cpu", request(gpu_count=0), lapses_at=2_000)
    assert cpu is not None and cpu.uuids == ()
    assert not inv.can_lease(request(gpu_count=0))  # both job slots are taken


def test_release_on_job_end_frees_the_gpus() -> None:
    inv = inventory(RTX)
    first = inv.lease("a", request(gpu_count=2), lapses_at=2_000)
    assert first is not None and not inv.can_lease(request())
    assert inv.hold("a") == first
    inv.release("a")
    inv.release("a")  # idempotent
    assert inv.leases == 0 and len(inv.free()) == 2 and inv.lease_of("a") is None
    assert inv.can_lease(request(gpu_count=2))


def test_an_unsubmitted_agreement_lapses_at_its_start_deadline_a_submitted_one_does_not() -> None:
    clock = Clock(1_000)
    inv = inventory(RTX, clock=clock)
    inv.lease("idle", request(), lapses_at=1_100)
    inv.lease("busy", request(), lapses_at=1_100)
    assert inv.hold("busy") is not None
    clock.now = 1_100
    assert inv.lease_of("idle") is None and inv.hold("idle") is None  # lapsed: too late to submit
    assert inv.lease_of("busy") is not None and inv.leases == 1
    clock.now = 10_000
    assert inv.leases == 1  # a running job keeps its GPUs until it ends


def test_restored_leases_keep_their_gpus_after_a_restart() -> None:
    inv = inventory(RTX)
    uuid = inv.gpus[0].uuid
    inv.restore([("job-1", (uuid,))])
    lease = inv.lease("new", request(), lapses_at=2_000)
    assert lease is not None and lease.uuids != (uuid,)
    assert not inv.can_lease(request())


def test_price_and_simulated_gpus_change_through_the_inventory_only() -> None:
    inv = inventory(RTX)
    held = inv.lease("a", request(), lapses_at=2_000)
    inv.set_price(9_000)
    inv.declare_simulated([H100])
    assert inv.price_per_gpu_minute == 9_000 and [g.model for g in inv.gpus] == ["H100"]
    assert inv.lease_of("a") == held  # a granted lease keeps its GPUs
    with pytest.raises(ValueError):
        inv.set_price(0)
    real = GpuInfo(index=0, uuid="GPU-real", model="H100", raw_name="NVIDIA H100", memory_total_bytes=80 * 1024**3,
                   power_limit_mw=700_000, compute_capability="9.0", driver_version="550", cuda_version="12.4",
                   simulated=False)
    nvml = Inventory([real], owner=OWNER, price_per_gpu_minute=100, max_jobs=1, clock=Clock())
    lease = nvml.lease("r", request(), lapses_at=2_000)
    assert lease is not None and not lease.simulated and lease.device_ids == ("GPU-real",)
    with pytest.raises(ValueError):
        nvml.declare_simulated([H100])  # real GPUs come from NVML, never from the API
    with pytest.raises(ValueError):
        inv.declare_simulated([GpuSpec(model="H100", vram_mib=81_920)])
