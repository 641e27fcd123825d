"""The four presets: prefill, generate, memory, overhead — each runs `none` and the chosen method at every
FLOPs target of the preset in the same process, on the same random prompts, and reports ratios against the
ideal (time ∝ FLOPs in the reduced part; see :mod:`tor_exp.bench.ratios`).
"""
from __future__ import annotations

import dataclasses
import gc
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from tor_exp.bench import ratios
from tor_exp.bench.config import BenchConfig
from tor_exp.models.static_decode import StaticDecoder, states_from_cache
from tor_exp.bench.memory import NvmlPeakSampler, nvml_handle
from tor_exp.bench.overhead import ReduceTimer
from tor_exp.bench.timing import Stopwatch, TimingStats, synchronize
from tor_exp.models.families import adapter_of


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
            variants.append(Variant(variant_label(cfg.method, target, aligned), cfg.method, float(target),
                                    build_method(cfg), schedule, schedule.keep_ratio, aligned))
    return variants


def applied(model: Any, variant: Variant, tokenizer: Any, model_cfg: Any) -> Any:
    """The model patched with the variant's method (calibrated on the model's calibration text) for a block."""
    from tor_exp.models.schedule import reducing

    return reducing(model, variant.method, variant.schedule, tokenizer=tokenizer,
                    calibration_source=model_cfg.calibration_text)


def random_prompts(batch: int, length: int, vocab: int, seed: int, device: torch.device) -> Tensor:
    """Seeded random token ids [batch, length] (speed does not depend on the ids; the seed keeps runs equal)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch * 10_007 + length)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


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


def _flops_fields(flops: dict[str, float]) -> dict[str, Optional[float]]:
    """``realised_backbone`` (FLOPs of the real token counts), ``realised_backbone_padded`` (what a chunk-padding
    scan does; None without chunks), ``realised_total``, ``realised_proxy`` (token average: the SSM-only view)."""
    return {"realised_backbone": flops.get("backbone"), "realised_backbone_padded": flops.get("backbone_padded"),
            "realised_total": flops.get("total"), "realised_proxy": flops.get("proxy")}


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else 1000.0 * seconds


def _release(device: torch.device) -> None:
    """Free the previous variant's tensors before the next measurement (GPU only: gc is slow on big heaps)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ prefill
def run_order(n_variants: int, repeats: int, interleave: bool = True) -> list[int]:
    """Which variant each timed run belongs to: round-robin (0,1,…,n−1, 0,1,…) so that slow drifts of the
    machine (other tenants, clocks) hit every variant alike, or blocks (0,0,…,1,1,…) when not interleaved."""
    if interleave:
        return [i for _ in range(repeats) for i in range(n_variants)]
    return [i for i in range(n_variants) for _ in range(repeats)]


def bench_prefill(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                  device: torch.device) -> list[dict[str, Any]]:
    """Forward over the prompt (``cfg.logits``, default last-token logits): min/median seconds per variant.

    Every variant is warmed up first, then the timed runs go round-robin over the variants.
    """
    rows = []
    for batch in cfg.batch_sizes:
        for length in cfg.seq_lens:
            ids = random_prompts(batch, length, adapter_of(model).vocab_size(model), cfg.seed, device)
            variants = build_variants(model, model_cfg, reduction_cfg, cfg, length, cfg.logits)
            runs = [forward_fn(model, ids, v, cfg.logits, logits_float=cfg.logits_float) for v in variants]
            stats = [TimingStats() for _ in variants]
            counts: list[Any] = [None] * len(variants)
            watch = Stopwatch(device)
            with torch.inference_mode():
                for v, run in zip(variants, runs):
                    with applied(model, v, tokenizer, model_cfg):
                        for _ in range(cfg.warmup):
                            run()
                for i in run_order(len(variants), cfg.repeats, cfg.interleave):
                    with applied(model, variants[i], tokenizer, model_cfg):
                        watch.start()
                        out = runs[i]()
                        stats[i].times_s.append(watch.stop())
                    counts[i] = out
                    del out
            for v, st, out in zip(variants, stats, counts):
                rows.append({"kind": "prefill", "batch": batch, "seq_len": length, **v.fields(),
                             **_flops_fields(realised(model, out, length, cfg.logits)), "logits": cfg.logits,
                             **st.as_dict("prefill_"), "times_s": st.times_s,
                             "tokens_per_s": ratios.tokens_per_second(batch, length, st.min_s)})
            del counts
            _release(device)
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


def generate_tokens(model: Any, ids: Tensor, variant: Variant, new_tokens: int, decoders: "_Decoders",
                    device: torch.device) -> tuple[Tensor, float, float, ForwardOut]:
    """Reduced prefill (last prompt token protected) + unreduced greedy decode; (tokens, P s, D s, prefill out).

    P covers the prefill up to its last-token logits; D the remaining ``new_tokens − 1`` greedy steps.
    """
    prefill = forward_fn(model, ids, variant, "last", with_cache=True)
    watch = Stopwatch(device)
    watch.start()
    out = prefill()
    p = watch.stop()
    watch.start()
    tokens = decoders.decode(out, new_tokens - 1)
    d = watch.stop()
    return tokens, p, d, out


def bench_generate(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                   device: torch.device) -> list[dict[str, Any]]:
    """End-to-end greedy generation of ``new_tokens`` per row: prefill P and decode D timed separately
    (variants warmed up first, then timed round-robin like the prefill preset)."""
    decoders = _Decoders(model, cfg, device)
    rows = []
    for batch in cfg.batch_sizes:
        for length in cfg.seq_lens:
            ids = random_prompts(batch, length, adapter_of(model).vocab_size(model), cfg.seed, device)
            variants = build_variants(model, model_cfg, reduction_cfg, cfg, length, "last")
            pre, dec, tot = ([TimingStats() for _ in variants] for _ in range(3))
            last: list[Any] = [None] * len(variants)
            with torch.inference_mode():
                for v in variants:
                    with applied(model, v, tokenizer, model_cfg):
                        for _ in range(cfg.warmup):
                            generate_tokens(model, ids, v, cfg.new_tokens, decoders, device)
                for i in run_order(len(variants), cfg.repeats, cfg.interleave):
                    with applied(model, variants[i], tokenizer, model_cfg):
                        tokens, p, d, out = generate_tokens(model, ids, variants[i], cfg.new_tokens, decoders, device)
                    pre[i].times_s.append(p)
                    dec[i].times_s.append(d)
                    tot[i].times_s.append(p + d)
                    last[i] = (ForwardOut(out.logits[:, -1:], out.counts), list(tokens.shape))
                    del out, tokens
            steps = max(1, cfg.new_tokens - 1)
            for i, v in enumerate(variants):
                rows.append({
                    "kind": "generate", "batch": batch, "seq_len": length, "new_tokens": cfg.new_tokens,
                    **v.fields(), **_flops_fields(realised(model, last[i][0], length, "last")),
                    **pre[i].as_dict("prefill_"), **dec[i].as_dict("decode_"), **tot[i].as_dict("total_"),
                    "decode_ms_per_token": _ms(dec[i].min_s / steps) if cfg.new_tokens > 1 else None,
                    "tokens_per_s": ratios.tokens_per_second(batch, cfg.new_tokens, tot[i].min_s),
                    "decode_path": decoders.path(), "generated_shape": last[i][1],
                    "decode_kernels": decoders.kernel_info(batch),
                })
            del last
            _release(device)
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
def bench_memory(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, cfg: BenchConfig,
                 device: torch.device) -> list[dict[str, Any]]:
    """Peak memory of one forward per variant × logits mode (allocator peak and NVML; null on CPU)."""
    handle = nvml_handle(device)
    rows = []
    for batch in cfg.batch_sizes:
        for length in cfg.seq_lens:
            ids = random_prompts(batch, length, adapter_of(model).vocab_size(model), cfg.seed, device)
            for mode in cfg.memory_logits:
                for v in build_variants(model, model_cfg, reduction_cfg, cfg, length, mode):
                    row: dict[str, Any] = {"kind": "memory", "batch": batch, "seq_len": length, "logits": mode,
                                           **v.fields()}
                    try:
                        row.update(_measure_memory(model, ids, v, mode, cfg, device, handle, tokenizer, model_cfg))
                    except torch.cuda.OutOfMemoryError as err:  # the baseline may not fit: record, go on
                        row.update({"oom": True, "error": str(err).splitlines()[0][:200], "logits_bytes": None,
                                    "peak_allocated_bytes": None, "nvml_peak_bytes": None})
                    rows.append(row)
                    _release(device)
    add_memory_ratios(rows)
    return rows


def _measure_memory(model: Any, ids: Tensor, v: Variant, mode: str, cfg: BenchConfig, device: torch.device,
                    handle: Any, tokenizer: Any, model_cfg: Any) -> dict[str, Any]:
    cuda = device.type == "cuda"
    with applied(model, v, tokenizer, model_cfg), torch.inference_mode():
        run = forward_fn(model, ids, v, mode, logits_float=cfg.logits_float)
        for _ in range(cfg.warmup):  # Triton compiles / autotunes outside the measurement
            run()
        _release(device)
        base = torch.cuda.memory_allocated(device) if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with NvmlPeakSampler(handle, cfg.nvml_interval_ms) as sampler:
            nvml_before = sampler.peak
            out = run()
            synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        fields = {**_flops_fields(realised(model, out, ids.shape[1], mode)),
                  "logits_bytes": out.logits.numel() * out.logits.element_size(), "logits_dtype": str(out.logits.dtype),
                  "peak_allocated_bytes": peak, "peak_above_weights_bytes": None if peak is None else peak - base,
                  "nvml_peak_bytes": sampler.peak, "nvml_before_bytes": nvml_before}
        del out
        # what a generation prefill leaves behind: keys/values of the (reduced) attention layers, SSM states
        cached = forward_fn(model, ids, v, "last", with_cache=True)()
        held = adapter_of(model).cache_bytes(cached.cache)
        fields.update({"kv_cache_bytes": held["kv"], "ssm_cache_bytes": held["ssm"]})
        del cached
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
    rows = []
    for batch in cfg.batch_sizes:
        for length in cfg.seq_lens:
            ids = random_prompts(batch, length, adapter_of(model).vocab_size(model), cfg.seed, device)
            for v in build_variants(model, model_cfg, reduction_cfg, cfg, length, cfg.logits):
                timer = ReduceTimer(device)
                run = forward_fn(model, ids, v, cfg.logits, logits_float=cfg.logits_float, observers=[timer])
                with applied(model, v, tokenizer, model_cfg), torch.inference_mode():
                    for _ in range(cfg.warmup):
                        run()
                    watch, total, inside, shares, calls = Stopwatch(device), TimingStats(), TimingStats(), [], 0
                    for _ in range(cfg.repeats):
                        timer.reset()
                        watch.start()
                        out = run()
                        t = watch.stop()
                        r = timer.total_s()
                        total.times_s.append(t)
                        inside.times_s.append(r)
                        shares.append(ratios.overhead_share(r, t))
                        calls = timer.calls
                rows.append({"kind": "overhead", "batch": batch, "seq_len": length, **v.fields(),
                             **_flops_fields(realised(model, out, length, cfg.logits)), **total.as_dict("prefill_"),
                             **inside.as_dict("reduce_"),
                             "reduce_calls": calls, "locations": len(v.schedule.locations) if v.reduced else 0,
                             "overhead_share": sorted(shares)[len(shares) // 2] if v.reduced else 0.0,
                             "overhead_share_min": min(shares) if v.reduced else 0.0})
                del out
                _release(device)
    add_prefill_ratios(rows)
    return rows


RUNNERS = {"prefill": bench_prefill, "generate": bench_generate, "memory": bench_memory, "overhead": bench_overhead}


# ------------------------------------------------------------------------------------------------ summary
def _pct(f: float) -> str:
    return f"f{round(100 * f):d}"


def summarise(kind: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Flat scalar ratios for W&B: ``<kind>.b<B>n<N>.f<pct>.<metric>`` plus the largest shape without the shape."""
    metrics = {
        "prefill": ("speedup", "ideal_speedup", "of_ideal"),
        "overhead": ("overhead_share", "speedup"),
        "generate": ("throughput_gain", "ideal_gain", "of_ideal", "prefill_speedup", "decode_ms_per_token",
                     "tokens_per_s"),
        "memory": ("peak_allocated_saving", "nvml_peak_saving", "logits_saving"),
    }[kind]
    out: dict[str, float] = {}
    if not rows:
        return out
    largest = max((r["batch"] * r["seq_len"], r["batch"], r["seq_len"]) for r in rows)[1:]
    for r in rows:
        shape = f"b{r['batch']}n{r['seq_len']}"
        tag = "none" if r["variant"] == "none" else _pct(r["target_flops"])
        if kind == "memory":
            tag = f"{tag}.logits_{r['logits']}"
        for m in metrics:
            value = r.get(m)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{kind}.{shape}.{tag}.{m}"] = float(value)
                if (r["batch"], r["seq_len"]) == largest:
                    out[f"{kind}.{tag}.{m}"] = float(value)
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def run_benchmark(model: Any, tokenizer: Any, model_cfg: Any, reduction_cfg: Any, bench_cfg: BenchConfig, *,
                  out_dir: Optional[str | Path] = None, device: Optional[torch.device | str] = None) -> dict[str, Any]:
    """Run the preset ``bench_cfg.kind``; returns ``{"bench": {...rows, markdown, plot}, "bench_summary": {...}}``.

    The PNG plot and ``bench_<kind>.md`` are written to ``out_dir`` when given.
    """
    from tor_exp.bench.report import markdown_table, plot_rows

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not adapter_of(model).hf_model:
        from tor_exp.errors import ConfigError

        raise ConfigError("model.backend=mamba_ssm: the benchmarks drive HF models (the mamba_ssm adapter has no "
                          "cache-filling prefill); use model.backend=hf, which calls mamba_ssm's kernels when importable")
    model.eval()
    rows = RUNNERS[bench_cfg.kind](model, tokenizer, model_cfg, reduction_cfg, bench_cfg, device)
    table = markdown_table(bench_cfg.kind, rows)
    result: dict[str, Any] = {
        "kind": bench_cfg.kind, "device": str(device), "device_name": bench_cfg.machine or device_name(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "rows": rows, "markdown": table,
        "method": reduction_cfg.method, "flops_targets": list(bench_cfg.flops_targets),
    }
    if bench_cfg.kind == "generate":
        result["decode_path"] = rows[0]["decode_path"] if rows else None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"bench_{bench_cfg.kind}.md").write_text(table + "\n")
        if bench_cfg.plot:
            result["plot"] = plot_rows(bench_cfg.kind, rows, out / f"bench_{bench_cfg.kind}.png")
    print(table)
    return {"bench": result, "bench_summary": summarise(bench_cfg.kind, rows)}
