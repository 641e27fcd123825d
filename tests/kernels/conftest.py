"""The kernel suite's setup: mamba_ssm's Triton kernels on CPU tensors under triton's interpreter.

Runs only as its own process, ``python -m pytest -p no:xdist -m kernels tests/kernels`` with the folder
``launchers/install_cpu_kernels.sh`` filled on PYTHONPATH (docs/install.md, "Kernel tests"): the shims
(tests/kernels/kernel_shims.py) must be in place before mamba_ssm and transformers' modeling modules are imported, and
they change how transformers dispatches, so they are applied only when the ``kernels`` mark is what was asked for.
Elsewhere (the default run deselects the mark) this file does nothing. Without the kernels installed the cases
skip, saying why; with ``TOR_EXP_REQUIRE_KERNELS=1`` (.ci/run) they fail instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import kernel_shims as shims  # noqa: E402

_STATE: dict[str, object] = {"active": False, "why": None}


def pytest_configure(config: pytest.Config) -> None:
    if (config.option.markexpr or "").strip() != "kernels":
        _STATE["why"] = "the kernel suite runs in its own process: python -m pytest -p no:xdist -m kernels tests/kernels"
        return
    why = shims.missing()
    if why is None:
        shims.apply()
        _STATE["active"] = True
    _STATE["why"] = why


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.kernels)
    if _STATE["active"] or not ours:
        return
    if os.environ.get("TOR_EXP_REQUIRE_KERNELS") == "1" and (config.option.markexpr or "").strip() == "kernels":
        raise pytest.UsageError(f"TOR_EXP_REQUIRE_KERNELS=1 but the kernel suite cannot run: {_STATE['why']}")
    skip = pytest.mark.skip(reason=str(_STATE["why"]))
    for item in ours:
        item.add_marker(skip)
