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
from tor_exp.logging.results import config_hash, is_complete, read_results, run_metadata, set_aside, write_results

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What every task gets: the validated config, the loaded model on its device and the configured reduction
    (``method`` None for ``none``; ``schedule``: locations and keep ratio on this model)."""

    config: ValidatedConfig
    model: nn.Module
    tokenizer: Any
    device: torch.device
    out_dir: Path
    method: Any
    schedule: Any
    timings: dict[str, float] = field(default_factory=dict)


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


def job_overrides() -> str:
    """The Hydra job's own overrides as its folder name shows them ("" outside Hydra or without overrides)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        from tor_exp.config import job_dirname

        hc = HydraConfig.get()
        return job_dirname(list(hc.overrides.task), list(hc.job.config.override_dirname.exclude_keys))
    except (ValueError, AttributeError):
        return ""


def run_label(v: ValidatedConfig) -> str:
    """``run_name``, else model-method-amount plus every other overridden key: jobs of one sweep never share
    a name (W&B), whatever its axes."""
    if v.root.run_name:
        return v.root.run_name
    red = v.reduction
    amount = f"rho{red.keep_ratio:g}" if red.keep_ratio is not None else f"f{(red.target_flops or 0):g}"
    label = f"{v.model.name}-{red.method}" + ("" if red.method == "none" else f"-{amount}")
    extra = job_overrides()
    return f"{label}[{extra}]" if extra else label


def sweep_group() -> str | None:
    """All jobs of one multirun share a W&B group: the sweep dir (without a leading ``multirun/``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            parts = Path(hc.sweep.dir).parts
            return "/".join(parts[1:] if len(parts) > 1 and parts[0] == "multirun" else parts)
    except ValueError:
        pass
    return None


def ensure_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it takes a file, before hours of work go into it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".tor_exp_write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output dir {out_dir}: not writable ({err.strerror or err}); "
                          "choose another hydra.run.dir / hydra.sweep.dir") from None


def previous_record(out_dir: Path, resolved: dict[str, Any], v: ValidatedConfig) -> dict[str, Any] | None:
    """Resume, or make room for this job's record without ever losing another one.

    Returns the record to reuse (``resume`` and a complete record of this config), else None after setting aside
    what would be replaced: an unreadable results.json (``.corrupt-<time>``), a record of this config that is
    recomputed (``.previous-<time>``) or, with ``overwrite=true``, a complete record of another config
    (``.replaced-<time>``; without ``overwrite`` that is a one-line error).
    """
    record, problem = read_results(out_dir)
    if problem is not None:
        moved = set_aside(out_dir, "corrupt")
        log.warning("results.json in %s is %s: moved to %s; recomputing", out_dir, problem, moved.name)
        return None
    if record is None:
        return None
    if v.root.resume and is_complete(out_dir, resolved):  # the launchers' pre-submission filter uses the same rule
        return record
    same, complete = record.get("config_hash") == config_hash(resolved), record.get("status") == "complete"
    if complete and not same:
        if not v.root.overwrite:
            raise ConfigError(f"{out_dir / 'results.json'} holds a complete result of another config "
                              f"({record.get('run_name', '?')}); use another output dir, or overwrite=true to replace "
                              "it (the old record is kept as results.json.replaced-<time>)")
        log.warning("replacing %s (overwrite=true): kept as %s", out_dir / "results.json",
                    set_aside(out_dir, "replaced").name)
    elif complete:
        log.info("recomputing (resume=false); the previous record is kept as %s", set_aside(out_dir, "previous").name)
    return None


def save(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json; if the output dir refuses it (full, removed, read-only) the numbers still land in a
    fallback file and the job fails with a one-line error naming both."""
    try:
        return write_results(out_dir, results)
    except OSError as err:
        import tempfile

        fallback = Path(tempfile.gettempdir()) / "tor_exp-unsaved" / f"{results['config_hash']}"
        path = write_results(fallback, results)
        raise ConfigError(f"could not write {out_dir / 'results.json'} ({err.strerror or err}); the results were "
                          f"saved to {path} instead") from None


# ------------------------------------------------------------------------------------------------ tasks
def evaluate_task(job: Job) -> dict[str, Any]:
    """lm-eval tasks with the reduction (and, with ``eval.compare_baseline``, without it first, then each
    difference to ``none`` with its paired bootstrap interval)."""
    from tor_exp.evaluation.runner import evaluate
    from tor_exp.models.schedule import reducing
    from tor_exp.reporting.console import mean_accuracy, print_comparison
    from tor_exp.reporting.intervals import task_differences

    v, method, schedule = job.config, job.method, job.schedule
    compare = v.eval.compare_baseline and method is not None
    paired = compare and v.eval.interval_iters > 0
    rows: list[tuple[str, dict[str, Any]]] = []
    results: dict[str, Any] = {}
    if compare:
        t0 = time.perf_counter()
        baseline = evaluate(job.model, job.tokenizer, v.eval, reduction_label="none", keep_samples=paired)
        job.timings["eval_none_s"] = time.perf_counter() - t0
        results["baseline"] = {"method": "none", "metrics": baseline["metrics"]}
        rows.append(("none", baseline))
    t0 = time.perf_counter()
    with reducing(job.model, method, schedule, tokenizer=job.tokenizer,
                  calibration_source=v.model.calibration_text, record=job.timings):
        out = evaluate(job.model, job.tokenizer, v.eval, reduction_label=v.reduction.method, keep_samples=paired)
    job.timings[f"eval_{v.reduction.method}_s"] = time.perf_counter() - t0
    rows.append((v.reduction.method, out))
    realised = [r for r in (out.get("flops") or {}).values() if isinstance(r, (int, float))]
    results.update({
        "metrics": out["metrics"],
        "flops_per_task": out.get("flops", {}),
        "alignment": out.get("alignment", {}),
        "num_requests": out.get("num_requests"),
        "aggregations": out.get("aggregations", {}),
        "realised_flops_reduction": sum(realised) / len(realised) if realised else 0.0,
        "headline": mean_accuracy(out["metrics"]),
    })
    if paired:
        results["differences"] = task_differences(rows[0][1], out, iters=v.eval.interval_iters, seed=v.root.seed)
    if v.eval.log_samples:
        results["samples"] = {name: write_samples(job.out_dir, name, evaluated) for name, evaluated in rows}
    print_comparison(rows, {"model": v.model.name, "target_flops": _target(v), "keep_ratio": schedule.keep_ratio,
                            "locations": list(schedule.locations), "differences": results.get("differences")})
    return results


def write_samples(out_dir: Path, method: str, evaluated: dict[str, Any]) -> dict[str, str]:
    """lm-eval's per-request records (its ``samples`` format, one JSON object per line) of one evaluation pass,
    as ``samples/<method>/<task>.jsonl``; returns task → path relative to ``out_dir``."""
    import json

    from lm_eval.utils import handle_non_serializable

    written = {}
    folder = out_dir / "samples" / method
    folder.mkdir(parents=True, exist_ok=True)
    for task, samples in (evaluated.get("samples") or {}).items():
        path = folder / f"{task}.jsonl"
        path.write_text("".join(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n"
                                for s in samples))
        written[task] = str(path.relative_to(out_dir))
    return written


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
    from tor_exp.models.schedule import reducing
    from tor_exp.models.generation import generate_text

    v, method, schedule = job.config, job.method, job.schedule
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
    ensure_writable(out_dir)
    previous = previous_record(out_dir, resolved, v)
    if previous is not None:
        log.info("results for this config already in %s: skipped (resume=true)", out_dir / "results.json")
        return previous

    from tor_exp.models import load_model, model_shape
    from tor_exp.models.schedule import build_reduction

    label = run_label(v)
    log.info("job %s: task=%s model=%s reduction=%s -> %s", label, v.root.task, v.model.name, v.reduction.method,
             out_dir)
    torch.manual_seed(v.root.seed)
    device = resolve_device(v.root.device)
    if v.root.dtype is not None:
        v.model.dtype = v.root.dtype
    t0 = time.perf_counter()
    model, tokenizer = load_model(v.model, device=device)
    load_s = time.perf_counter() - t0
    method, schedule = build_reduction(v.reduction, v.model, shape=model_shape(model))
    job = Job(v, model, tokenizer, device, out_dir, method, schedule, {"load_s": load_s})
    log.info("model %s on %s (%s), loaded in %.1f s; keep ratio %.4f at locations %s", v.model.name, device,
             v.model.dtype, job.timings["load_s"], schedule.keep_ratio, list(schedule.locations))

    results: dict[str, Any] = {
        "config_hash": chash,
        "task": v.root.task,
        "run_name": label,
        "model": v.model.name,
        "method": v.reduction.method,
        "target_flops": _target(v),
        "keep_ratio": schedule.keep_ratio,
        "locations": list(schedule.locations),
        "device": str(device),
        "dtype": v.model.dtype,
        "headline": None,
    }
    from tor_exp.models import partial_weights

    if partial_weights(model) is not None:
        results["partial_weights"] = partial_weights(model)
    results.update(TASKS[v.root.task](job))
    results["timings"] = job.timings
    results.update(run_metadata())
    results["config"] = resolved
    results["status"] = "complete"  # resume trusts only complete records
    if "realised_flops_reduction" in results:
        log.info("realised backbone FLOPs reduction %.4f (target %s) per task: %s",
                 results["realised_flops_reduction"], results["target_flops"],
                 {t: round(f, 4) for t, f in (results.get("flops_per_task") or {}).items()})
    path = save(out_dir, results)
    log.info("results: %s", path)
    if v.logger.backend == "wandb":
        from tor_exp.logging.wandb_logger import log_to_wandb

        log_to_wandb(v.logger, results, out_dir, results["run_name"], sweep_group())
    return results
