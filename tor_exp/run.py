"""One job: validate → load the model → its task (eval | bench | generate) → results.json (+ W&B).

:func:`run` returns the job's results dict, like lightning-hydra-template's ``train(cfg)``; each task is one
function in :data:`TASKS` that receives the loaded :class:`Job` and returns its part of the results.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tor_exp.config import ValidatedConfig, validate
from tor_exp.errors import ConfigError
from tor_exp.logging.results import config_hash, load_results, run_metadata, write_results

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What every task gets: the validated config and the loaded model, on its device."""

    config: ValidatedConfig
    model: nn.Module
    tokenizer: Any
    device: torch.device
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def reduction(self) -> tuple[Any, Any]:
        """(method or None, schedule) of the configured reduction on this model."""
        from tor_exp.models import ModelShape
        from tor_exp.models.calibration import build_reduction

        return build_reduction(self.config.reduction, self.config.model,
                               shape=ModelShape.from_hf_config(self.model.config))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available (use device=cpu or device=auto)")
    return torch.device(name)


def output_dir() -> Path:
    """The Hydra job's output dir; the working directory outside a Hydra job (tests, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def run_label(v: ValidatedConfig) -> str:
    if v.root.run_name:
        return v.root.run_name
    red = v.reduction
    amount = f"rho{red.keep_ratio:g}" if red.keep_ratio is not None else f"f{(red.target_flops or 0):g}"
    return f"{v.model.name}-{red.method}" + ("" if red.method == "none" else f"-{amount}")


def sweep_group() -> str | None:
    """All jobs of one multirun share a W&B group: the sweep dir's name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            return Path(hc.sweep.dir).name
    except ValueError:
        pass
    return None


# ------------------------------------------------------------------------------------------------ tasks
def evaluate_task(job: Job) -> dict[str, Any]:
    """lm-eval tasks with the reduction (and, with ``eval.compare_baseline``, without it first)."""
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models.calibration import reducing
    from tor_exp.reporting.console import mean_accuracy, print_comparison

    v = job.config
    method, schedule = job.reduction()
    rows: list[tuple[str, dict[str, Any]]] = []
    results: dict[str, Any] = {}
    if v.eval.compare_baseline and method is not None:
        t0 = time.perf_counter()
        baseline = evaluate(job.model, job.tokenizer, v.eval, reduction_label="none")
        job.timings["eval_none_s"] = time.perf_counter() - t0
        results["baseline"] = {"method": "none", "metrics": baseline["metrics"]}
        rows.append(("none", baseline))
    t0 = time.perf_counter()
    with reducing(job.model, method, schedule, tokenizer=job.tokenizer,
                  calibration_source=v.model.calibration_text, record=job.timings):
        out = evaluate(job.model, job.tokenizer, v.eval, reduction_label=v.reduction.method)
    job.timings[f"eval_{v.reduction.method}_s"] = time.perf_counter() - t0
    rows.append((v.reduction.method, out))
    realised = [r for r in (out.get("flops") or {}).values() if isinstance(r, (int, float))]
    results.update({
        "metrics": out["metrics"],
        "flops_per_task": out.get("flops", {}),
        "alignment": out.get("alignment", {}),
        "num_requests": out.get("num_requests"),
        "realised_flops_reduction": sum(realised) / len(realised) if realised else 0.0,
        "headline": mean_accuracy(out["metrics"]),
    })
    print_comparison(rows, {"model": v.model.name, "target_flops": _target(v), "keep_ratio": schedule.keep_ratio,
                            "locations": list(schedule.locations)})
    return results


def bench_task(job: Job) -> dict[str, Any]:
    """Speed / memory presets: ``none`` and the method at each of the preset's FLOPs targets."""
    from tor_exp.bench import run_benchmark

    t0 = time.perf_counter()
    v = job.config
    out = run_benchmark(job.model, job.tokenizer, v.model, v.reduction, v.bench, out_dir=job.out_dir,
                        device=job.device)
    job.timings["bench_s"] = time.perf_counter() - t0
    return out


def generate_task(job: Job) -> dict[str, Any]:
    """A greedy continuation of ``prompt`` with a reduced prefill (decode unreduced)."""
    from tor_exp.models.calibration import reducing
    from tor_exp.models.generation import generate_text

    v = job.config
    method, schedule = job.reduction()
    t0 = time.perf_counter()
    with reducing(job.model, method, schedule, tokenizer=job.tokenizer,
                  calibration_source=v.model.calibration_text, record=job.timings):
        text = generate_text(job.model, job.tokenizer, v.root.prompt, max_new_tokens=v.root.max_new_tokens)
    job.timings["generate_s"] = time.perf_counter() - t0
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"{v.root.prompt}{bold}{text}{plain}")
    return {"prompt": v.root.prompt, "continuation": text}


TASKS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "eval": evaluate_task, "bench": bench_task, "generate": generate_task,
}


def _target(v: ValidatedConfig) -> float | None:
    return v.reduction.target_flops if v.reduction.keep_ratio is None else None


# ------------------------------------------------------------------------------------------------ the job
def run(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the job ``cfg`` describes and return its results (also written to ``<out_dir>/results.json``).

    With ``resume`` a complete record of the same config in ``out_dir`` is returned instead of recomputed.
    """
    v = validate(cfg)
    out_dir = Path(out_dir) if out_dir is not None else output_dir()
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    chash = config_hash(resolved)
    if v.root.resume:
        previous = load_results(out_dir)
        if previous and previous.get("status") == "complete" and previous.get("config_hash") == chash:
            print(f"[tor_exp] results for this config already in {out_dir / 'results.json'}: skipped (resume=true)")
            return previous

    from tor_exp.models import ModelShape, build_schedule, load_model

    torch.manual_seed(v.root.seed)
    device = resolve_device(v.root.device)
    if v.root.dtype is not None:
        v.model.dtype = v.root.dtype
    t0 = time.perf_counter()
    model, tokenizer = load_model(v.model, device=device)
    job = Job(v, model, tokenizer, device, out_dir, {"load_s": time.perf_counter() - t0})
    schedule = build_schedule(v.reduction, v.model, shape=ModelShape.from_hf_config(model.config))

    results: dict[str, Any] = {
        "config_hash": chash,
        "task": v.root.task,
        "run_name": run_label(v),
        "model": v.model.name,
        "method": v.reduction.method,
        "target_flops": _target(v),
        "keep_ratio": schedule.keep_ratio,
        "locations": list(schedule.locations),
        "device": str(device),
        "dtype": v.model.dtype,
        "headline": None,
    }
    results.update(TASKS[v.root.task](job))
    results["timings"] = job.timings
    results.update(run_metadata())
    results["config"] = resolved
    results["status"] = "complete"  # resume trusts only complete records
    path = write_results(out_dir, results)
    print(f"[tor_exp] results: {path}")
    if v.logger.backend == "wandb":
        from tor_exp.logging.wandb_logger import log_to_wandb

        log_to_wandb(v.logger, results, out_dir, results["run_name"], sweep_group())
    return results
