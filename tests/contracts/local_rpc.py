"""The local development Solana endpoint for tests: ``dgpu.contracts.local_rpc``, skipping without cargo.

Without ``cargo`` the tests that need the endpoint skip with a clear message, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dgpu.contracts.local_rpc import LocalRpcUnavailable, build


def build_or_skip() -> Path:
    try:
        return build()
    except LocalRpcUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true: these tests must run)")
        pytest.skip(str(exc))
