"""Speed / memory benchmarks of token reduction (``python -m tor_exp task=bench bench=<preset>``).

Names load lazily (PEP 562): the CLI imports ``tor_exp.bench.config`` to validate overrides, and that must not
pay for importing transformers.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "fraction_of_ideal": "ratios",
    "ideal_end_to_end_speedup": "ratios",
    "ideal_prefill_speedup": "ratios",
    "overhead_share": "ratios",
    "speedup": "ratios",
    "tokens_per_second": "ratios",
    "run_benchmark": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
