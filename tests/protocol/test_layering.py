"""Node layering: ``services → ports ← adapters``. A service may import the standard library, a
few pure libraries (trio, pydantic), ``dgpu.protocol``, ``dgpu.node.ports``, ``dgpu.node.errors``
and its sibling services — never an adapter or an I/O library, directly or through any dgpu
module it imports (the import graph is walked statically, so imports inside functions and under
``TYPE_CHECKING`` count too), and importing every service loads none of them either."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dgpu

ROOT = Path(dgpu.__file__).resolve().parent
#: third-party packages that do I/O (or pull it in): only adapters may import them
FORBIDDEN_LIBRARIES = {"libp2p", "multiaddr", "docker", "aiosqlite", "sqlite3", "httpx", "fastapi", "starlette",
                       "uvicorn", "solana", "solders", "anchorpy", "spl", "pynvml", "requests", "trio_asyncio"}
#: the dgpu modules a service may depend on (each of them is checked the same way)
#: (``dgpu._lazy``: the packages' lazy re-exports, importlib only)
ALLOWED_DGPU = ("dgpu.protocol", "dgpu.node.ports", "dgpu.node.services", "dgpu.node.errors", "dgpu._lazy")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, source: Path) -> set[str]:
    """Every absolute module name ``source`` imports (relative imports resolved)."""
    package = name if source.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            # ``from dgpu.node import ports`` names a module too
            out.update(f"{module}.{alias.name}" for alias in node.names if _module_file(f"{module}.{alias.name}"))
    return out


def _violations(start: str) -> list[str]:
    """Forbidden imports reachable from ``start``, as 'a -> b -> forbidden' chains."""
    found: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
    while stack:
        name, chain = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        source = _module_file(name)
        if source is None:
            continue
        for imported in sorted(_imports(name, source)):
            top = imported.split(".")[0]
            if top in FORBIDDEN_LIBRARIES:
                found.append(" -> ".join((*chain, imported)))
            elif top == "dgpu" and imported != "dgpu":
                if not imported.startswith(ALLOWED_DGPU):
                    found.append(" -> ".join((*chain, imported)))
                else:
                    stack.append((imported, (*chain, imported)))
    return found


def _services() -> list[str]:
    """Every module under node/services, packages (services/api/...) included."""
    base = ROOT / "node" / "services"
    names = []
    for path in base.rglob("*.py"):
        parts = path.relative_to(base).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(("dgpu.node.services", *parts)))
    return sorted(names)


def test_services_import_only_ports_protocol_and_each_other() -> None:
    assert "dgpu.node.services.api.jobs" in _services()  # packages are walked too
    problems = {s: _violations(s) for s in _services()}
    assert {s: v for s, v in problems.items() if v} == {}


def test_the_walk_sees_adapters_and_passes_ports() -> None:
    # the checker itself: app wires the adapters (directly and through lazy imports)
    assert any(v.endswith("dgpu.node.adapters.p2p") for v in _violations("dgpu.node.app"))
    assert not _violations("dgpu.node.ports")


def test_importing_every_service_loads_no_io_library() -> None:
    services = _services()
    forbidden = [*sorted(FORBIDDEN_LIBRARIES), "dgpu.node.adapters", "dgpu.contracts", "dgpu.client",
                 "dgpu.bootstrap"]
    code = (
        "import sys\n"
        + "".join(f"import {s}\n" for s in services)
        + f"bad = [m for m in sys.modules for f in {forbidden!r} if m == f or m.startswith(f + '.')]\n"
        "print(','.join(sorted(bad)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_a_node_loads_heavy_clients_only_where_it_uses_them() -> None:
    # idle RSS: what `dgpu node` imports before it runs loads no web server, JWT, Docker, Solana
    # or S3 client (the local API, the docker executor and the Solana ledger import theirs lazily)
    heavy = ["fastapi", "starlette", "uvicorn", "jwt", "trio_asyncio", "docker", "solana", "solders", "anchorpy",
             "boto3", "botocore"]
    code = ("import sys\nimport dgpu.client.main, dgpu.node.app, dgpu.node.provider, dgpu.node.cli\n"
            f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
