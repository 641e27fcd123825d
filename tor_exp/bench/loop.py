"""The one measurement loop every preset runs: the (batch, seq_len) shapes with their seeded random prompts, and
the timed round-robin over the variants (warm-up, repeats in interleaved order, synchronised intervals, min and
median per interval). A preset only says what one call measures (:class:`Sample`)."""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from tor_exp.bench.config import BenchConfig
from tor_exp.bench.timing import Stopwatch, TimingStats
from tor_exp.bench.variants import Variant, applied


def random_prompts(batch: int, length: int, vocab: int, seed: int, device: torch.device) -> Tensor:
    """Seeded random token ids [batch, length] (speed does not depend on the ids; the seed keeps runs equal)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch * 10_007 + length)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def release(device: torch.device) -> None:
    """Free the previous measurement's tensors before the next one (GPU only: gc is slow on big heaps)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class Shape:
    """One point of a preset's grid: batch × prompt length and its prompt token ids."""

    batch: int
    seq_len: int
    ids: Tensor


def shapes(model: Any, cfg: BenchConfig, device: torch.device) -> Iterator[Shape]:
    """Every ``bench.batch_sizes`` × ``bench.seq_lens`` point in order, with the same seeded prompts in every preset;
    the device's cache is released after each point."""
    from tor_exp.models import adapter_of

    vocab = adapter_of(model).vocab_size(model)
    for batch in cfg.batch_sizes:
        for length in cfg.seq_lens:
            yield Shape(batch, length, random_prompts(batch, length, vocab, cfg.seed, device))
            release(device)


def run_order(n_variants: int, repeats: int, interleave: bool = True) -> list[int]:
    """Which variant each timed run belongs to: round-robin (0,1,…,n−1, 0,1,…) so that slow drifts of the
    machine (other tenants, clocks) hit every variant alike, or blocks (0,0,…,1,1,…) when not interleaved."""
    if interleave:
        return [i for _ in range(repeats) for i in range(n_variants)]
    return [i for i in range(n_variants) for _ in range(repeats)]


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``fn()`` in one synchronised interval: (seconds, its result)."""
    watch = Stopwatch(device)
    watch.start()
    out = fn()
    return watch.stop(), out


@dataclass
class Sample:
    """What one call of a preset's step measured: named intervals in seconds, and what it produced."""

    times: dict[str, float] = field(default_factory=dict)
    out: Any = None


@dataclass
class Measured:
    """One variant's timed calls: the seconds of each named interval per call (min / median), the last output."""

    stats: dict[str, TimingStats] = field(default_factory=dict)
    last: Any = None

    def timing(self, name: str, prefix: Optional[str] = None) -> dict[str, float]:
        """``<prefix>min_s`` and ``<prefix>median_s`` of interval ``name`` (prefix defaults to ``<name>_``)."""
        return self.stats[name].as_dict(f"{name}_" if prefix is None else prefix)

    def times(self, name: str) -> list[float]:
        return self.stats[name].times_s


def round_robin(model: Any, variants: list[Variant], step: Callable[[int], Sample], *, tokenizer: Any,
                model_cfg: Any, cfg: BenchConfig, repeats: Optional[int] = None,
                warm: Optional[Callable[[int], Any]] = None) -> list[Measured]:
    """Every variant warmed up ``cfg.warmup`` times (``warm``, default the step itself: Triton compiles and the
    allocator grows outside the measurement), then ``repeats`` (default ``cfg.repeats``) calls of ``step(i)`` per
    variant in :func:`run_order` (round-robin when ``cfg.interleave``), each with the variant's method applied;
    returns one :class:`Measured` per variant."""
    warm = warm if warm is not None else step
    measured = [Measured() for _ in variants]
    with torch.inference_mode():
        for i, variant in enumerate(variants):
            with applied(model, variant, tokenizer, model_cfg):
                for _ in range(cfg.warmup):
                    warm(i)
        for i in run_order(len(variants), cfg.repeats if repeats is None else repeats, cfg.interleave):
            with applied(model, variants[i], tokenizer, model_cfg):
                sample = step(i)
            for name, seconds in sample.times.items():
                measured[i].stats.setdefault(name, TimingStats()).times_s.append(seconds)
            measured[i].last = sample.out
            del sample
    return measured


#: a preset's measurement of one shape × logits mode: (step, warm-up or None = the step) for its variants
Measure = Callable[[Shape, list[Variant], str], tuple[Callable[[int], Sample], Optional[Callable[[int], Any]]]]
#: a preset's row of one variant (after ``kind``, ``batch``, ``seq_len``) from what the loop measured
Row = Callable[[Shape, Variant, Measured, str], dict[str, Any]]


def measure_grid(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                 device: torch.device, *, modes: list[str], measure: Measure, row: Row,
                 repeats: Optional[int] = None) -> list[dict[str, Any]]:
    """The loop of every preset: for each shape (:func:`shapes`) and logits mode, the variants (`none` and the
    method at each target, :func:`~tor_exp.bench.variants.build_variants`) measured by :func:`round_robin`; one
    row per variant."""
    from tor_exp.bench.variants import build_variants

    rows = []
    for shape in shapes(model, cfg, device):
        for mode in modes:
            variants = build_variants(model, model_cfg, reduction_cfg, cfg, shape.seq_len, mode)
            step, warm = measure(shape, variants, mode)
            measured = round_robin(model, variants, step, tokenizer=tokenizer, model_cfg=model_cfg, cfg=cfg,
                                   repeats=repeats, warm=warm)
            for variant, m in zip(variants, measured):
                rows.append({"kind": cfg.kind, "batch": shape.batch, "seq_len": shape.seq_len,
                             **row(shape, variant, m, mode)})
            del measured, step, warm
    return rows
