"""Pure ratio arithmetic of the benchmark tables (unit-tested on hand-computed numbers).

Ideal speed-ups assume time is proportional to FLOPs in the part that is reduced: a prefill that skips a
fraction f of its FLOPs ideally runs 1/(1−f) times faster; end to end only the prefill part P shrinks,
decode D is untouched (reduction never runs in decode), so the ideal is (P+D)/(P·(1−f)+D).
"""
from __future__ import annotations

from typing import Optional

from tor_exp.errors import ConfigError


def _check_fraction(f: float) -> None:
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"FLOPs reduction f={f!r}: must be in [0, 1)")


def ideal_prefill_speedup(f: float) -> float:
    """1/(1−f): the prefill speed-up if time scaled with FLOPs."""
    _check_fraction(f)
    return 1.0 / (1.0 - f)


def ideal_end_to_end_speedup(prefill_s: float, decode_s: float, f: float) -> float:
    """(P+D)/(P·(1−f)+D) from the baseline's measured prefill P and decode D."""
    _check_fraction(f)
    if prefill_s < 0 or decode_s < 0 or prefill_s + decode_s <= 0:
        raise ConfigError(f"prefill_s={prefill_s!r}, decode_s={decode_s!r}: need non-negative times with P+D > 0")
    return (prefill_s + decode_s) / (prefill_s * (1.0 - f) + decode_s)


def speedup(baseline_s: float, method_s: float) -> float:
    """t_baseline / t_method (> 1 means the method is faster)."""
    if baseline_s <= 0 or method_s <= 0:
        raise ConfigError(f"baseline_s={baseline_s!r}, method_s={method_s!r}: times must be > 0")
    return baseline_s / method_s


def fraction_of_ideal(measured: float, ideal: float) -> float:
    """measured / ideal speed-up: 1.0 = every FLOP saved became time saved."""
    if ideal <= 0:
        raise ConfigError(f"ideal={ideal!r}: must be > 0")
    return measured / ideal


def tokens_per_second(batch_size: int, new_tokens: int, seconds: float) -> float:
    """Generated tokens (all rows) per second of wall time."""
    if seconds <= 0:
        raise ConfigError(f"seconds={seconds!r}: must be > 0")
    return batch_size * new_tokens / seconds


def overhead_share(reduce_s: float, prefill_s: float) -> Optional[float]:
    """Time inside the reduction ops as a share of the whole prefill (None when the prefill took no time)."""
    if prefill_s <= 0:
        return None
    return reduce_s / prefill_s
