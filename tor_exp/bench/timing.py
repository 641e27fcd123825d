"""Synchronised wall-clock timing: CUDA events on GPU, perf_counter on CPU; warm-up, then min + median.

Triton kernels compile on their first call and the CUDA caching allocator grows on the first big batch,
so every measurement is preceded by warm-up calls that are not recorded.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (no-op on CPU), so a timer stops after the work, not after the launch."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimingStats:
    """Seconds of each repeat plus the summary statistics reported in the tables."""

    times_s: list[float] = field(default_factory=list)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.times_s))

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}min_s": self.min_s, f"{prefix}median_s": self.median_s}


class Stopwatch:
    """One synchronised interval: ``start()`` … ``stop() -> seconds``.

    On CUDA the interval is measured with events recorded on the current stream (exact GPU time between the
    two points, including idle gaps), after a synchronise; on CPU with ``time.perf_counter``.
    """

    def __init__(self, device: torch.device | str | None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self._t0 = 0.0
        self._events: tuple[Any, Any] | None = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            self._events = (begin, end)
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda and self._events is not None:
            begin, end = self._events
            end.record()
            torch.cuda.synchronize(self.device)
            return begin.elapsed_time(end) / 1000.0
        return time.perf_counter() - self._t0


def time_call(fn: Callable[[], Any], device: torch.device | str | None, *, warmup: int = 1,
              repeats: int = 3) -> tuple[TimingStats, Any]:
    """Run ``fn`` ``warmup`` times unrecorded, then ``repeats`` times timed; returns the stats and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    stats = TimingStats()
    watch = Stopwatch(device)
    for _ in range(repeats):
        watch.start()
        result = fn()
        stats.times_s.append(watch.stop())
    return stats, result
