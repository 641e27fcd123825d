"""Time spent inside the reductions during a prefill (the reduction overhead).

:class:`ReduceTimer` is a :class:`~tor_exp.reduction.base.ReductionObserver` of the backbone loop: it brackets
every reduction (the method's decision and its application). On CUDA each one is bracketed by events on the
current stream and nothing is synchronised inside the forward, so the measured prefill is not slowed by the
measurement; the per-call intervals are summed after the forward has finished.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from tor_exp.reduction.base import ReductionObserver


class ReduceTimer(ReductionObserver):
    """Accumulates the seconds spent in reductions between ``reset()`` and ``total_s()``."""

    def __init__(self, device: torch.device | str | None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.device = device
        self.calls = 0
        self._cpu_s = 0.0
        self._t0 = 0.0
        self._begin: Any = None
        self._events: list[tuple[Any, Any]] = []

    def reset(self) -> None:
        self.calls = 0
        self._cpu_s = 0.0
        self._events = []

    def before_reduce(self, location: int, state: Any) -> None:
        self.calls += 1
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._t0 = time.perf_counter()

    def after_reduce(self, location: int, before: Any, plan: Any, after: Any) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._begin, end))
        else:
            self._cpu_s += time.perf_counter() - self._t0

    def total_s(self) -> float:
        """Seconds inside reductions since the last reset (synchronises on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return sum(b.elapsed_time(e) for b, e in self._events) / 1000.0
        return self._cpu_s
