#!/usr/bin/env bash
# Real-hardware check (issue 11): on a machine with an NVIDIA GPU, run a bootstrap node, a provider
# with NO GPU flags (its inventory comes from NVML) and a renter on 127.0.0.1; rent one GPU for a
# script job that runs nvidia-smi, then print the offer, the job's output and the usage receipts
# (JSON). Needs only this repository and its virtual environment (`make install`).
# Exit status: 0 the job ran on the leased GPU; 1 the check failed; 2 this machine cannot run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "gpu-check: no virtual environment at .venv: run 'make install' first" >&2
    exit 2
fi
if ! "$PY" - <<'PYEOF'
import sys

import pynvml

try:
    pynvml.nvmlInit()
except pynvml.NVMLError as exc:
    print(f"gpu-check: NVML is not usable here ({exc}): this check needs an NVIDIA GPU with its driver "
          "(nvidia-smi must list it); development networks use --simulated-gpu instead", file=sys.stderr)
    sys.exit(2)
count = pynvml.nvmlDeviceGetCount()
pynvml.nvmlShutdown()
if count == 0:
    print("gpu-check: NVML reports no GPU", file=sys.stderr)
    sys.exit(2)
PYEOF
then
    exit 2
fi
exec "$PY" - "$@" <<'PYEOF'
"""Bootstrap + provider (NVML, no GPU flags, engine price) + renter renting one GPU."""
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dgpu.client.demo import DemoNetwork

JOB = "nvidia-smi -L; nvidia-smi --query-gpu=uuid,utilization.gpu --format=csv; " \
      "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 3"
workdir = Path(tempfile.mkdtemp(prefix="dgpu-gpu-check-"))
workdir.chmod(0o711)  # a root provider runs script jobs as their own uid under it
net = DemoNetwork(workdir, log_level="INFO")
deadline = time.monotonic() + 120
summary: dict = {}
output: list[str] = []
ok = False
try:
    net.start_bootstrap(deadline)
    net.start_provider("provider", None, None, deadline, extra=["--executor", "script"])
    renter = net.start_renter("renter", ["--rent-script", JOB, "--rent-minutes", "3"])
    assert renter.stdout is not None
    for raw in renter.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if line.startswith("SUMMARY "):
            summary = json.loads(line[len("SUMMARY "):])
        elif line.strip().startswith("[job "):
            output.append(line.strip().split("] ", 1)[-1])
    renter.wait(timeout=60)
    ok = summary.get("state") == "finished" and any(o.startswith("GPU 0") or "GPU-" in o for o in output)
finally:
    net.stop()
print(json.dumps({"ok": ok, "offer": summary.get("offer"), "rate_inputs": summary.get("rate_inputs"),
                  "job_output": output, "metered_minutes": summary.get("metered_minutes"),
                  "receipts": summary.get("usage"), "over_accrued": summary.get("over_accrued"),
                  "state": summary.get("state"), "error": summary.get("error")}, indent=2))
if ok:
    shutil.rmtree(workdir, ignore_errors=True)
else:
    print(f"gpu-check failed; logs in {workdir}", file=sys.stderr)
sys.exit(0 if ok else 1)
PYEOF
