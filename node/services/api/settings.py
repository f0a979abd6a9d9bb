"""How the node's local API runs (``ApiSettings``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ApiSettings"]


class ApiSettings(BaseModel):
    """How the local API runs; built once by the node's CLI, then read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    #: HTTP base URL of the bootstrap node whose auth (JWKS, login) and storage the API uses
    bootstrap_url: str = Field(min_length=1, max_length=512)
    #: the development ledger's HTTP base URL (a bootstrap node); None: no ledger, so no job
    #: can be paid for and ``POST /api/v1/jobs`` is refused (503 ``no_ledger``)
    ledger_url: str | None = Field(None, max_length=512)
    #: development networks only: simulated GPUs may be registered and the faucet may be used
    development: bool = False
    #: wallets besides the owner that the owner allows to use the API (a token's role never does)
    admin_wallets: frozenset[str] = frozenset()
    #: each running API job holds a stream, an escrow poller and a log buffer
    max_active_jobs: int = Field(4, ge=1, le=64)
    #: finished jobs are forgotten oldest first beyond this (memory bound)
    max_job_records: int = Field(1000, ge=1, le=100_000)
    #: log lines kept per job (a ring buffer; older lines are dropped, ``seq`` keeps counting)
    log_lines: int = Field(2000, ge=10, le=100_000)
    #: JSON bodies above this are refused with 413 before they are parsed (storage streams)
    max_body_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: most bytes one storage upload may stream through the node (the bootstrap has its own cap)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    #: clock skew tolerated when checking token times (seconds)
    token_leeway_s: int = Field(30, ge=0, le=300)
    #: Host names the API answers besides the loopback names (DNS-rebinding guard)
    allowed_hosts: tuple[str, ...] = Field((), max_length=64)
    #: job inputs are read only from under these folders (resolved, symlinks included); the
    #: default is the folder the node was started in
    input_roots: tuple[Path, ...] = Field(default_factory=lambda: (Path.cwd(),), max_length=64)
    #: a revoked (logged-out) token is refused at most this many seconds after its revocation
    revocation_check_s: float = Field(5.0, gt=0, le=60)
    #: seconds between escrow reads while a job runs (minutes and spend in the status)
    progress_interval_s: float = Field(5.0, gt=0, le=300)

    @field_validator("input_roots")
    @classmethod
    def _absolute_roots(cls, roots: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(Path(os.path.realpath(root.expanduser())) for root in roots)
