"""Speed / memory benchmarks of token reduction (``python -m tor_exp task=bench bench=<preset>``)."""
from tor_exp.bench.ratios import (
    fraction_of_ideal,
    ideal_end_to_end_speedup,
    ideal_prefill_speedup,
    overhead_share,
    speedup,
    tokens_per_second,
)
from tor_exp.bench.runner import run_benchmark

__all__ = [
    "fraction_of_ideal",
    "ideal_end_to_end_speedup",
    "ideal_prefill_speedup",
    "overhead_share",
    "run_benchmark",
    "speedup",
    "tokens_per_second",
]
