"""What the renter commands show a person, through the real ``dgpu`` command in a subprocess
against one local node API (uvicorn on 127.0.0.1, jobs run by the in-process test double) and
bootstrap (auth, development ledger): a reader that leaves early ends the output quietly, times
are ISO-8601, wallets are printed as ``--provider`` takes them, and amounts are never a silent
``0`` while the ledger is down."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.client.test_cli import write_identity
from tests.node.test_http_api_harness import Stack, api_stack, make_offer, new_key

DGPU = str(Path(sys.executable).parent / "dgpu")
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
#: a loaded machine starts a Python process in seconds
TIMEOUT_S = 120


def _env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}
    env["DGPU_API_URL"] = stack.api_url
    return env


async def dgpu(stack: Stack, data_dir: Path, *args: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT_S):
        return await trio.run_process([DGPU, *args, "--data-dir", str(data_dir)], capture_stdout=True,
                                      capture_stderr=True, env=_env(stack), check=False)


def _ok(r: trio.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0 and b"Traceback" not in r.stderr, (r.returncode, r.stderr.decode())
    return r.stdout.decode()


async def _logs_read_by_an_early_quitter(stack: Stack, data_dir: Path, job_id: str) -> tuple[bytes, int, str]:
    """``dgpu jobs logs ID | head -n 1`` made deterministic: the pipe holds one page, so the
    command is still writing when the reader takes its first line and closes its end."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    try:
        proc = await trio.lowlevel.open_process([DGPU, "jobs", "logs", job_id, "--data-dir", str(data_dir)],
                                                stdout=write_fd, stderr=subprocess.PIPE, env=_env(stack))
    finally:
        os.close(write_fd)

    def first_line() -> bytes:
        got = b""
        while b"\n" not in got and (chunk := os.read(read_fd, 4096)):
            got += chunk
        os.close(read_fd)  # what `head -n 1` does once it has its line
        return got.split(b"\n", 1)[0]

    assert proc.stderr is not None
    err = b""
    with trio.fail_after(TIMEOUT_S):
        line = await trio.to_thread.run_sync(first_line)
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        code = await proc.wait()
    return line, code, err.decode()


@pytest.mark.integration
async def test_logs_pipe_times_wallets_and_amounts_without_a_ledger(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = tmp_path / "node"
        write_identity(data_dir, s)
        _ok(await dgpu(s, data_dir, "login", "--register", "renter"))
        now = int(s.clock())
        offer = make_offer(new_key(), now=now)
        s.book.put(offer, "p1", now=now)

        # the table's PROVIDER is what --provider takes: the whole base58 wallet, not an ellipsis
        offers = _ok(await dgpu(s, data_dir, "offers"))
        row = next(ln for ln in offers.splitlines() if offer.provider in ln)
        provider = row.split()[0]
        assert provider == offer.provider
        assert not re.search(r"\b1\d{9}\b", offers)  # no epoch seconds anywhere in the view

        # a job with more log lines than a pipe holds, from the provider given as a whole wallet
        lines = [f"line {i:03d} " + "x" * 500 for i in range(60)]
        script = tmp_path / "job.sh"
        script.write_text("\n".join(lines) + "\n")
        s.double.release.set()
        _ok(await dgpu(s, data_dir, "rent", "--script", str(script), "--provider", provider, "--max-minutes", "5"))
        job_id = s.double.started[0]

        first, code, err = await _logs_read_by_an_early_quitter(s, data_dir, job_id)
        assert first.decode() == lines[-50], err  # the default --limit: the last 50 lines
        assert code == 141, err  # 128 + SIGPIPE, as a shell reports a writer whose reader left
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err

        table = _ok(await dgpu(s, data_dir, "jobs", "list")).splitlines()
        assert table[0].split() == ["ID", "STATE", "CREATED", "PROVIDER", "MINUTES", "SPENT", "EXIT"]
        cells = table[1].split()
        assert cells[0] == job_id and re.fullmatch(ISO, cells[2]) and cells[3] == provider
        assert cells[5] == "0.002000"
        shown = json.loads(_ok(await dgpu(s, data_dir, "jobs", "show", job_id)))
        assert re.fullmatch(ISO, shown["created_at"]) and re.fullmatch(ISO, shown["finished_at"])
        assert shown["provider"] == provider
        raw = json.loads(_ok(await dgpu(s, data_dir, "jobs", "show", job_id, "--json")))
        assert isinstance(raw["created_at"], int)  # --json stays machine-readable

        # the ledger (the development ledger on the bootstrap) goes down
        s.boot_scope.cancel()
        wallet = await dgpu(s, data_dir, "wallet")
        assert wallet.returncode == 1 and b"Traceback" not in wallet.stderr, wallet.stderr.decode()
        assert wallet.stdout == b""  # no balance at all rather than a made-up 0
        said = wallet.stderr.decode()
        assert re.fullmatch(r"dgpu wallet: the ledger is unreachable, so the balance is unknown \(.*\)\n", said), said
        listed = await dgpu(s, data_dir, "jobs", "list")
        out, err = _ok(listed), listed.stderr.decode()
        assert re.search(r"ledger .*unreachable.*amounts are in base units", err), err
        assert out.splitlines()[1].split()[5:8] == ["2000", "base", "units"], out
        assert not re.search(r"(?<!\d)0 (base )?units", out), out
        priced = await dgpu(s, data_dir, "offers")
        out, err = _ok(priced), priced.stderr.decode()
        assert "ledger is unavailable" in err and "development ledger unreachable" in err, err
        assert f"{offer.price_per_minute} base units" in out, out


def test_jobs_show_prints_nested_times_as_iso() -> None:
    from dgpu.client.commands.jobs import _iso_times

    shown = _iso_times({"created_at": 1_796_122_657, "finished_at": None, "minutes": 1_796_122_657,
                        "usage": [{"minute_index": 0, "at": 1_796_122_717, "gpus": [{"util": 90}]}]})
    assert shown == {"created_at": "2026-12-01T10:57:37Z", "finished_at": "-", "minutes": 1_796_122_657,
                     "usage": [{"minute_index": 0, "at": "2026-12-01T10:58:37Z", "gpus": [{"util": 90}]}]}
