"""The columns of a comparison: build each variant (``none`` and the method at each FLOPs target), apply it to the
model for a block, and the forward a preset times (no FLOPs bookkeeping inside the timed region)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.bench.config import BenchConfig


@dataclass
class Variant:
    """One column of a comparison: the unreduced model or the method at one FLOPs target."""

    label: str
    method_name: str
    target_flops: float
    method: Any = None
    schedule: Any = None
    keep_ratio: float = 1.0
    aligned: bool = False

    @property
    def reduced(self) -> bool:
        return self.method is not None

    def fields(self) -> dict[str, Any]:
        """The variant's columns of a result row."""
        out = {"variant": self.label, "method": self.method_name, "target_flops": self.target_flops,
               "keep_ratio": self.keep_ratio, "chunk_align": self.aligned}
        if self.aligned and self.schedule is not None:
            out["keep_ratios"] = list(self.schedule.keep_ratios)
        return out


def variant_label(method: str, target: float, aligned: bool = False) -> str:
    return "none" if method == "none" else f"{method}@{round(100 * target):d}%" + ("+align" if aligned else "")


# -------------------------------------------------------------------------------------------------- build
def build_variants(model: Any, model_cfg: Any, reduction_cfg: Any, bench_cfg: BenchConfig, seq_len: int,
                   logits: str = "last") -> list[Variant]:
    """`none` first, then the reduction config's method at each of the preset's FLOPs targets (0 is skipped),
    plain and/or chunk-aligned (``bench.chunk_align``; an aligned schedule is solved for ``seq_len``).

    The preset's targets replace the reduction config's own ``target_flops`` / ``keep_ratio``; a method
    of ``none`` gives the baseline alone.
    """
    from tor_exp.models import build_schedule, model_shape
    from tor_exp.reduction import build_method

    variants = [Variant("none", "none", 0.0)]
    if reduction_cfg.method == "none":
        return variants
    shape = model_shape(model)
    modes = {"plain": (False,), "aligned": (True,), "both": (False, True)}[bench_cfg.chunk_align]
    for target in bench_cfg.flops_targets:
        if target == 0.0:
            continue
        for aligned in modes:
            cfg = dataclasses.replace(reduction_cfg, target_flops=float(target), keep_ratio=None, chunk_align=aligned)
            schedule = build_schedule(cfg, model_cfg, seq_len=seq_len, shape=shape, logits=logits)
            if aligned and not really_aligned(schedule):  # no aligned lengths fit: the plain schedule is what runs
                if False in modes:  # `both`: the plain row already is this schedule, do not show it twice
                    continue
                aligned = False
            variants.append(Variant(variant_label(cfg.method, target, aligned), cfg.method, float(target),
                                    build_method(cfg), schedule, schedule.keep_ratio, aligned))
    return variants


def really_aligned(schedule: Any) -> bool:
    """Whether a schedule built with ``chunk_align=true`` keeps a chunk multiple at one location at least (it falls
    back to the plain schedule when no aligned lengths meet the target, or the SSM does not scan in chunks)."""
    return bool(getattr(schedule, "chunk", 0)) and any(getattr(schedule, "aligned", ()))


def alignment_notes(model: Any, model_cfg: Any, reduction_cfg: Any, bench_cfg: BenchConfig) -> list[str]:
    """One line per sequence length at which a chunk-aligned schedule was asked for (``bench.chunk_align``
    aligned / both) but no aligned lengths fit, so the plain schedule ran (its rows say ``chunk_align: false``)."""
    from tor_exp.models import build_schedule, model_shape
    from tor_exp.models.flops import chunk_size

    if bench_cfg.chunk_align == "plain" or reduction_cfg.method == "none":
        return []
    shape = model_shape(model)
    chunk = chunk_size(shape)
    modes = {"memory": list(bench_cfg.memory_logits), "generate": ["last"]}.get(bench_cfg.kind, [bench_cfg.logits])
    notes = []
    for seq_len in bench_cfg.seq_lens:
        missed = []
        for target in bench_cfg.flops_targets:
            if target == 0.0:
                continue
            cfg = dataclasses.replace(reduction_cfg, target_flops=float(target), keep_ratio=None, chunk_align=True)
            if not all(really_aligned(build_schedule(cfg, model_cfg, seq_len=seq_len, shape=shape, logits=mode))
                       for mode in modes):
                missed.append(f"{round(100 * target):d}%")
        if missed:
            why = (f"no aligned lengths fit at N={seq_len} (chunk {chunk})" if chunk
                   else f"the model's SSM does not scan in chunks (N={seq_len})")
            notes.append(f"{why}: target {', '.join(missed)} "
                         + ("has its plain row only" if bench_cfg.chunk_align == "both" else "ran the plain schedule"))
    return notes


# -------------------------------------------------------------------------------------------------- apply
def applied(model: Any, variant: Variant, tokenizer: Any, model_cfg: Any) -> Any:
    """The model patched with the variant's method (calibrated on the model's calibration text) for a block."""
    from tor_exp.models.schedule import reducing

    return reducing(model, variant.method, variant.schedule, tokenizer=tokenizer,
                    calibration_source=model_cfg.calibration_text)


# ------------------------------------------------------------------------------------------------ forward
@dataclass
class ForwardOut:
    """What a timed forward returns: logits, tokens entering each layer [B, L] and the filled cache (or None)."""

    logits: Tensor
    counts: Tensor
    cache: Any = None


def forward_fn(model: Any, ids: Tensor, variant: Variant, logits: str = "last", *, with_cache: bool = False,
               logits_float: bool = False, observers: Sequence[Any] = ()):
    """A closure running :func:`tor_exp.models.backbone.forward` (reducing per the variant), without FLOPs
    bookkeeping.

    ``reduced_forward`` also computes realised FLOPs on the host; that is done once after timing instead, so the
    timed region is the model's work only. ``with_cache``: a generation prefill — a fresh cache is filled and each
    row's last prompt token is protected (it predicts the first new token), as
    :func:`tor_exp.models.generation.prefill` does.
    """
    from tor_exp.models import adapter_of
    from tor_exp.models.backbone import forward
    from tor_exp.models.tokens import protect_last

    valid = torch.ones_like(ids, dtype=torch.bool)
    protected = protect_last(valid) if with_cache else None
    adapter = adapter_of(model)

    def run() -> ForwardOut:
        cache = adapter.new_cache(model) if with_cache else None
        out = forward(model, ids, valid, protected, logits, method=variant.method, schedule=variant.schedule,
                      cache=cache, observers=observers, float_logits=logits_float)
        return ForwardOut(out.logits, out.tokens_per_layer, cache)

    return run


def realised(model: Any, out: ForwardOut, length: int, logits: str) -> dict[str, float]:
    """Realised FLOPs reductions (proxy / backbone / total) from the real token counts of one forward."""
    from tor_exp.models import model_shape, realised_flops_reduction

    n_input = torch.full((out.counts.shape[0],), length)
    return realised_flops_reduction(out.counts.cpu(), n_input, model_shape(model), logits)


def flops_fields(flops: dict[str, float]) -> dict[str, Optional[float]]:
    """``realised_backbone`` (FLOPs of the real token counts), ``realised_backbone_padded`` (what a chunk-padding
    scan does; None without chunks), ``realised_total``, ``realised_proxy`` (token average: the SSM-only view)."""
    return {"realised_backbone": flops.get("backbone"), "realised_backbone_padded": flops.get("backbone_padded"),
            "realised_total": flops.get("total"), "realised_proxy": flops.get("proxy")}
