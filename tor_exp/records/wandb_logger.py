"""W&B record of a run: started before the work, filled from results.json after it is written (offline by default:
no account, no network needed). The record notes the upload (``wandb: {run_id, mode, project, logged}``) so a rerun
with ``resume=true`` uploads a complete record whose upload failed, without recomputing it.

One run per job: ``job_type`` = the job's task (eval | bench | generate), the resolved config, every scalar as a
summary value (one number per run, compared across runs in the workspace, not one-point charts), a per-task
table (value, stderr and, with a ``none`` baseline, the difference to it with its paired interval), and
results.json (plus the per-request samples when ``eval.log_samples``) as an artifact. ``mode=disabled`` does not
touch W&B at all.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any, Optional

from tor_exp.errors import ConfigError
from tor_exp.records.config import LoggerConfig
from tor_exp.records.results import RESULTS_FILE

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["method", "task", "metric", "value", "stderr", "none", "difference", "low", "high"]
JOB_TYPES = ("eval", "bench", "generate")


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def flatten_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The run's scalars under the keys reports use: ``metrics/<task>/<metric>``, FLOPs, timings, bench summary,
    ``avg_acc``, and ``differences/<task>/<metric>/{delta,low,high}``."""
    flat: dict[str, float] = {}
    for task, metrics in (results.get("metrics") or {}).items():
        for name, value in metrics.items():
            if _number(value) is not None:
                flat[f"metrics/{task}/{name}"] = float(value)
    for key in ("target_flops", "keep_ratio", "realised_flops_reduction", "realised_total_flops_reduction",
                "layer_average_proxy"):
        if _number(results.get(key)) is not None:
            flat[key] = float(results[key])
    if _number(results.get("headline")) is not None:  # the paper's Avg., in % like the report's panel
        flat["avg_acc"] = 100.0 * float(results["headline"])
    for name, value in (results.get("timings") or {}).items():
        if _number(value) is not None:
            flat[f"timings/{name}"] = float(value)
    for name, value in (results.get("bench_summary") or {}).items():
        if _number(value) is not None:
            flat[f"bench/{name}"] = float(value)
    for task, metrics in (results.get("differences") or {}).items():
        for metric, diff in (metrics or {}).items():
            for part in ("delta", "low", "high"):
                if _number((diff or {}).get(part)) is not None:
                    flat[f"differences/{task}/{metric}/{part}"] = float(diff[part])
    return flat


def task_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Rows of the per-task table (:data:`TABLE_COLUMNS`): every metric of every task with its stderr, the
    ``none`` baseline's value, and the method − none difference with its paired interval (None where absent)."""
    method = results.get("method")
    baseline = (results.get("baseline") or {}).get("metrics") or {}
    differences = results.get("differences") or {}
    rows = []
    for task, metrics in (results.get("metrics") or {}).items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or _number(value) is None:
                continue
            diff = (differences.get(task) or {}).get(metric) or {}
            rows.append([method, task, metric, float(value), _number(metrics.get(f"{metric}_stderr")),
                         _number((baseline.get(task) or {}).get(metric)), _number(diff.get("delta")),
                         _number(diff.get("low")), _number(diff.get("high"))])
    return rows


def artifact_files(results: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Name in the artifact → file: results.json and every samples file results.json lists."""
    files = {RESULTS_FILE: run_dir / RESULTS_FILE}
    for per_task in (results.get("samples") or {}).values():
        for rel in (per_task or {}).values():
            files[str(rel)] = run_dir / rel
    return {name: path for name, path in files.items() if path.is_file()}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(" Consider increasing", 1)[0][:300]


def has_credentials() -> bool:
    """W&B knows an API key (WANDB_API_KEY, its settings file or .netrc): read locally, no network, no prompt."""
    import wandb

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return bool(wandb.login(prompt=False, verify=False))


def online_problem(cfg: LoggerConfig) -> Optional[str]:
    """Why an online W&B run cannot start, known without the network (no API key), else None."""
    if cfg.resolved().mode != "online" or has_credentials():
        return None
    return ("logger=wandb with mode=online: no W&B API key (set WANDB_API_KEY or run `wandb login`; or use "
            "logger.mode=offline, or logger.offline_fallback=true to log offline when online fails)")


def start_run(cfg: LoggerConfig, run_dir: Path, run_name: str, group: str | None, config: dict[str, Any],
              job_type: str | None, run_id: str | None = None) -> Any:
    """Start the job's W&B run before its work (None when disabled: then nothing is written), so an unusable
    online W&B (no API key, unreachable: ``logger.init_timeout`` seconds) is one ConfigError line before any
    work, not a traceback after it; with ``logger.offline_fallback`` it logs offline instead (a warning).
    ``run_id``: continue that run (a rerun uploading a record whose earlier upload failed)."""
    settings = cfg.resolved()
    if settings.mode == "disabled":
        return None
    import wandb

    def init(mode: str) -> Any:
        return wandb.init(project=settings.project, entity=settings.entity, group=cfg.group or group, name=run_name,
                          tags=list(cfg.tags), mode=mode, job_type=job_type if job_type in JOB_TYPES else None,
                          dir=str(run_dir), config=config, reinit="finish_previous", id=run_id,
                          resume="allow" if run_id else None,
                          settings=wandb.Settings(init_timeout=float(cfg.init_timeout), silent=True))

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    problem = online_problem(cfg)
    if problem is None:
        try:
            return init(settings.mode)
        except Exception as err:  # noqa: BLE001 - whatever W&B raises (CommError, UsageError, timeouts)
            problem = (f"logger=wandb with mode={settings.mode}: W&B could not start a run ({_one_line(err)}); "
                       "check the network / WANDB_BASE_URL, or use logger.mode=offline (or "
                       "logger.offline_fallback=true)")
    if not cfg.offline_fallback:
        raise ConfigError(problem)
    log.warning("%s: logging offline instead (logger.offline_fallback=true); `wandb sync` the run later",
                problem.split(" (")[0])
    try:
        return init("offline")
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"logger=wandb: W&B could not start an offline run either ({_one_line(err)})") from None


def run_entry(run: Any) -> dict[str, Any]:
    """What a record notes of its W&B run: ``{run_id, mode, project, logged}`` (``logged`` set once uploaded)."""
    return {"run_id": run.id, "mode": "offline" if run.offline else "online", "project": run.project,
            "logged": False}


def log_results(run: Any, results: dict[str, Any], run_dir: Path) -> str | None:
    """Log one finished run's record into its started W&B run and finish it; returns the local W&B run dir."""
    import wandb

    run_dir = Path(run_dir)
    job_type = results.get("task") if results.get("task") in JOB_TYPES else None
    try:
        run.summary.update(flatten_metrics(results))
        rows = task_rows(results)
        if rows:
            run.log({"results": wandb.Table(columns=TABLE_COLUMNS, data=rows)})
        plot = (results.get("bench") or {}).get("plot")
        if plot and Path(plot).is_file():  # the benchmark's PNG beside its numbers
            run.log({"bench/plot": wandb.Image(str(plot))})
        files = artifact_files(results, run_dir)
        if files:
            artifact = wandb.Artifact(f"results-{re.sub(r'[^A-Za-z0-9_.-]', '-', run.id)}", type="results",
                                      metadata={"method": results.get("method"), "model": results.get("model"),
                                                "job_type": job_type})
            for name, path in files.items():
                artifact.add_file(str(path), name=name)
            run.log_artifact(artifact)
        return getattr(run, "dir", None)
    finally:
        run.finish()


def abandon(run: Any) -> None:
    """End a started run whose job failed before its record (marked failed; never raises)."""
    if run is not None:
        with contextlib.suppress(Exception):
            run.finish(exit_code=1)


def log_to_wandb(cfg: LoggerConfig, results: dict[str, Any], run_dir: Path, run_name: str,
                 group: str | None) -> str | None:
    """Log one finished run from its record (start + log); returns the local W&B run dir (None when disabled:
    then nothing is written)."""
    run = start_run(cfg, Path(run_dir), run_name, group, results.get("config", {}), results.get("task"))
    return None if run is None else log_results(run, results, Path(run_dir))
