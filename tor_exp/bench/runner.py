"""Run one preset (:mod:`tor_exp.bench.presets`) on a loaded model and return its rows, markdown table and flat
summary; the job (``tor_exp.run``) writes them through its output folder (nothing here writes a file).

The modules below: :mod:`~tor_exp.bench.variants` (build / apply / forward of each variant),
:mod:`~tor_exp.bench.loop` (the shapes and the one timed round-robin loop), :mod:`~tor_exp.bench.presets` (what
each preset measures), :mod:`~tor_exp.bench.report` (table and plot bytes).
"""
from __future__ import annotations

import logging
import platform
from typing import Any, Optional

import torch

from tor_exp.bench.config import BenchConfig
from tor_exp.bench.presets import PRESETS
from tor_exp.bench.variants import alignment_notes
from tor_exp.models.families import adapter_of

log = logging.getLogger(__name__)


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
                  device: Optional[torch.device | str] = None) -> dict[str, Any]:
    """Run the preset ``bench_cfg.kind``; returns ``{"bench": {kind, rows, markdown, ...}, "bench_summary": {...}}``.

    Writes nothing: the caller puts the table (and :func:`tor_exp.bench.report.plot_png`) where it keeps its files.
    """
    from tor_exp.bench.report import markdown_table

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not adapter_of(model).hf_model:
        from tor_exp.errors import ConfigError

        raise ConfigError("model.backend=mamba_ssm: the benchmarks drive HF models (the mamba_ssm adapter has no "
                          "cache-filling prefill); use model.backend=hf, which calls mamba_ssm's kernels when importable")
    model.eval()
    rows = PRESETS[bench_cfg.kind](model, tokenizer, model_cfg, reduction_cfg, bench_cfg, device)
    notes = alignment_notes(model, model_cfg, reduction_cfg, bench_cfg)
    for note in notes:
        log.warning("bench.chunk_align=%s: %s", bench_cfg.chunk_align, note)
    table = markdown_table(bench_cfg.kind, rows) + "".join(f"\n\n{note}" for note in notes)
    result: dict[str, Any] = {
        "kind": bench_cfg.kind, "device": str(device), "device_name": bench_cfg.machine or device_name(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "rows": rows, "markdown": table,
        "method": reduction_cfg.method, "flops_targets": list(bench_cfg.flops_targets),
    }
    if notes:
        result["notes"] = notes
    if bench_cfg.kind == "generate":
        result["decode_path"] = rows[0]["decode_path"] if rows else None
    print(table)
    return {"bench": result, "bench_summary": summarise(bench_cfg.kind, rows)}
