"""W&B logging of a finished run's results (offline by default: no account, no network needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tor_exp.logging.config import LoggerConfig


def flatten_metrics(results: dict[str, Any]) -> dict[str, float]:
    """`metrics/<task>/<metric>` scalars plus FLOPs and timings, the panel keys reports use."""
    flat: dict[str, float] = {}
    for task, metrics in (results.get("metrics") or {}).items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"metrics/{task}/{name}"] = float(value)
    for key in ("target_flops", "keep_ratio", "realised_flops_reduction", "realised_total_flops_reduction",
                "layer_average_proxy"):
        value = results.get(key)
        if isinstance(value, (int, float)):
            flat[key] = float(value)
    if isinstance(results.get("headline"), (int, float)):  # the paper's Avg., in % like the report's panel
        flat["avg_acc"] = 100.0 * float(results["headline"])
    for name, value in (results.get("timings") or {}).items():
        if isinstance(value, (int, float)):
            flat[f"timings/{name}"] = float(value)
    for name, value in (results.get("bench_summary") or {}).items():
        if isinstance(value, (int, float)):
            flat[f"bench/{name}"] = float(value)
    return flat


def log_to_wandb(cfg: LoggerConfig, results: dict[str, Any], run_dir: Path, run_name: str, group: str | None) -> str | None:
    """Log one run; returns the local W&B run dir (or None when disabled)."""
    import wandb

    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group or group,
        name=run_name,
        tags=list(cfg.tags),
        mode=cfg.mode,
        dir=str(run_dir),
        config=results.get("config", {}),
        reinit="finish_previous",
    )
    try:
        flat = flatten_metrics(results)
        run.summary.update(flat)
        run.log(flat)
        plot = (results.get("bench") or {}).get("plot")
        if plot and Path(plot).is_file():  # the benchmark's PNG beside its numbers
            run.log({"bench/plot": wandb.Image(str(plot))})
        return getattr(run, "dir", None)
    finally:
        run.finish()
