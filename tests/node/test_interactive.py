"""Interactive jobs keep their sandbox up after the command and are limited by billing, not minutes."""

from __future__ import annotations

import subprocess

from dgpu.node.ports.execution import ResourceLimits
from dgpu.node.services.interactive import KEEP_ALIVE, job_payload, time_limit_s
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, JobRequest

WALLET = SigningKey(b"\x03" * 32).public_key.wallet
CAP = ResourceLimits(time_limit_s=86_400.0)


def request(**job: object) -> JobRequest:
    return JobRequest(request_id="cd" * 8, renter=WALLET, provider=WALLET, offer_seq=1, max_minutes=5,
                      max_price_per_minute=10, **job)  # type: ignore[arg-type]


def test_a_batch_job_runs_as_asked_within_its_minutes() -> None:
    job = request(image="busybox", command=("echo", "hi"))
    assert job_payload(job) == (("echo", "hi"), None)
    assert time_limit_s(job, 5, CAP) == 300.0


def test_an_interactive_docker_job_runs_its_command_then_stays_up() -> None:
    job = request(image="busybox", command=("echo", "it's $HOME"), interactive=True)
    command, script = job_payload(job)
    assert script is None and command[:2] == ("/bin/sh", "-c") and KEEP_ALIVE in command[2]
    # the renter's words are arguments of the wrapper, never parsed by its shell: run it, keeper cut
    wrapper = command[2].replace(KEEP_ALIVE, "true")
    done = subprocess.run(["/bin/sh", "-c", wrapper, *command[3:]], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[0] == "it's $HOME" and "command exited with 0" in done.stdout
    assert time_limit_s(job, 5, CAP) == CAP.time_limit_s  # billing ends it (top-ups extend it)
    assert job_payload(request(image="busybox", interactive=True))[0] == ("/bin/sh", "-c", KEEP_ALIVE)


def test_an_interactive_script_ends_only_its_subshell_on_exit() -> None:
    job = request(executor=Executor.SCRIPT, script="echo one\nexit 3\necho never", interactive=True)
    _, script = job_payload(job)
    assert script is not None
    done = subprocess.run(["/bin/sh", "-c", script.replace(KEEP_ALIVE, "true")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines() == ["one", "[command exited with 3; the job stays up until the renter closes it]"]
