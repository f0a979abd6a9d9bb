"""dgpu.protocol is pure: importing it loads no I/O library, and its source imports none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dgpu.protocol

FORBIDDEN_LOADED = ["trio", "libp2p", "docker", "solana", "solders", "httpx", "anchorpy", "aiosqlite", "pynvml",
                    "uvicorn", "fastapi", "asyncio", "dgpu.node", "dgpu.bootstrap", "dgpu.client", "dgpu.contracts"]
#: what the source may not import: clocks, randomness, files, processes, sockets
FORBIDDEN_IMPORTS = {"time", "datetime", "random", "secrets", "os", "socket", "subprocess", "pathlib", "io",
                     "asyncio", "threading", "uuid", "shutil", "tempfile", "logging", "urllib", "http", "ssl"}


def test_importing_protocol_loads_no_io_library() -> None:
    code = (
        "import sys, dgpu.protocol, dgpu.protocol.negotiation, dgpu.protocol.escrow_vectors, "
        "dgpu.protocol.job_session\n"
        f"bad = [m for m in sys.modules for f in {FORBIDDEN_LOADED!r} if m == f or m.startswith(f + '.')]\n"
        "print(','.join(sorted(bad)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_protocol_source_imports_no_clock_randomness_or_io() -> None:
    package = Path(dgpu.protocol.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_IMPORTS, f"{source.name} imports {name}"
