"""The node's configuration: built once from the command line (``cli.py``), then read-only."""

from __future__ import annotations

import hashlib
import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dgpu.node.errors import ConfigError
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, GpuSpec, ImagePattern

__all__ = ["DEVELOPMENT_LEDGERS", "DEV_MINT", "BootstrapConfig", "LedgerKind", "NodeConfig", "parse_gpu"]

#: the development ledger's mint placeholder (no real value; 6 decimals like the dGPU mint)
DEV_MINT = SigningKey(hashlib.sha256(b"dgpu/dev-mint").digest()).public_key.wallet

#: which escrow ledger the node uses (``app.open_ledger`` maps each to its client)
LedgerKind = Literal["dev", "solana"]
#: ledgers that hold no real value: a network on one of them is a development network, the
#: only kind on which simulated GPUs may be offered
DEVELOPMENT_LEDGERS: frozenset[str] = frozenset({"dev"})


def parse_gpu(text: str, *, simulated: bool) -> GpuSpec:
    """``MODEL:VRAM_MIB[:COUNT]`` → GpuSpec (e.g. ``"RTX 4090:24576:1"``)."""
    parts = text.rsplit(":", 2)
    try:
        if len(parts) == 3:
            return GpuSpec(model=parts[0], vram_mib=int(parts[1]), count=int(parts[2]),
                           simulated=simulated)
        if len(parts) == 2:
            return GpuSpec(model=parts[0], vram_mib=int(parts[1]), simulated=simulated)
    except ValueError as exc:
        raise ConfigError(f"bad GPU spec {text!r}: {exc}") from None
    raise ConfigError(f"bad GPU spec {text!r}: expected MODEL:VRAM_MIB[:COUNT]")


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(0, ge=0, le=65535)
    #: the actual full multiaddr is written here once listening (atomic rename)
    addr_file: Path | None = None
    log_level: str = "INFO"
    #: name of the environment variable holding the key passphrase (never the passphrase)
    passphrase_env: str = "DGPU_KEY_PASSPHRASE"
    #: serve ``/metrics`` on this port (0: the kernel picks); None: no metrics server
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "identity.json"


class BootstrapConfig(_Config):
    pass


class NodeConfig(_Config):
    role: Literal["provider", "renter"]
    bootstrap: tuple[str, ...] = Field(min_length=1)
    #: renters: accept simulated inventories (development networks only)
    accept_simulated: bool = False
    # --- provider ---
    #: simulated GPUs (``--simulated-gpu``; development ledgers only); none: the GPUs NVML reports
    gpus: tuple[GpuSpec, ...] = ()
    #: ``--gpu UUID|INDEX``: offer only these of the GPUs NVML reports (none: all of them)
    gpu_select: tuple[str, ...] = Field((), max_length=64)
    #: the provider's own price (base units per GPU-minute); None: the pricing engine's, at the market
    price_per_gpu_minute: int | None = Field(None, gt=0)
    #: the band the market multiplier stays in (inside the engine's [0.5, 2.0])
    price_multiplier_low: Decimal = Field(Decimal("0.5"), ge=Decimal("0.5"), le=Decimal("2.0"))
    price_multiplier_high: Decimal = Field(Decimal("2.0"), ge=Decimal("0.5"), le=Decimal("2.0"))
    #: seconds of job requests the market multiplier looks back over
    price_window_s: int = Field(900, ge=1, le=86_400)
    region: str = "local"
    executors: tuple[Executor, ...] = (Executor.SCRIPT,)
    #: Docker images renters may run: all of them are listed in the offer
    allowed_images: Annotated[tuple[ImagePattern, ...], Field(max_length=16)] = ()
    #: concurrent rentals; None: one per GPU offered
    max_concurrent_jobs: int | None = Field(None, ge=1, le=64)
    offer_ttl_s: int = Field(300, ge=60, le=3600)
    #: write a JSON status (offers seen, rejections, peers) here every half second (tests, bench)
    status_file: Path | None = None
    #: the escrow ledger: "dev", the development ledger (no real value) at ``ledger_url``
    ledger: LedgerKind = "dev"
    #: the development ledger (a bootstrap node's HTTP URL): providers verify escrows there and
    #: claim from them, renters fund them; without it a provider refuses every escrow
    ledger_url: str | None = None
    #: Solana ledger (``ledger="solana"``): the JSON-RPC URL, the escrow program, the mint the
    #: program's Config must pin (checked at start), the confirmation commitment, and the optional
    #: compute-unit price (micro-lamports) and limit added to each transaction on real clusters
    solana_rpc: str | None = None
    program_id: str | None = Field(None, max_length=44)
    mint: str | None = Field(None, max_length=44)
    commitment: Literal["processed", "confirmed", "finalized"] = "confirmed"
    compute_unit_price: int | None = Field(None, ge=0)
    compute_unit_limit: int | None = Field(None, gt=0, le=1_400_000)
    #: provider billing: ledger seconds between claims, grace after exhaustion, wall s between polls
    claim_interval_s: int = Field(600, ge=1)
    billing_grace_s: int = Field(60, ge=0)
    billing_poll_s: float = Field(5.0, gt=0)
    #: wall seconds at most between two tries of a pending settlement (services.settlement)
    settle_retry_max_s: float = Field(30.0, gt=0, le=3600)
    #: seconds (at wall speed) a renter has after a quote to submit the job before the provider's
    #: start deadline; an unstarted escrow is refundable after it
    start_window_s: int = Field(120, ge=1, le=3600)
    #: length of a metered usage "minute" in wall seconds; None: the ledger's minute (60 s divided by
    #: its clock speed, so an accelerated development ledger and the meter agree on a minute)
    meter_interval_s: float | None = Field(None, gt=0)
    #: renters may forward TCP ports into their running jobs / open shells in them (off by default)
    allow_forward: bool = False
    allow_shell: bool = False
    #: per rental: forwarded connections and shells at once, bytes per second each way, idle seconds
    access_max_connections: int = Field(16, ge=1, le=256)
    access_bytes_per_second: int = Field(16 * 1024 * 1024, ge=1024)
    access_idle_timeout_s: float = Field(600.0, gt=0)
    #: "auto": bootstrap nodes dial us back; "private": always reserve relay slots (behind NAT);
    #: "public": never (a provider with a public address)
    reachability: Literal["auto", "public", "private"] = "auto"
    #: rounds of dialling the bootstrap nodes before giving up (a node that cannot join exits)
    join_tries: int = Field(8, ge=1, le=100)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, v: Path) -> Path:
        # Docker binds and script sandboxes need absolute paths; the folder the node was
        # started in is the one a relative path meant
        return Path(os.path.abspath(v.expanduser()))

    @property
    def development_ledger(self) -> bool:
        """A ledger of no real value: the development ledger, or Solana on this machine (the local
        development endpoint, run by `dgpu demo --ledger solana` and the tests)."""
        if self.ledger == "solana":
            return urlsplit(self.solana_rpc or "").hostname in ("127.0.0.1", "localhost", "::1")
        return self.ledger in DEVELOPMENT_LEDGERS

    @model_validator(mode="after")
    def _solana_settings(self) -> NodeConfig:
        if self.ledger == "solana" and (self.solana_rpc is None or self.program_id is None):
            raise ValueError("ledger 'solana' needs solana_rpc and program_id")
        return self

    @field_validator("bootstrap")
    @classmethod
    def _multiaddrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if "/p2p/" not in a:
                raise ValueError(f"bootstrap address needs /p2p/PEERID: {a}")
        return v

    @model_validator(mode="after")
    def _multiplier_band(self) -> NodeConfig:
        if self.price_multiplier_low > self.price_multiplier_high:
            raise ValueError("the price multiplier's low bound exceeds its high bound")
        return self

    @model_validator(mode="after")
    def _simulated_on_development_ledgers_only(self) -> NodeConfig:
        if self.gpus and (not all(g.simulated for g in self.gpus) or not self.development_ledger):
            raise ValueError("declared GPUs are simulated, and simulated GPUs are for development ledgers only "
                             "(real GPUs come from NVML)")
        return self
