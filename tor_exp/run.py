"""One job: validate → hold its output folder → load the model → its task (eval | bench | generate) →
results.json (+ W&B).

:func:`run` returns the job's results dict, like lightning-hydra-template's ``train(cfg)``; each task is one
function in :data:`TASKS` that receives the loaded :class:`Job` and returns its part of the results. Every file a
job writes goes through its :class:`~tor_exp.records.folder.RunFolder` (``job.folder``): locked, atomic, with a
fallback when the folder refuses a write.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tor_exp import distributed
from tor_exp.config import ValidatedConfig, validate
from tor_exp.errors import ConfigError
from tor_exp.records.folder import RunFolder, refusal
from tor_exp.records.keys import job_dirname
from tor_exp.records.results import SAMPLES_DIR, load_results, run_metadata, same_run, wandb_missing

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
    #: where the job's files go (the held output folder)
    folder: Optional[RunFolder] = None


def resolve_device(name: str) -> torch.device:
    """The job's device; in a data-parallel run ``cuda`` is this rank's GPU (``LOCAL_RANK``)."""
    if name == "auto":
        return torch.device(distributed.local_device("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available (use device=cpu or device=auto)")
    return torch.device(distributed.local_device(name))


def check_data_parallel(v: ValidatedConfig) -> None:
    """A data-parallel run (several processes) shards lm-eval's requests: only ``task=eval`` has any to shard."""
    if distributed.world_size() > 1 and v.root.task != "eval":
        raise ConfigError(f"task={v.root.task}: a data-parallel run ({distributed.world_size()} processes) "
                          f"evaluates only (task=eval); run task={v.root.task} in one process")
    limit = v.eval.limit
    if distributed.world_size() > 1 and limit is not None and 1 <= float(limit) < distributed.world_size():
        # lm-eval shards documents by rank: a rank without any would skip collectives the others wait in
        raise ConfigError(f"eval.limit={limit}: fewer documents than the {distributed.world_size()} processes of "
                          "this data-parallel run; use fewer processes or a larger limit")


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

        hc = HydraConfig.get()
        return job_dirname(list(hc.overrides.task), list(hc.job.config.override_dirname.exclude_keys))
    except (ValueError, AttributeError):
        return ""


def run_label(v: ValidatedConfig) -> str:
    """``run_name``, else model-method-amount plus the overrides its folder name shows (an experiment's axes are
    shown by its folder prefix, not here; the W&B run also carries its whole config)."""
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


def first_look(out_dir: Path, resolved: dict[str, Any], v: ValidatedConfig) -> dict[str, Any] | None:
    """Before the folder is touched: the complete record of this config to reuse (``resume``), or a one-line
    refusal when it holds a complete result of another config (without ``overwrite``). Reads only, so a refused or
    skipped job leaves the folder byte-identical; the launchers' pre-submission filter uses the same rule."""
    why = refusal(out_dir, resolved, overwrite=v.root.overwrite)
    if why is not None:
        raise ConfigError(why)
    previous = load_results(out_dir) if v.root.resume else None
    return previous if same_run(previous, resolved) else None


def write_hydra_record(folder: RunFolder, cfg: DictConfig) -> None:
    """What Hydra would write into ``.hydra/`` (it is told not to: conf/hydra/default.yaml), written once the job
    holds its folder, so a refused job never rewrites another run's ``.hydra/``."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg is None:  # outside a Hydra app (tests, notebooks)
        return
    folder.write(".hydra/config.yaml", OmegaConf.to_yaml(cfg))
    folder.write(".hydra/hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    folder.write(".hydra/overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


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
    paired = compare and v.eval.bootstrap_iters > 0
    rows: list[tuple[str, dict[str, Any]]] = []
    results: dict[str, Any] = {}
    if compare:
        t0 = time.perf_counter()
        baseline = evaluate(job.model, job.tokenizer, v.eval, reduction_label="none", keep_samples=paired)
        job.timings["eval_none_s"] = time.perf_counter() - t0
        rows.append(("none", baseline))
    t0 = time.perf_counter()
    with reducing(job.model, method, schedule, tokenizer=job.tokenizer,
                  calibration_source=v.model.calibration_text, record=job.timings):
        out = evaluate(job.model, job.tokenizer, v.eval, reduction_label=v.reduction.method, keep_samples=paired)
    job.timings[f"eval_{v.reduction.method}_s"] = time.perf_counter() - t0
    if not distributed.is_main():  # data parallel: rank 0 holds every rank's results and reports them
        return {}
    if compare:
        results["baseline"] = {"method": "none", "metrics": rows[0][1]["metrics"]}
    rows.append((v.reduction.method, out))
    realised = [r for r in (out.get("flops") or {}).values() if isinstance(r, (int, float))]
    results.update({
        "metrics": out["metrics"],
        "flops_per_task": out.get("flops", {}),
        # the ledger behind the realised reduction (summed over the ranks of a data-parallel run)
        "tokens_per_task": {task: {k: d.get(k) for k in ("input_tokens", "layer_tokens_full", "layer_tokens_real")}
                            for task, d in (out.get("flops_detail") or {}).items()},
        "alignment": out.get("alignment", {}),
        "num_requests": out.get("num_requests"),
        "aggregations": out.get("aggregations", {}),
        "realised_flops_reduction": sum(realised) / len(realised) if realised else 0.0,
        "headline": mean_accuracy(out["metrics"]),
    })
    if paired:
        results["differences"] = task_differences(rows[0][1], out, iters=v.eval.bootstrap_iters)
    if v.eval.log_samples:
        results["samples"] = {name: write_samples(job.folder, name, evaluated) for name, evaluated in rows}
    print_comparison(rows, {"model": v.model.name, "target_flops": _target(v), "keep_ratio": schedule.keep_ratio,
                            "locations": list(schedule.locations), "differences": results.get("differences")})
    return results


def write_samples(folder: RunFolder, method: str, evaluated: dict[str, Any]) -> dict[str, str]:
    """lm-eval's per-request records (its ``samples`` format, one JSON object per line) of one evaluation pass,
    as ``samples/<method>/<task>.jsonl``; returns task → path relative to the folder (where results.json is, also
    when both went to the fallback folder)."""
    import json

    from lm_eval.utils import handle_non_serializable

    written = {}
    for task, samples in (evaluated.get("samples") or {}).items():
        name = f"{SAMPLES_DIR}/{method}/{task}.jsonl"
        folder.write(name, "".join(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n"
                                   for s in samples))
        written[task] = name
    return written


def bench_task(job: Job) -> dict[str, Any]:
    """Speed / memory presets: ``none`` and the method at each of the preset's FLOPs targets; the table
    (``bench_<kind>.md``) and plot (``bench_<kind>.png``) go through the job's folder."""
    from tor_exp.bench import run_benchmark
    from tor_exp.bench.report import plot_png

    t0 = time.perf_counter()
    v = job.config
    out = run_benchmark(job.model, job.tokenizer, v.model, v.reduction, v.bench, device=job.device)
    job.timings["bench_s"] = time.perf_counter() - t0
    bench = out["bench"]
    job.folder.write(f"bench_{bench['kind']}.md", bench["markdown"] + "\n")
    png = plot_png(bench["kind"], bench["rows"]) if v.bench.plot else None
    if png is not None:
        bench["plot"] = str(job.folder.write(f"bench_{bench['kind']}.png", png))
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

    With ``resume`` a complete record of the same config in ``out_dir`` is returned instead of recomputed. The job
    holds ``out_dir`` (:class:`RunFolder`) from its check that the folder is free to its record's final rename.
    """
    v = validate(cfg)
    check_data_parallel(v)
    out_dir = Path(out_dir) if out_dir is not None else output_dir()
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if isinstance(resolved.get("model"), dict) and resolved["model"].get("path") is not None:
        resolved["model"]["path"] = v.model.path  # a relative path as validation resolved it (the launch dir)
    if v.root.task == "eval":
        from tor_exp.paths import usable_datasets_cache

        usable_datasets_cache()  # lm-eval's tasks write a datasets cache: a usable one before the model loads
    if distributed.world_size() > 1:
        return _run_data_parallel(v, out_dir, resolved, cfg)
    previous = first_look(out_dir, resolved, v)
    if previous is None or wandb_missing(previous, resolved):
        with RunFolder(out_dir, resolved) as folder:
            previous = folder.make_room(resolved, resume=v.root.resume, overwrite=v.root.overwrite)
            if previous is None:
                folder.start_log()
                write_hydra_record(folder, cfg)
                return _logged_run(folder, v, resolved)
            if wandb_missing(previous, resolved):  # complete, but its W&B upload never completed
                folder.start_log()
                log.info("results for this config already in %s: not recomputed (resume=true); logging them to "
                         "W&B", out_dir / "results.json")
                return _to_wandb(folder, v, resolved, previous, None)
    log.info("results for this config already in %s: skipped (resume=true)", out_dir / "results.json")
    return previous


def _run_data_parallel(v: ValidatedConfig, out_dir: Path, resolved: dict[str, Any],
                       cfg: DictConfig) -> dict[str, Any]:
    """One rank of a data-parallel job: rank 0 alone looks at, claims and writes the folder (its decision, skip
    or refuse, is every rank's); every rank loads its replica and scores its shard of the requests."""
    decision: tuple[str, Any] = ("run", None)
    if distributed.is_main():
        try:
            previous = first_look(out_dir, resolved, v)
            decision = ("run", None) if previous is None else ("skip", previous)
        except ConfigError as err:
            decision = ("refuse", str(err))
    kind, value = distributed.broadcast_object(decision)
    if kind == "refuse":
        raise ConfigError(value)
    if kind == "skip":
        log.info("results for this config already in %s: skipped (resume=true)", out_dir / "results.json")
        return value
    if not distributed.is_main():
        logging.getLogger("tor_exp").setLevel(logging.WARNING)  # rank 0 tells the story once
        return _run_in(None, v, resolved)
    with RunFolder(out_dir, resolved) as folder:
        # the other ranks are already scoring: a record that appeared since first_look is recomputed, not reused
        folder.make_room(resolved, resume=False, overwrite=v.root.overwrite)
        folder.start_log()
        write_hydra_record(folder, cfg)
        log.info("data parallel: %d processes, this is rank 0 (writes the results)", distributed.world_size())
        return _logged_run(folder, v, resolved)


def _logged_run(folder: RunFolder, v: ValidatedConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """W&B started before the work (an unusable W&B fails before anything is computed), the job, then W&B."""
    wandb_run = _start_wandb(v, folder.path, run_label(v), resolved, None)
    try:
        results = _run_in(folder, v, resolved, wandb_run)
    except BaseException:
        from tor_exp.records.wandb_logger import abandon

        abandon(wandb_run)
        raise
    return _to_wandb(folder, v, resolved, results, wandb_run)


def _run_in(folder: Optional[RunFolder], v: ValidatedConfig, resolved: dict[str, Any],
            wandb_run: Any = None) -> dict[str, Any]:
    """The job proper, in the folder it holds: load, run the task, write the record (its W&B upload, when
    ``wandb_run`` is started, noted as not done yet). ``folder`` None: a non-zero rank of a data-parallel job (it
    scores its shard and writes nothing)."""
    if folder is None:
        out_dir, chash = output_dir(), ""
    else:
        out_dir, chash = folder.path, folder.config_hash
    from tor_exp.models import load_model, model_shape, partial_weights
    from tor_exp.models.kernels import kernels_used
    from tor_exp.records.checkpoint import checkpoint_record

    label = run_label(v)
    log.info("job %s: task=%s model=%s reduction=%s -> %s", label, v.root.task, v.model.name, v.reduction.method,
             out_dir)
    torch.manual_seed(v.root.seed)
    device = resolve_device(v.root.device)
    t0 = time.perf_counter()
    model, tokenizer = load_model(v.model, device=device)
    load_s = time.perf_counter() - t0
    checkpoint = checkpoint_record(resolved["model"])  # the weights just loaded, part of the record's identity
    method, schedule = v.reduction_for(model_shape(model))  # validation's schedule when it holds for this model
    job = Job(v, model, tokenizer, device, out_dir, method, schedule, {"load_s": load_s})
    job.folder = folder
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
        "checkpoint": checkpoint,
        "headline": None,
    }
    if schedule.keep_ratios:  # a chunk-aligned schedule: one ratio per location
        results["keep_ratios"] = list(schedule.keep_ratios)
    if partial_weights(model) is not None:
        results["partial_weights"] = partial_weights(model)
    part = TASKS[v.root.task](job)
    if folder is None:
        return part
    results.update(part)
    results["timings"] = job.timings
    results.update(run_metadata())
    results["kernels"] = kernels_used(model, device)  # what each part of the forward really ran
    results["config"] = resolved
    results["status"] = "complete"  # resume trusts only complete records
    if "realised_flops_reduction" in results:
        log.info("realised backbone FLOPs reduction %.4f (target %s) per task: %s",
                 results["realised_flops_reduction"], results["target_flops"],
                 {t: round(f, 4) for t, f in (results.get("flops_per_task") or {}).items()})
    if wandb_run is not None:  # the record says it is not uploaded until its upload completes
        from tor_exp.records.wandb_logger import run_entry

        results["wandb"] = run_entry(wandb_run)
    path = folder.write_record(results)
    folder.check_saved()
    log.info("results: %s", path)
    return results


def _start_wandb(v: ValidatedConfig, out_dir: Path, label: str, resolved: dict[str, Any],
                 run_id: Optional[str]) -> Any:
    """The job's W&B run, started (None without W&B or when disabled)."""
    if v.logger.backend != "wandb":
        return None
    from tor_exp.records.wandb_logger import start_run

    return start_run(v.logger, out_dir, label, sweep_group(), resolved, v.root.task, run_id=run_id)


def _to_wandb(folder: RunFolder, v: ValidatedConfig, resolved: dict[str, Any], results: dict[str, Any],
              wandb_run: Any) -> dict[str, Any]:
    """Log a complete record to W&B (starting the run when it is a rerun's upload) and note in results.json that
    its upload completed; a failed upload is one line and leaves the record saying it is not uploaded, so the
    next ``resume=true`` run uploads it without recomputing."""
    from tor_exp.records.results import RESULTS_FILE, to_json
    from tor_exp.records.wandb_logger import abandon, log_results, run_entry

    if not wandb_missing(results, resolved):
        return results
    if wandb_run is None:
        earlier = (results.get("wandb") or {}).get("run_id")
        wandb_run = _start_wandb(v, folder.path, results.get("run_name") or run_label(v), results["config"], earlier)
        if wandb_run is None:  # disabled
            return results
    entry = run_entry(wandb_run)
    try:
        log_results(wandb_run, results, folder.path)
    except Exception as err:  # noqa: BLE001 - W&B's errors (network, server) end the job in one line
        abandon(wandb_run)
        folder.write(RESULTS_FILE, to_json(dict(results, wandb=entry)))
        raise ConfigError(f"W&B upload of {folder.path / RESULTS_FILE} failed ({' '.join(str(err).split())[:200]}); "
                          "the record is complete: rerun with resume=true to upload it without recomputing") from None
    results["wandb"] = dict(entry, logged=True)
    folder.write(RESULTS_FILE, to_json(results))
    log.info("W&B: run %s logged (%s)", entry["run_id"], entry["mode"])
    return results
