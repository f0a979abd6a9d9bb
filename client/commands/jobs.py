"""``dgpu rent`` and ``dgpu jobs``: submit a job through the node, follow it, cancel it, fetch its result."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import BaseModel

from dgpu.client.api_client import Api, ApiCallError, CliError, answer_of, settings_of
from dgpu.client.display import ProgressBar, fmt_amount, fmt_bytes, fmt_time, table
from dgpu.node.services.api.schema import IMAGE_REFERENCE, ApiJobState, JobOut, JobsOut, LogLine, LogsOut
from dgpu.node.services.blobs import BlobError, safe_unpack
from dgpu.node.services.forward_client import ForwardInfo
from dgpu.node.services.renter.inputs import InputRefused, resolve_input, resolve_roots

__all__ = ["cmd_jobs", "cmd_rent", "download_result", "job_body"]

#: how often ``rent`` and ``jobs logs --follow`` poll the node (a local call)
POLL_S = 0.5
#: the most log lines fetched per poll (the API's own bound is 1000)
LOG_BATCH = 500
MAX_SCRIPT_BYTES = 64 * 1024
#: a downloaded result archive at most (the provider's blob limit); bounds the temp file
MAX_RESULT_BYTES = 1024**3


def _iso_times(data: Any) -> Any:
    """``data`` with its times (``*_at`` and ``at`` keys, nested too) as ISO-8601, not epoch seconds."""
    if isinstance(data, list):
        return [_iso_times(v) for v in data]
    if not isinstance(data, dict):
        return data
    return {k: fmt_time(v) if (k == "at" or k.endswith("_at")) and isinstance(v, int | float | None)
            else _iso_times(v) for k, v in data.items()}


def _dump(model: BaseModel, out: IO[str], *, iso_times: bool = False) -> None:
    data = model.model_dump(mode="json")
    json.dump(_iso_times(data) if iso_times else data, out, indent=2)  # for people: ISO times
    print(file=out)


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"max_minutes": args.max_minutes}
    if args.script is not None:
        path = Path(args.script)
        try:
            if path.stat().st_size > MAX_SCRIPT_BYTES:
                raise CliError(f"{path} is larger than {MAX_SCRIPT_BYTES} bytes", 2)
            body["script"] = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", 2) from None
    elif args.image is not None:
        if not IMAGE_REFERENCE.fullmatch(args.image):
            raise CliError(f"--image {args.image!r} is not a Docker image name (like busybox or "
                           "pytorch/pytorch:2.4)", 2)
        body["image"] = args.image
        body["command"] = list(args.command or [])
    else:
        raise CliError("give --script FILE or --image IMAGE [--command ...]", 2)
    if args.gpu:
        model, _, vram = args.gpu.partition(":")
        body["gpu_model"] = model
        if vram:
            if not vram.isdigit():
                raise CliError("--gpu is MODEL[:MIN_VRAM_MIB]", 2)
            body["min_vram_mib"] = int(vram)
    if args.max_price is not None:
        body["max_price_per_minute"] = args.max_price
    if args.provider:
        body["provider"] = args.provider
    if args.count != 1:
        body["gpu_count"] = args.count
    inputs: dict[str, str] = {}
    roots = resolve_roots(getattr(args, "input_root", None) or [Path.cwd()])
    for item in args.input or []:
        job_path, sep, local = item.partition("=")
        if not sep or not job_path or not local:
            raise CliError(f"--input is JOB_PATH=LOCAL_FILE, got {item!r}", 2)
        try:  # the node checks its own --input-root too; this refuses early, with the CLI's roots
            inputs[job_path] = str(resolve_input(local, roots))
        except InputRefused as exc:
            raise CliError(f"--input {job_path}: {exc}", 2) from None
    if inputs:
        body["inputs"] = inputs
    if getattr(args, "stop_on_disconnect", False):
        body["stop_on_disconnect"] = True
    if getattr(args, "forward", None):
        body["forward"] = list(args.forward)
    if getattr(args, "interactive", False):
        body["interactive"] = True
    return body


def _status_line(job: JobOut, decimals: int | None) -> str:
    return f"[{job.state}] {job.minutes} min, spent {fmt_amount(job.spent, decimals)} dGPU"


def _print_lines(lines: list[LogLine], out: IO[str], err: IO[str]) -> None:
    for line in lines:
        print(line.line, file=out if line.stream == "stdout" else err, flush=True)


def _follow(api: Api, job_id: str, out: IO[str], err: IO[str], decimals: int | None) -> JobOut:
    """Print new log lines and a status line until the job ends; returns the final status."""
    seq = 0
    last_status = ""
    forwards_told = 0
    while True:
        logs = api.get(LogsOut, "GET", f"/api/v1/jobs/{job_id}/logs", params={"since": seq, "limit": LOG_BATCH})
        _print_lines(logs.lines, out, err)
        seq = max(seq, logs.next_seq if not logs.lines else logs.lines[-1].seq + 1)
        job = api.get(JobOut, "GET", f"/api/v1/jobs/{job_id}")
        status = _status_line(job, decimals)
        if status != last_status:
            print(status, file=err, flush=True)
            last_status = status
        for forward in job.forwards[forwards_told:]:  # each once, as it comes up
            print(ForwardInfo(forward.job_port, forward.local_port, forward.error).line, file=err, flush=True)
        forwards_told = len(job.forwards)
        if job.state.terminal and seq >= job.next_log_seq:
            return job
        time.sleep(POLL_S)


def _summary(job: JobOut, decimals: int | None, err: IO[str]) -> int:
    paid, fee = fmt_amount(job.paid, decimals), fmt_amount(job.fee, decimals)
    refunded = fmt_amount(job.refunded, decimals)
    print(f"job {job.id} {job.state} (exit code {job.exit_code}): {job.minutes} min, "
          f"paid {paid} + fee {fee}, refunded {refunded} dGPU"
          + (f" — {job.reason}" if job.reason else ""), file=err, flush=True)
    return 0 if job.state is ApiJobState.FINISHED and job.exit_code == 0 else 1


def cmd_rent(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    body = job_body(args)
    push_to = str(getattr(args, "push_result", None) or "")  # BUCKET/KEY of the node's bootstrap storage
    bucket, _, key = push_to.partition("/")
    if push_to and (not bucket or not key):
        raise CliError(f"--push-result is BUCKET/KEY, got {push_to!r}", 2)
    api = Api(settings_of(args))
    decimals = api.decimals()
    if push_to:  # a signed link of our bucket, for the provider: no token of ours leaves the node
        link = api.call("POST", f"/api/v1/storage-links/{bucket}/{urllib.parse.quote(key, safe='/')}")
        body["result_upload"] = link["url"]
    job_id = api.get(JobOut, "POST", "/api/v1/jobs", json=body).id
    print(f"job {job_id} submitted (Ctrl-C cancels it and settles the escrow)", file=err, flush=True)
    try:
        final = _follow(api, job_id, out, err, decimals)
    except KeyboardInterrupt:
        print(f"cancelling job {job_id}…", file=err, flush=True)
        try:
            api.call("DELETE", f"/api/v1/jobs/{job_id}")
        except ApiCallError as exc:
            if exc.api_code != "job_ended":
                raise
        try:
            final = _follow(api, job_id, out, err, decimals)
        except KeyboardInterrupt:
            print(f"not waiting; the node is cancelling job {job_id} (`dgpu jobs show {job_id}`)", file=err)
            return 130
        _summary(final, decimals, err)
        return 130
    finally:
        api.close()
    return _summary(final, decimals, err)


def cmd_jobs(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    api = Api(settings_of(args))
    try:
        action = args.action or "list"
        if action == "list":
            params: dict[str, Any] = {"limit": args.limit}
            if args.state:
                params["state"] = args.state
            jobs = api.get(JobsOut, "GET", "/api/v1/jobs", params=params)
            if args.json:
                _dump(jobs, out)
                return 0
            decimals = api.decimals()
            table([[j.id, str(j.state), fmt_time(j.created_at), j.provider or "-", str(j.minutes),
                    fmt_amount(j.spent, decimals), str(j.exit_code)] for j in jobs.jobs],
                  ["ID", "STATE", "CREATED", "PROVIDER", "MINUTES", "SPENT", "EXIT"], out)
            return 0
        if args.job_id is None:
            raise CliError(f"dgpu jobs {action} needs a job id (or `last`)", 2)
        if args.job_id == "last":  # the newest job: what a person usually means after `dgpu rent`
            newest = api.get(JobsOut, "GET", "/api/v1/jobs", params={"limit": 1}).jobs
            if not newest:
                raise CliError("this node has no jobs yet", 2)
            args.job_id = max(newest, key=lambda j: j.created_at).id
        if action == "show":
            _dump(api.get(JobOut, "GET", f"/api/v1/jobs/{args.job_id}"), out, iso_times=not args.json)
            return 0
        if action == "logs":
            if args.follow:
                final = _follow(api, args.job_id, out, err, api.decimals())
                return _summary(final, api.decimals(), err)
            logs = api.get(LogsOut, "GET", f"/api/v1/jobs/{args.job_id}/logs", params={"limit": args.limit})
            _print_lines(logs.lines, out, err)
            return 0
        if action == "attach":  # the node re-attaches on the provider; logs from where it left off
            job = api.get(JobOut, "POST", f"/api/v1/jobs/{args.job_id}/attach")
            print(f"job {job.id} attached (agreement {job.agreement_id})", file=err, flush=True)
            final = _follow(api, job.id, out, err, api.decimals())
            if args.out is not None and final.state is ApiJobState.FINISHED:
                files = download_result(api, job.id, Path(args.out), ProgressBar(err, "result"))
                print(f"{len(files)} file(s) in {args.out}", file=out)
            return _summary(final, api.decimals(), err)
        if action == "cancel":
            job = api.get(JobOut, "DELETE", f"/api/v1/jobs/{args.job_id}")
            print(f"job {job.id}: cancel requested (state {job.state})", file=out)
            return 0
        if action == "shell":
            from dgpu.client.commands.shell import cmd_shell

            argv = list(args.shell_cmd or [])
            return cmd_shell(args.job_id, argv[1:] if argv[:1] == ["--"] else argv, args)
        if action == "result":
            dest = Path(args.out or f"result-{args.job_id}")
            files = download_result(api, args.job_id, dest, ProgressBar(err, "result"))
            print(f"{len(files)} file(s) in {dest}", file=out)
            return 0
        raise CliError(f"unknown action {action}", 2)
    finally:
        api.close()


def download_result(api: Api, job_id: str, dest: Path, bar: ProgressBar) -> list[Path]:
    """Stream ``GET /api/v1/jobs/{id}/result`` to a temp file with a progress bar, then unpack it
    safely (no absolute paths, ``..``, links or special files; size-bounded) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".dgpu-result-", suffix=".tar", dir=dest)
    tmp = Path(tmp_name)
    total: int | None = None
    done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with api.http.stream("GET", f"/api/v1/jobs/{job_id}/result", timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        answer_of(r)
                    total = int(r.headers.get("content-length", 0)) or None
                    bar.update(0, total)
                    for chunk in r.iter_bytes(64 * 1024):
                        f.write(chunk)
                        done += len(chunk)
                        if done > MAX_RESULT_BYTES:
                            raise CliError(f"the result is larger than {fmt_bytes(MAX_RESULT_BYTES)}; refused")
                        bar.update(done, total)
            except httpx.HTTPError as exc:
                raise CliError(f"the result download failed ({type(exc).__name__})", 4) from None
            finally:
                bar.close()
        if total is not None and done != total:
            raise CliError(f"the result download ended after {done} of {total} bytes", 4)
        try:
            return safe_unpack(tmp, dest, max_total_bytes=MAX_RESULT_BYTES * 4)
        except BlobError as exc:
            raise CliError(f"refusing the result archive: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
