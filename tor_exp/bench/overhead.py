"""Time spent inside ``method.reduce`` during a prefill (the reduction overhead).

The method object's ``reduce`` is replaced by a timing wrapper on the instance (the model adapter calls
``method.reduce(...)``, so it picks the wrapper up). On CUDA each call is bracketed by events on the current
stream and nothing is synchronised inside the forward, so the measured prefill is not slowed by the
measurement; the per-call intervals are summed after the forward has finished.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch


class ReduceTimer:
    """Accumulates the seconds spent in ``method.reduce`` between ``reset()`` and ``total_s()``."""

    def __init__(self, device: torch.device | str | None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.device = device
        self.calls = 0
        self._cpu_s = 0.0
        self._events: list[tuple[Any, Any]] = []

    def reset(self) -> None:
        self.calls = 0
        self._cpu_s = 0.0
        self._events = []

    def wrap(self, fn: Any) -> Any:
        def timed_reduce(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                out = fn(*args, **kwargs)
                end.record()
                self._events.append((begin, end))
                return out
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._cpu_s += time.perf_counter() - t0
            return out

        return timed_reduce

    def total_s(self) -> float:
        """Seconds inside reduce since the last reset (synchronises on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return sum(b.elapsed_time(e) for b, e in self._events) / 1000.0
        return self._cpu_s


@contextmanager
def timed_reduce(method: Any, timer: ReduceTimer) -> Iterator[ReduceTimer]:
    """Install the timing wrapper on ``method`` (an instance attribute shadowing the class's ``reduce``)."""
    had_own = "reduce" in vars(method)
    original = method.reduce
    method.reduce = timer.wrap(original)
    try:
        yield timer
    finally:
        if had_own:
            method.reduce = original
        else:
            del method.reduce
