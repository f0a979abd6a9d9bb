"""``examples/forwarded_http.py`` runs and prints the page its job serves through the forward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "forwarded_http.py"


def test_forwarded_http_example_prints_what_the_job_serves() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "forwarding allowed: True" in done.stdout
    assert "-> hello from inside the job" in done.stdout
    assert "rental ended cancelled" in done.stdout
