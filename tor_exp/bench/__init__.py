"""Speed / memory benchmarks of token reduction (``python -m tor_exp task=bench bench=<preset>``).

Names load lazily (PEP 562): the CLI imports ``tor_exp.bench.config`` to validate overrides, and that must not
pay for importing transformers.
"""
from tor_exp._lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
