"""The README's researcher example runs and its numbers are right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "negotiate_offline.py"


def test_offline_negotiation_example_runs() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=60)
    # 23,834/min x 30 deposited; 7 minutes accrued: 166,838 gross, fee floor(8,341.9) = 8,341
    assert "settlement: {'deposited': 715020, 'paid': 158497, 'fee': 8341, 'refunded': 548182}" in result.stdout
    assert "agreed / agreed" in result.stdout
