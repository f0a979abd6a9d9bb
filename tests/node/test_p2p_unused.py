"""The node skips py-libp2p's unused subsystems (QUIC, WebSocket, mDNS, AutoTLS): what a skipped
module answers, and that in a process that skips them every dGPU module still imports and only
py-libp2p and its own dependencies ever asked for one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dgpu.node.adapters.p2p_unused import (
    UNUSED_SUBSYSTEMS,
    SkippedModule,
    SkippingFinder,
    SubsystemNotLoaded,
    skip_unused_libp2p_subsystems,
)

ABSENT = "dgpu_test_never_installed"


@pytest.fixture
def finder() -> Iterator[SkippingFinder]:
    finder = SkippingFinder({ABSENT: "test subsystem"})
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == ABSENT or m.startswith(ABSENT + ".")]:
            del sys.modules[name]


def test_a_skipped_module_imports_and_its_names_are_placeholders(finder: SkippingFinder) -> None:
    from dgpu_test_never_installed.quic.connection import QuicConnection  # type: ignore[import-not-found]

    module = sys.modules[f"{ABSENT}.quic.connection"]
    assert isinstance(module, SkippedModule)
    assert finder.asked_by[f"{ABSENT}.quic.connection"] == __name__
    assert QuicConnection.VERSION_1 is QuicConnection  # enum members and nested names resolve
    assert QuicConnection[int] is QuicConnection  # so do subscripts in type aliases
    assert not isinstance(object(), QuicConnection)
    assert issubclass(QuicConnection, Exception)  # `except QuicConnection:` stays a valid clause
    try:
        raise ValueError("not a placeholder")
    except QuicConnection:
        pytest.fail("a placeholder caught an unrelated exception")
    except ValueError:
        pass


def test_using_a_placeholder_says_which_subsystem_is_not_loaded(finder: SkippingFinder) -> None:
    from dgpu_test_never_installed import make_config  # type: ignore[import-not-found]

    with pytest.raises(SubsystemNotLoaded, match=r"make_config: py-libp2p's test subsystem is not loaded "
                                                 r"in a dGPU node \(imported by tests\.node\.test_p2p_unused"):
        make_config(port=1)
    assert issubclass(SubsystemNotLoaded, ImportError)


def test_modules_not_listed_are_untouched(finder: SkippingFinder) -> None:
    with pytest.raises(ModuleNotFoundError):
        __import__(ABSENT + "_other")
    assert finder.subsystem_of(ABSENT + "_other") is None
    assert finder.subsystem_of(ABSENT + ".x.y") == "test subsystem"


def test_it_changes_nothing_once_libp2p_is_imported() -> None:
    import libp2p  # noqa: F401  (this test process imports it anyway)

    assert skip_unused_libp2p_subsystems() is None
    assert not any(isinstance(f, SkippingFinder) for f in sys.meta_path)


#: in a fresh interpreter: skip, import every dgpu module, report who asked for a skipped module
_WALK = """
import importlib, json, pkgutil, sys
from dgpu.node.adapters.p2p_unused import skip_unused_libp2p_subsystems, SkippedModule
finder = skip_unused_libp2p_subsystems()
assert skip_unused_libp2p_subsystems() is finder
import dgpu
failed = {}
for info in pkgutil.walk_packages(dgpu.__path__, "dgpu."):
    if info.name.endswith("__main__") or ".scripts." in info.name:
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
real = sorted(name for name in finder.skipped if not isinstance(sys.modules.get(name), SkippedModule))
print(json.dumps({"asked_by": finder.asked_by, "failed": failed, "real": real}))
"""


def test_every_dgpu_module_imports_and_only_libp2p_asks_for_a_skipped_one() -> None:
    out = subprocess.run([sys.executable, "-c", _WALK], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["failed"] == {}
    assert report["real"] == []  # each of them was asked for, and got a skipped module
    assert set(UNUSED_SUBSYSTEMS) <= set(report["asked_by"])
    # py-libp2p, its DNS resolver (dnspython, through py-multiaddr) and the skipped packages
    # themselves: no dGPU module and no other library the node uses needs what was skipped
    allowed = ("libp2p.", "dns.", *UNUSED_SUBSYSTEMS)
    strangers = {skipped: asker for skipped, asker in report["asked_by"].items() if not asker.startswith(allowed)}
    assert strangers == {}
