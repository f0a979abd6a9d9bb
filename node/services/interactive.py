"""Interactive jobs: a job that runs until its renter closes it or its paid minutes end.

A batch job ends when its command exits; an interactive one (``JobRequest.interactive``, e.g. a
Jupyter server the renter reaches through a forwarded port, or a shell) keeps its sandbox up
after the command exits, so the renter can still shell in and look, until it cancels the job or
closes the escrow, or billing stops it when the paid minutes run out (warnings, top-up and grace
as for any job). Its time limit is the provider's cap, not the minutes bought at the start, so
a top-up really extends it; billing is what ends it.
"""

from __future__ import annotations

from typing import Final

from dgpu.node.ports.execution import ResourceLimits
from dgpu.protocol.messages import JobRequest

__all__ = ["KEEP_ALIVE", "job_payload", "time_limit_s"]

#: what holds the sandbox up once the command is done (POSIX sh and sleep: busybox has both)
KEEP_ALIVE: Final = "while :; do sleep 3600; done"
_NOTE: Final = 'echo "[command exited with $?; the job stays up until the renter closes it]"'


def job_payload(request: JobRequest) -> tuple[tuple[str, ...], str | None]:
    """(command, script) to run for ``request``: as asked, or wrapped for an interactive job."""
    if not request.interactive:
        return request.command, request.script
    if request.script is not None:  # a subshell: an `exit` in the script ends only the script
        return request.command, f"(\n{request.script}\n)\n{_NOTE}\n{KEEP_ALIVE}\n"
    if not request.command:
        return ("/bin/sh", "-c", KEEP_ALIVE), None
    return ("/bin/sh", "-c", f'"$@"; {_NOTE}; {KEEP_ALIVE}', "sh", *request.command), None


def time_limit_s(request: JobRequest, max_minutes: int, cap: ResourceLimits) -> float:
    """A batch job's limit is the minutes agreed; an interactive job's the provider's cap."""
    return cap.time_limit_s if request.interactive else float(max_minutes * 60)
