"""The renter commands as users run them: ``python -m dgpu.client.cli`` subprocesses against a
real node API (uvicorn on 127.0.0.1, jobs run by the in-process test double) and a real
bootstrap node (auth, development ledger)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from dgpu.client.settings import SettingsError, load_settings
from tests.node.test_http_api_harness import Stack, api_stack, make_offer, new_key


async def dgpu(stack: Stack, *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None,
               check: bool = True) -> trio.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}
    full_env["DGPU_API_URL"] = stack.api_url
    full_env.update(env or {})
    argv = [sys.executable, "-m", "dgpu.client.cli", *args]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    with trio.fail_after(60):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, env=full_env, check=False)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def write_identity(data_dir: Path, stack: Stack) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "identity.json"
    path.write_text(json.dumps(stack.node_key.to_solana_keypair()))
    path.chmod(0o600)


async def logged_in(stack: Stack, tmp_path: Path) -> Path:
    data_dir = tmp_path / "node"
    write_identity(data_dir, stack)
    r = await dgpu(stack, "login", "--register", "renter", data_dir=data_dir)
    assert b"logged in as " + stack.node_key.public_key.wallet.encode() in r.stdout
    return data_dir


@pytest.mark.integration
async def test_login_stores_a_private_token_and_commands_use_it(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        no_key = await dgpu(s, "login", data_dir=tmp_path / "empty", check=False)
        assert no_key.returncode == 2 and b"no node key" in no_key.stderr
        assert not (tmp_path / "empty").exists()  # creates nothing silently
        data_dir = tmp_path / "node"
        write_identity(data_dir, s)
        unregistered = await dgpu(s, "login", data_dir=data_dir, check=False)
        assert unregistered.returncode == 3 and b"--register" in unregistered.stderr
        data_dir = await logged_in(s, tmp_path)
        token_file = data_dir / "api-token.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = json.loads(token_file.read_text())["access_token"]
        assert token.encode() not in (await dgpu(s, "wallet", data_dir=data_dir)).stdout
        no_token = await dgpu(s, "jobs", data_dir=tmp_path / "other", check=False)
        assert no_token.returncode == 3 and b"dgpu login" in no_token.stderr
        forged = await dgpu(s, "jobs", data_dir=tmp_path / "other", env={"DGPU_TOKEN": "a.b.c"}, check=False)
        assert forged.returncode == 1 and b"invalid_token" in forged.stderr and b"a.b.c" not in forged.stderr


@pytest.mark.integration
async def test_offers_table_and_json_with_the_mints_decimals(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        now = int(s.clock())
        cheap = make_offer(new_key(), price=8_334, model="RTX 4090", now=now, region="eu")
        sim = make_offer(new_key(), price=6_667, model="RTX 4080", vram=16_384, now=now, simulated=True)
        s.book.put(cheap, "p1", now=now)
        s.book.put(sim, "p2", now=now)
        data_dir = await logged_in(s, tmp_path)
        out = (await dgpu(s, "offers", data_dir=data_dir)).stdout.decode()
        assert "RTX 4090" in out and "0.008334" in out and "0.500040" in out and "RTX 4080" not in out
        out = (await dgpu(s, "offers", "--include-simulated", data_dir=data_dir)).stdout.decode()
        lines = [ln for ln in out.splitlines() if "RTX" in ln]
        assert lines[0].split()[1:3] == ["RTX", "4080"] and lines[0].rstrip().endswith("yes")
        body = json.loads((await dgpu(s, "offers", "--json", "--gpu-model", "rtx 4090", data_dir=data_dir)).stdout)
        assert body["decimals"] == 6 and [o["provider"] for o in body["offers"]] == [cheap.provider]


@pytest.mark.integration
async def test_wallet_and_faucet(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = await logged_in(s, tmp_path)
        out = (await dgpu(s, "wallet", data_dir=data_dir)).stdout.decode()
        assert s.node_key.public_key.wallet in out and "NO REAL VALUE" in out and "0.000000 dGPU" in out
        out = (await dgpu(s, "wallet", "--faucet", "12.5", data_dir=data_dir)).stdout.decode()
        assert "12.500000 dGPU" in out
        assert await s.ledger.balance(s.node_key.public_key.wallet) == 12_500_000
        bad = await dgpu(s, "wallet", "--faucet", "0.0000001", data_dir=data_dir, check=False)
        assert bad.returncode == 2 and b"at most 6 decimals" in bad.stderr


@pytest.mark.integration
async def test_rent_streams_logs_and_jobs_commands(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = await logged_in(s, tmp_path)
        script = tmp_path / "job.sh"
        script.write_text("echo hello\necho world\n")

        async def release_soon() -> None:
            with trio.fail_after(30):
                while not s.double.started:
                    await trio.sleep(0.05)
            s.double.release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_soon)
            r = await dgpu(s, "rent", "--script", str(script), "--max-minutes", "5", data_dir=data_dir)
        assert r.stdout.decode().splitlines()[:2] == ["echo hello", "echo world"]
        err = r.stderr.decode()
        assert "[finished] 2 min, spent 0.002000 dGPU" in err
        assert "finished (exit code 0): 2 min, paid 0.001900 + fee 0.000100" in err
        job_id = s.double.started[0]
        listed = json.loads((await dgpu(s, "jobs", "list", "--json", data_dir=data_dir)).stdout)
        assert listed["jobs"][0]["id"] == job_id and listed["jobs"][0]["state"] == "finished"
        shown = json.loads((await dgpu(s, "jobs", "show", job_id, data_dir=data_dir)).stdout)
        assert shown["paid"] == 1900
        logs = (await dgpu(s, "jobs", "logs", job_id, data_dir=data_dir)).stdout.decode()
        assert logs.splitlines() == ["echo hello", "echo world"]
        again = await dgpu(s, "jobs", "cancel", job_id, data_dir=data_dir, check=False)
        assert again.returncode == 1 and b"job_ended" in again.stderr
        missing = await dgpu(s, "jobs", "show", data_dir=data_dir, check=False)
        assert missing.returncode == 2


@pytest.mark.integration
async def test_ctrl_c_cancels_the_job_and_reports_the_settlement(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = await logged_in(s, tmp_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGPU_")}
        env["DGPU_API_URL"] = s.api_url
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "dgpu.client.cli", "rent", "--image", "busybox", "--max-minutes", "10",
             "--data-dir", str(data_dir), "--command", "sleep", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        with trio.fail_after(30):
            while True:
                _, jobs = s.jobs.list_jobs()
                if jobs and jobs[0].state.value == "running":
                    break
                await trio.sleep(0.05)
            await trio.sleep(0.3)  # let the command reach its polling loop
            proc.send_signal(signal.SIGINT)
            code = await proc.wait()
        assert proc.stderr is not None
        err = b""
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        assert code == 130, err.decode()
        job = s.jobs.list_jobs()[1][0]
        assert job.state.value == "cancelled" and job.cancel_requested.is_set()
        assert b"cancelling job" in err and b"refunded 0.009000" in err


def test_settings_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('api_url = "http://file:1"\ndata_dir = "/from/file"\ntimeout = 7\n')
    s = load_settings({"config": str(cfg)}, env={})
    assert (s.api_url, str(s.data_dir), s.timeout_s) == ("http://file:1", "/from/file", 7.0)
    env = {"DGPU_API_URL": "http://env:2", "DGPU_TIMEOUT": "9"}
    s = load_settings({"config": str(cfg)}, env=env)
    assert (s.api_url, str(s.data_dir), s.timeout_s) == ("http://env:2", "/from/file", 9.0)
    s = load_settings({"config": str(cfg), "api_url": "http://flag:3", "data_dir": "/flag"}, env=env)
    assert (s.api_url, str(s.data_dir), s.timeout_s) == ("http://flag:3", "/flag", 9.0)
    s = load_settings({}, env={"DGPU_CONFIG": str(cfg)})
    assert s.api_url == "http://file:1"
    s = load_settings({}, env={"HOME": str(tmp_path)})  # no default file: defaults
    assert s.api_url == "http://127.0.0.1:8700"
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({"config": str(tmp_path / "missing.toml")}, env={})
    cfg.write_text('api_url = "http://x"\ntoken = "secret"\n')
    with pytest.raises(SettingsError, match="unknown key"):
        load_settings({"config": str(cfg)}, env={})
    cfg.write_text("api_url = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings({"config": str(cfg)}, env={})
    with pytest.raises(SettingsError, match="timeout"):
        load_settings({"timeout": -1}, env={"HOME": str(tmp_path)})


@pytest.mark.parametrize("cmd", ["offers", "rent", "jobs", "wallet", "login"])
def test_help_everywhere(cmd: str) -> None:
    r = subprocess.run([sys.executable, "-m", "dgpu.client.cli", cmd, "--help"], capture_output=True, timeout=60,
                       check=True)
    assert b"DGPU_API_URL" in r.stdout and b"--config" in r.stdout



def test_progress_bar_shows_bytes_percent_and_rate() -> None:
    import io

    from dgpu.client.display import ProgressBar

    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar(out, "result", width=10, min_interval_s=0.5, clock=lambda: now[0])
    bar.update(0, 2048)
    now[0] += 0.1
    bar.update(512, 2048)  # too soon: not redrawn
    now[0] += 0.9
    bar.update(1024, 2048)
    now[0] += 1.0
    bar(2048, 2048)  # the end is always drawn
    bar.close()
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 3
    assert frames[1].startswith("result [#####-----]  50%  1.0 KiB/2.0 KiB  1.0 KiB/s")
    assert frames[2] == "result [##########] 100%  2.0 KiB/2.0 KiB  1.0 KiB/s\n"
    unknown = ProgressBar(io.StringIO(), clock=lambda: now[0])
    assert unknown.render(3 * 1024 * 1024, None).startswith("3.0 MiB")


@pytest.mark.integration
async def test_jobs_result_downloads_and_unpacks_with_a_progress_bar(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = await logged_in(s, tmp_path)
        outputs = tmp_path / "outputs"
        (outputs / "sub").mkdir(parents=True)
        (outputs / "model.bin").write_bytes(os.urandom(300_000))
        (outputs / "sub" / "metrics.json").write_text('{"loss": 0.1}')
        s.double.result_dir = outputs
        script = tmp_path / "job.sh"
        script.write_text("echo hi\n")
        s.double.release.set()
        await dgpu(s, "rent", "--script", str(script), "--max-minutes", "5", data_dir=data_dir)
        job_id = s.double.started[0]
        dest = tmp_path / "got"
        r = await dgpu(s, "jobs", "result", job_id, "--out", str(dest), data_dir=data_dir)
        assert r.stdout.decode().strip() == f"2 file(s) in {dest}"
        assert "] 100%  " in r.stderr.decode() and "iB/s" in r.stderr.decode()  # bytes, percent, rate
        assert (dest / "model.bin").read_bytes() == (outputs / "model.bin").read_bytes()
        assert (dest / "sub" / "metrics.json").read_text() == '{"loss": 0.1}'
        assert sorted(p.name for p in dest.iterdir()) == ["model.bin", "sub"]  # no temp file left
        s.double.result_dir = None
        s.double.release = trio.Event()
        s.double.release.set()
        await dgpu(s, "rent", "--script", str(script), "--max-minutes", "5", data_dir=data_dir)
        none = await dgpu(s, "jobs", "result", s.double.started[1], "--out", str(tmp_path / "none"),
                          data_dir=data_dir, check=False)
        assert none.returncode == 1 and b"no_result" in none.stderr


@pytest.mark.integration
async def test_an_expired_access_token_is_refreshed_and_rotated(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        data_dir = await logged_in(s, tmp_path)
        token_file = data_dir / "api-token.json"
        stored = json.loads(token_file.read_text())
        stored["access_token"] = "expired.or.revoked"  # what a long `dgpu rent` meets after 15 minutes
        token_file.write_text(json.dumps(stored))
        result = await dgpu(s, "wallet", data_dir=data_dir)
        assert b"address" in result.stdout
        renewed = json.loads(token_file.read_text())
        assert renewed["access_token"] != "expired.or.revoked"
        assert renewed["refresh_token"] != stored["refresh_token"]  # rotated: the old one is spent
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        renewed["access_token"] = "expired.again"
        renewed["refresh_token"] = stored["refresh_token"]  # a reused (rotated) refresh token
        token_file.write_text(json.dumps(renewed))
        reused = await dgpu(s, "wallet", data_dir=data_dir, check=False)
        assert reused.returncode == 1 and b"dgpu login" in reused.stderr


def test_rent_inputs_are_checked_and_sent_as_local_paths(tmp_path: Path) -> None:
    import argparse

    from dgpu.client.api_client import CliError
    from dgpu.client.cli import add_commands
    from dgpu.client.commands.jobs import job_body

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd"))
    data = tmp_path / "train.csv"
    data.write_text("1,2\n")
    args = parser.parse_args(["rent", "--image", "busybox", "--input", f"data/train.csv={data}",
                              "--input-root", str(tmp_path), "--command", "cat", "/inputs/data/train.csv"])
    body = job_body(args)
    assert body["inputs"] == {"data/train.csv": str(data.resolve())}
    assert body["command"] == ["cat", "/inputs/data/train.csv"]
    for bad in ("no-equals-sign", f"x={tmp_path / 'missing'}", "=nothing"):
        with pytest.raises(CliError):
            job_body(parser.parse_args(["rent", "--image", "busybox", "--input", bad,
                                        "--input-root", str(tmp_path)]))
    # outside the input roots (the current folder by default): refused before anything is sent
    (tmp_path / "link").symlink_to("/etc/passwd")
    for bad in ("x=/etc/shadow", f"x={tmp_path / 'link'}"):
        with pytest.raises(CliError, match="outside the input roots"):
            job_body(parser.parse_args(["rent", "--image", "busybox", "--input", bad,
                                        "--input-root", str(tmp_path)]))
