"""Run lm-eval tasks on a (patched) model and return plain, JSON-ready results.

The Hydra runner calls :func:`evaluate` and writes results.json / W&B itself. Tasks are passed to lm-eval by name;
the bundled ones read their local data files relative to their own folder (``tor_exp/evaluation/task_data.py``),
so they run offline from any cwd and from an installed package with nothing rewritten here.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from typing import Any, Iterator

from tor_exp.compat import lm_eval_harness as compat_lm_eval
from tor_exp.compat.tqdm import only_bars_starting_with
from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import EvalConfig, resolve_include_path, task_index

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- tasks
def task_manager(include_paths: list[str], task_names: list[str]):
    """A TaskManager over the include paths; lm-eval's built-in index (12-15 s) only when a name needs it."""
    paths = tuple(resolve_include_path(p) for p in include_paths)
    tm = task_index(paths, False)
    if all(name in tm.task_index for name in task_names):
        return tm
    tm = task_index(paths, True)
    missing = [name for name in task_names if name not in tm.task_index]
    if missing:
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {missing}")
    return tm


class ExpectedNotices(logging.Filter):
    """lm-eval's per-task notices that say nothing about a tor_exp run: ``eval.num_fewshot`` replacing a task's
    unset default, and the hint about ``--metadata`` printed for every task with a ``custom_dataset`` (the bundled
    tasks load their data files that way, see ``task_data.py``)."""

    NOTICES = ("Overwriting default num_fewshot", "Custom kwargs can be passed to `--metadata`")
    LOGGERS = ("lm_eval.evaluator", "lm_eval.api.task")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


@contextlib.contextmanager
def quiet_expected_notices() -> Iterator[None]:
    drop = ExpectedNotices()
    for name in drop.LOGGERS:
        logging.getLogger(name).addFilter(drop)
    try:
        yield
    finally:
        for name in drop.LOGGERS:
            logging.getLogger(name).removeFilter(drop)


#: lm-eval's environment report without its ``pip list`` subprocess and git probe (a patch of lm-eval's internals,
#: so it lives in tor_exp.compat)
light_env_info = compat_lm_eval.light_env_info


@contextlib.contextmanager
def quiet_progress(verbose: bool) -> Iterator[None]:
    """Only tor_exp's own scoring bar (one per request type) unless ``verbose``: lm-eval draws several bars per
    task (building contexts, tokenising, ...), about 30 lines for a run of 7 tasks."""
    if verbose:
        yield
        return
    from tor_exp.evaluation.lm import PROGRESS_PREFIX

    with compat_lm_eval.silent_bootstrap_notice(), only_bars_starting_with(PROGRESS_PREFIX):
        yield


# ----------------------------------------------------------------------------------------------- results
def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metrics(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """lm-eval's ``{"acc,none": x, "acc_stderr,none": s}`` → ``{"acc": x, "acc_stderr": s}`` per task."""
    out: dict[str, dict[str, Any]] = {}
    for task, values in results.items():
        row = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric}/{filt}"
            row[name] = _clean(float(value))
        out[task] = row
    return out


def _schedule_info(model) -> dict[str, Any]:
    """Target FLOPs reduction / keep ratio / locations of the model's patch (empty when unpatched)."""
    from tor_exp.models.patching import get_patch

    info = get_patch(model)
    if info is None:
        return {}
    sched = info.schedule
    return {"target": getattr(sched, "target_flops", None), "keep_ratio": getattr(sched, "keep_ratio", None),
            "locations": list(getattr(sched, "locations", []) or [])}


def evaluate(model, tokenizer, eval_cfg: EvalConfig, *, reduction_label: str,
             keep_samples: bool = False) -> dict[str, Any]:
    """Score ``model`` (patched or not) on ``eval_cfg.tasks`` with lm-eval; one pass, no baseline.

    Returns ``{"reduction", "metrics": {task: {metric: v, metric_stderr: s}}, "flops": {task: realised backbone
    FLOPs reduction}, "flops_detail": {task: {realised, target, ...}}, "alignment": {"mode", task: {offset_short,
    offset_empty, offset_misaligned}}, "num_requests": {task: n}, "n_samples": {task: docs},
    "aggregations": {task: {metric: lm-eval aggregation name}}, "config": {...}}``, plus ``"samples"`` (lm-eval's
    per-document records) with ``eval.log_samples`` or ``keep_samples``.
    The realised reduction comes from the real per-layer token counts (backbone FLOPs are linear in the token
    count); short prompts reduce less than the target, so both are reported. The caller (the Hydra runner)
    evaluates ``reduction=none`` separately when ``eval.compare_baseline`` is set.
    """
    import lm_eval

    from tor_exp.evaluation.lm import TorExpLM

    # lm-eval bootstraps stderrs in a multiprocessing.Pool; under submitit (launcher=local/slurm) the forked
    # workers inherit a handler that ignores SIGTERM, the Pool never closes and the job hangs. In-process instead.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    tm = task_manager(list(eval_cfg.include_paths), list(eval_cfg.tasks))
    sched = _schedule_info(model)
    lm = TorExpLM(model, tokenizer, alignment=eval_cfg.alignment, batch_size=eval_cfg.batch_size,
                  max_batch_size=eval_cfg.max_batch_size)
    with light_env_info(), quiet_expected_notices(), quiet_progress(eval_cfg.verbose):
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=list(eval_cfg.tasks), num_fewshot=eval_cfg.num_fewshot, limit=eval_cfg.limit,
            log_samples=eval_cfg.log_samples or keep_samples, task_manager=tm,
            bootstrap_iters=eval_cfg.bootstrap_iters,
            batch_size=eval_cfg.batch_size,
        )
    stats = lm.gathered_stats_dict()  # every rank's shard of the ledger, summed on rank 0 (data parallel)
    if raw is None:  # non-zero rank of a data-parallel run: rank 0 has every rank's results
        return {}
    tasks = list(raw["results"].keys())
    flops: dict[str, float] = {}
    detail: dict[str, dict[str, Any]] = {}
    alignment: dict[str, Any] = {"mode": lm.alignment}  # resolved (auto ⇒ offset for parity methods)
    for task in tasks:
        s = stats.get(task, {})
        flops[task] = float(s.get("realised_reduction", 0.0))
        detail[task] = {
            "realised": flops[task], "target": sched.get("target"), "keep_ratio": sched.get("keep_ratio"),
            "input_tokens": s.get("input_tokens", 0), "layer_tokens_full": s.get("layer_tokens_full", 0.0),
            "layer_tokens_real": s.get("layer_tokens_real", 0.0), "rolling_requests": s.get("rolling_requests", 0),
            "generate_requests": s.get("generate_requests", 0),
        }
        if s.get("rolling_requests"):
            detail[task]["note"] = ("loglikelihood_rolling scores every position: nothing is reducible, "
                                    "these requests ran unreduced (realised reduction 0)")
        alignment[task] = {k: s.get(k, 0) for k in ("offset_short", "offset_empty", "offset_misaligned")}
    out: dict[str, Any] = {
        "reduction": reduction_label,
        "metrics": _metrics(raw["results"]),
        "flops": flops,
        "flops_detail": detail,
        "alignment": alignment,
        "num_requests": {task: stats.get(task, {}).get("requests", 0) for task in tasks},
        "n_samples": {t: (v.get("effective", v.get("original")) if isinstance(v, dict) else v)
                      for t, v in raw.get("n-samples", {}).items()},
        "config": {"tasks": list(eval_cfg.tasks), "limit": eval_cfg.limit, "num_fewshot": eval_cfg.num_fewshot,
                   "batch_size": eval_cfg.batch_size, "alignment": lm.alignment,
                   # the sizes batch_size=auto found, per request type (empty with a fixed batch size)
                   "batch_sizes": dict(lm.batch_sizes)},
    }
    out["aggregations"] = {task: {m["metric"]: m["aggregation"] for m in (raw["configs"].get(task) or {})
                                  .get("metric_list", []) if isinstance(m.get("aggregation"), str)}
                           for task in tasks}
    if eval_cfg.log_samples or keep_samples:
        out["samples"] = raw.get("samples", {})
    return out
