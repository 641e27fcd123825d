"""The four presets: prefill, generate, memory, overhead. Each says only what one call measures for a variant and
which columns its row has; :func:`tor_exp.bench.loop.measure_grid` runs them all over the same shapes, prompts and
timed round-robin, and each preset's ratio pass compares every row with ``none`` at its shape (ratios against the
ideal time ∝ FLOPs in the reduced part; see :mod:`tor_exp.bench.ratios`)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from tor_exp.bench import ratios
from tor_exp.bench.config import BenchConfig
from tor_exp.bench.loop import Measured, Sample, Shape, measure_grid, release, timed
from tor_exp.bench.memory import NvmlPeakSampler, nvml_handle
from tor_exp.bench.overhead import ReduceTimer
from tor_exp.bench.timing import synchronize
from tor_exp.bench.variants import ForwardOut, Variant, flops_fields, forward_fn, realised
from tor_exp.models.families import adapter_of
from tor_exp.models.static_decode import StaticDecoder, states_from_cache


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else 1000.0 * seconds


# ------------------------------------------------------------------------------------------------ prefill
def bench_prefill(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                  device: torch.device) -> list[dict[str, Any]]:
    """Forward over the prompt (``cfg.logits``, default last-token logits): min/median seconds per variant."""

    def measure(shape: Shape, variants: list[Variant], mode: str):
        runs = [forward_fn(model, shape.ids, v, mode, logits_float=cfg.logits_float) for v in variants]

        def step(i: int) -> Sample:
            seconds, out = timed(runs[i], device)
            return Sample({"prefill": seconds}, out)

        return step, None

    def row(shape: Shape, v: Variant, m: Measured, mode: str) -> dict[str, Any]:
        return {**v.fields(), **flops_fields(realised(model, m.last, shape.seq_len, mode)), "logits": mode,
                **m.timing("prefill"), "times_s": m.times("prefill"),
                "tokens_per_s": ratios.tokens_per_second(shape.batch, shape.seq_len, m.stats["prefill"].min_s)}

    rows = measure_grid(model, tokenizer, model_cfg, reduction_cfg, cfg, device, modes=[cfg.logits],
                        measure=measure, row=row)
    add_prefill_ratios(rows)
    return rows


def add_prefill_ratios(rows: list[dict[str, Any]], time_key: str = "prefill_min_s") -> None:
    """speed-up = t_none / t_method per (batch, seq_len); ideal 1/(1−f) for the realised and the target f."""
    base = {(r["batch"], r["seq_len"]): r for r in rows if r["variant"] == "none"}
    for r in rows:
        b = base.get((r["batch"], r["seq_len"]))
        if b is None:
            continue
        r["speedup"] = ratios.speedup(b[time_key], r[time_key])
        r["speedup_median"] = ratios.speedup(b[time_key.replace("min", "median")], r[time_key.replace("min", "median")])
        f_real = max(0.0, r.get("realised_backbone") or 0.0)
        r["ideal_speedup"] = ratios.ideal_prefill_speedup(f_real)
        r["ideal_speedup_target"] = ratios.ideal_prefill_speedup(r["target_flops"])
        r["of_ideal"] = ratios.fraction_of_ideal(r["speedup"], r["ideal_speedup"])
        r["of_ideal_target"] = ratios.fraction_of_ideal(r["speedup"], r["ideal_speedup_target"])
        if r.get("realised_backbone_padded") is not None:  # the ideal of a scan that pads to whole chunks
            r["ideal_speedup_padded"] = ratios.ideal_prefill_speedup(max(0.0, r["realised_backbone_padded"]))
            r["of_ideal_padded"] = ratios.fraction_of_ideal(r["speedup"], r["ideal_speedup_padded"])
        if r.get("realised_proxy") is not None:  # the token-count ideal: what an SSM-only model would gain
            r["ideal_speedup_tokens"] = ratios.ideal_prefill_speedup(max(0.0, r["realised_proxy"]))


# ----------------------------------------------------------------------------------------------- generate
class _Decoders:
    """One :class:`StaticDecoder` per batch size, shared by all variants (its CUDA graph is captured once)."""

    def __init__(self, model: Any, cfg: BenchConfig, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.by_batch: dict[int, StaticDecoder] = {}

    def path(self) -> str:
        if self.cfg.decode == "hf" or not adapter_of(self.model).static_decode:
            return "hf"
        return "cuda_graph" if (self.device.type == "cuda" and self.cfg.cuda_graph) else "static"

    def kernel_info(self, batch: int) -> dict[str, Any]:
        dec = self.by_batch.get(batch)
        return dict(dec.kernel_info) if dec is not None else {}

    def decode(self, out: Any, n_tokens: int) -> Tensor:
        first = out.logits[:, -1].argmax(dim=-1)
        if n_tokens <= 0:
            return first[:, None]
        if self.path() == "hf":
            from tor_exp.models.generation import decode_step

            toks, tok, cache = [first], first, out.cache
            for _ in range(n_tokens):
                tok = decode_step(self.model, tok, cache).argmax(dim=-1)
                toks.append(tok)
            return torch.stack(toks, dim=1)
        states = states_from_cache(out.cache, adapter_of(self.model).num_layers(self.model))
        batch = first.shape[0]
        dec = self.by_batch.get(batch)
        if dec is None:
            dec = StaticDecoder(self.model, states, graph=self.path() == "cuda_graph")
            self.by_batch[batch] = dec
        dec.load(states, first)
        return torch.cat([first[:, None], dec.run(n_tokens)], dim=1)


def generate_tokens(model: Any, ids: Tensor, variant: Variant, new_tokens: int, decoders: _Decoders,
                    device: torch.device) -> tuple[Tensor, float, float, ForwardOut]:
    """Reduced prefill (last prompt token protected) + unreduced greedy decode; (tokens, P s, D s, prefill out).

    P covers the prefill up to its last-token logits; D the remaining ``new_tokens − 1`` greedy steps.
    """
    p, out = timed(forward_fn(model, ids, variant, "last", with_cache=True), device)
    d, tokens = timed(lambda: decoders.decode(out, new_tokens - 1), device)
    return tokens, p, d, out


def bench_generate(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                   device: torch.device) -> list[dict[str, Any]]:
    """End-to-end greedy generation of ``new_tokens`` per row: prefill P and decode D timed separately."""
    decoders = _Decoders(model, cfg, device)

    def measure(shape: Shape, variants: list[Variant], mode: str):
        def step(i: int) -> Sample:
            tokens, p, d, out = generate_tokens(model, shape.ids, variants[i], cfg.new_tokens, decoders, device)
            # only what the row needs is kept (the last-token logits and the counts, not the cache)
            return Sample({"prefill": p, "decode": d, "total": p + d},
                          (ForwardOut(out.logits[:, -1:], out.counts), list(tokens.shape)))

        return step, None

    steps = max(1, cfg.new_tokens - 1)

    def row(shape: Shape, v: Variant, m: Measured, mode: str) -> dict[str, Any]:
        out, generated = m.last
        return {"new_tokens": cfg.new_tokens, **v.fields(), **flops_fields(realised(model, out, shape.seq_len, mode)),
                **m.timing("prefill"), **m.timing("decode"), **m.timing("total"),
                "decode_ms_per_token": _ms(m.stats["decode"].min_s / steps) if cfg.new_tokens > 1 else None,
                "tokens_per_s": ratios.tokens_per_second(shape.batch, cfg.new_tokens, m.stats["total"].min_s),
                "decode_path": decoders.path(), "generated_shape": generated,
                "decode_kernels": decoders.kernel_info(shape.batch)}

    rows = measure_grid(model, tokenizer, model_cfg, reduction_cfg, cfg, device, modes=["last"], measure=measure,
                        row=row)
    add_generate_ratios(rows)
    return rows


def add_generate_ratios(rows: list[dict[str, Any]]) -> None:
    """Measured gain = total_none / total_method; ideal (P+D)/(P·(1−f)+D) from the baseline's P and D."""
    base = {(r["batch"], r["seq_len"]): r for r in rows if r["variant"] == "none"}
    for r in rows:
        b = base.get((r["batch"], r["seq_len"]))
        if b is None:
            continue
        p, d = b["prefill_min_s"], b["decode_min_s"]
        f_real = max(0.0, r.get("realised_backbone") or 0.0)
        r["throughput_gain"] = ratios.speedup(b["total_min_s"], r["total_min_s"])
        r["prefill_speedup"] = ratios.speedup(p, r["prefill_min_s"])
        r["ideal_gain"] = ratios.ideal_end_to_end_speedup(p, d, f_real)
        r["ideal_gain_target"] = ratios.ideal_end_to_end_speedup(p, d, r["target_flops"])
        r["of_ideal"] = ratios.fraction_of_ideal(r["throughput_gain"], r["ideal_gain"])
        r["ideal_prefill_speedup"] = ratios.ideal_prefill_speedup(f_real)


# ------------------------------------------------------------------------------------------------- memory
def _oom_fields(err: BaseException) -> dict[str, Any]:
    """The row of a variant that did not fit (the baseline may not): recorded, and the preset goes on."""
    return {"oom": True, "error": str(err).splitlines()[0][:200], "logits_bytes": None,
            "peak_allocated_bytes": None, "nvml_peak_bytes": None}


def bench_memory(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                 device: torch.device) -> list[dict[str, Any]]:
    """Peak memory of one forward per variant × logits mode (allocator peak and NVML; null on CPU)."""
    handle = nvml_handle(device)

    def measure(shape: Shape, variants: list[Variant], mode: str):
        runs = [forward_fn(model, shape.ids, v, mode, logits_float=cfg.logits_float) for v in variants]
        failed: dict[int, dict[str, Any]] = {}

        def warm(i: int) -> None:  # Triton compiles / autotunes outside the measurement
            if i in failed:
                return
            try:
                runs[i]()
            except torch.cuda.OutOfMemoryError as err:
                failed[i] = _oom_fields(err)
                release(device)

        def step(i: int) -> Sample:
            if i in failed:
                return Sample(out=failed[i])
            try:
                return Sample(out=_memory_fields(model, shape.ids, variants[i], runs[i], mode, device, handle, cfg))
            except torch.cuda.OutOfMemoryError as err:
                release(device)
                return Sample(out=_oom_fields(err))

        return step, warm

    def row(shape: Shape, v: Variant, m: Measured, mode: str) -> dict[str, Any]:
        return {"logits": mode, **v.fields(), **m.last}

    rows = measure_grid(model, tokenizer, model_cfg, reduction_cfg, cfg, device, modes=list(cfg.memory_logits),
                        measure=measure, row=row, repeats=1)
    add_memory_ratios(rows)
    return rows


def _memory_fields(model: Any, ids: Tensor, v: Variant, run: Any, mode: str, device: torch.device, handle: Any,
                   cfg: BenchConfig) -> dict[str, Any]:
    """One forward's allocator and NVML peaks, its logits tensor and the cache a generation prefill leaves."""
    cuda = device.type == "cuda"
    release(device)
    base = torch.cuda.memory_allocated(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with NvmlPeakSampler(handle, cfg.nvml_interval_ms) as sampler:
        nvml_before = sampler.peak
        out = run()
        synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    fields = {**flops_fields(realised(model, out, ids.shape[1], mode)),
              "logits_bytes": out.logits.numel() * out.logits.element_size(), "logits_dtype": str(out.logits.dtype),
              "peak_allocated_bytes": peak, "peak_above_weights_bytes": None if peak is None else peak - base,
              "nvml_peak_bytes": sampler.peak, "nvml_before_bytes": nvml_before}
    del out
    # what a generation prefill leaves behind: keys/values of the (reduced) attention layers, SSM states
    cached = forward_fn(model, ids, v, "last", with_cache=True)()
    held = adapter_of(model).cache_bytes(cached.cache)
    fields.update({"kv_cache_bytes": held["kv"], "ssm_cache_bytes": held["ssm"]})
    return fields


def add_memory_ratios(rows: list[dict[str, Any]]) -> None:
    """Saving = 1 − peak_method / peak_none per (batch, seq_len, logits mode) for each measured peak."""
    base = {(r["batch"], r["seq_len"], r["logits"]): r for r in rows if r["variant"] == "none"}
    for r in rows:
        b = base.get((r["batch"], r["seq_len"], r["logits"]))
        if b is None:
            continue
        for key in ("peak_allocated_bytes", "peak_above_weights_bytes", "nvml_peak_bytes", "logits_bytes",
                    "kv_cache_bytes", "ssm_cache_bytes"):
            if r.get(key) is not None and b.get(key):
                r[key.replace("_bytes", "_saving")] = 1.0 - r[key] / b[key]


# ----------------------------------------------------------------------------------------------- overhead
def bench_overhead(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                   device: torch.device) -> list[dict[str, Any]]:
    """Seconds inside ``method.reduce`` as a share of the whole prefill (same forward, per repeat)."""

    def measure(shape: Shape, variants: list[Variant], mode: str):
        timers = [ReduceTimer(device) for _ in variants]
        runs = [forward_fn(model, shape.ids, v, mode, logits_float=cfg.logits_float, observers=[timer])
                for v, timer in zip(variants, timers)]

        def step(i: int) -> Sample:
            timers[i].reset()
            seconds, out = timed(runs[i], device)
            return Sample({"prefill": seconds, "reduce": timers[i].total_s()}, (out, timers[i].calls))

        return step, None

    def row(shape: Shape, v: Variant, m: Measured, mode: str) -> dict[str, Any]:
        out, calls = m.last
        shares = [ratios.overhead_share(r, t) for t, r in zip(m.times("prefill"), m.times("reduce"))]
        return {**v.fields(), **flops_fields(realised(model, out, shape.seq_len, mode)), **m.timing("prefill"),
                **m.timing("reduce"), "reduce_calls": calls,
                "locations": len(v.schedule.locations) if v.reduced else 0,
                "overhead_share": sorted(shares)[len(shares) // 2] if v.reduced else 0.0,
                "overhead_share_min": min(shares) if v.reduced else 0.0}

    rows = measure_grid(model, tokenizer, model_cfg, reduction_cfg, cfg, device, modes=[cfg.logits],
                        measure=measure, row=row)
    add_prefill_ratios(rows)
    return rows


PRESETS = {"prefill": bench_prefill, "generate": bench_generate, "memory": bench_memory, "overhead": bench_overhead}
