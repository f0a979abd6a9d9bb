"""``python nvml_provider.py ARGS...`` runs ``dgpu ARGS...`` with the NVML test double standing in
for the NVIDIA library (the module ``adapters.gpu.NvmlGpus`` loads), so a provider process on a
machine without a GPU has two "H100" GPUs to offer, sample and lease."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: ``tests`` imports

from tests.node.fake_nvml import TWO_H100, FakeNvml

sys.modules["pynvml"] = FakeNvml(gpus=list(TWO_H100))  # type: ignore[assignment]

from dgpu.client.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
