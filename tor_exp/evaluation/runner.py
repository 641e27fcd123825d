"""Run lm-eval tasks on a (patched) model and return plain, JSON-ready results.

The Hydra runner calls :func:`evaluate` and writes results.json / W&B itself. Fixture tasks run fully offline:
their YAMLs are loaded here and their relative ``data_files`` rewritten to absolute paths (lm-eval resolves them
against the working directory otherwise), so evaluation works from any cwd and from an installed package.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

from tor_exp.errors import ConfigError
from tor_exp.evaluation.config import EvalConfig, resolve_include_path

log = logging.getLogger(__name__)

_OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------- tasks
def task_manager(include_paths: list[str], task_names: list[str]):
    """A TaskManager over the include paths; lm-eval's built-in index (12-15 s) only when a name needs it."""
    from lm_eval.tasks import TaskManager

    paths = [resolve_include_path(p) for p in include_paths]
    tm = TaskManager(include_path=paths or None, include_defaults=False)
    if all(name in tm.task_index for name in task_names):
        return tm
    tm = TaskManager(include_path=paths or None, include_defaults=True)
    missing = [name for name in task_names if name not in tm.task_index]
    if missing:
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {missing}")
    return tm


def _absolute_data_files(data_files: Any, base: Path) -> tuple[Any, bool]:
    """Make relative local data file paths absolute against ``base``; report whether all are local files."""
    if isinstance(data_files, str):
        if "://" in data_files:
            return data_files, False
        p = Path(data_files).expanduser()
        p = p if p.is_absolute() else base / p
        return str(p), p.exists()
    if isinstance(data_files, (list, tuple)):
        pairs = [_absolute_data_files(x, base) for x in data_files]
        return [x for x, _ in pairs], all(ok for _, ok in pairs)
    if isinstance(data_files, dict):
        pairs = {k: _absolute_data_files(v, base) for k, v in data_files.items()}
        return {k: v for k, (v, _) in pairs.items()}, all(ok for _, ok in pairs.values())
    return data_files, False


def task_specs(task_names: list[str], tm) -> tuple[list[Any], bool]:
    """Task names → lm-eval task specs (dicts for local-file tasks, names otherwise) and whether all are local.

    Tags are expanded to their tasks so every local task gets its paths rewritten.
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    specs: list[Any] = []
    all_local = True
    seen: set[str] = set()

    def add(name: str) -> None:
        nonlocal all_local
        if name in seen:
            return
        seen.add(name)
        entry = tm.task_index.get(name)
        if entry is None:
            raise ConfigError(f"eval.tasks: unknown lm-eval task {name!r}")
        if entry.kind == Kind.TAG:
            for member in sorted(entry.tags):
                add(member)
            return
        if entry.kind == Kind.TASK and entry.yaml_path is not None:
            cfg = load_yaml(entry.yaml_path, resolve_func=True)
            kwargs = dict(cfg.get("dataset_kwargs") or {})
            if "data_files" in kwargs:
                kwargs["data_files"], local = _absolute_data_files(kwargs["data_files"],
                                                                   Path(entry.yaml_path).parent)
                cfg["dataset_kwargs"] = kwargs
                cfg.pop("tag", None)  # the dict is one task; tags would re-register names
                specs.append(cfg)
                all_local = all_local and local
                return
        specs.append(name)
        all_local = False

    for name in task_names:
        add(name)
    return specs, all_local


@contextlib.contextmanager
def offline_datasets(enabled: bool) -> Iterator[None]:
    """Force the datasets / hub libraries offline (env + already-imported config flags), then restore."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    patched: list[tuple[Any, str, Any]] = []
    try:
        import datasets.config as dcfg

        patched.append((dcfg, "HF_DATASETS_OFFLINE", dcfg.HF_DATASETS_OFFLINE))
        dcfg.HF_DATASETS_OFFLINE = True
        if hasattr(dcfg, "HF_HUB_OFFLINE"):
            patched.append((dcfg, "HF_HUB_OFFLINE", dcfg.HF_HUB_OFFLINE))
            dcfg.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets comes with lm-eval
        pass
    try:
        yield
    finally:
        for obj, attr, value in patched:
            setattr(obj, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _DropFewshotOverride(logging.Filter):
    """lm-eval warns once per task that eval.num_fewshot replaces the task's unset default: expected, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Overwriting default num_fewshot")


@contextlib.contextmanager
def _quiet_num_fewshot_notice() -> Iterator[None]:
    logger, drop = logging.getLogger("lm_eval.evaluator"), _DropFewshotOverride()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def light_env_info() -> Iterator[None]:
    """Skip lm-eval's per-call ``torch.utils.collect_env`` report (a ``pip list`` subprocess, ~5 s per
    ``simple_evaluate``) and its git probe of the cwd (prints "fatal: not a git repository" outside one);
    tor_exp records its own run metadata. Versions are still added."""
    import lm_eval.evaluator as ev

    original = ev.add_env_info, ev.get_git_commit_hash

    def add_versions(storage: dict[str, Any]) -> None:
        from importlib.metadata import version

        import transformers

        storage.update({"pretty_env_info": "skipped by tor_exp (see results.json metadata)",
                        "transformers_version": transformers.__version__, "lm_eval_version": version("lm_eval")})

    ev.add_env_info = add_versions
    ev.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        ev.add_env_info, ev.get_git_commit_hash = original


@contextlib.contextmanager
def quiet_progress(verbose: bool) -> Iterator[None]:
    """Only tor_exp's own scoring bar (one per request type) unless ``verbose``: lm-eval draws several bars per
    task (building contexts, tokenising, ...), about 30 lines for a run of 7 tasks."""
    if verbose:
        yield
        return
    import lm_eval.api.metrics as lm_metrics
    import tqdm.std

    from tor_exp.evaluation.lm import PROGRESS_PREFIX

    original = tqdm.std.tqdm.__init__
    lm_metrics.print = lambda *args, **kwargs: None  # "bootstrapping for stddev: ..." per metric

    def init(self, *args: Any, **kwargs: Any) -> None:
        if not str(kwargs.get("desc") or "").startswith(PROGRESS_PREFIX):
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original  # type: ignore[method-assign]
        del lm_metrics.print


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
    specs, all_local = task_specs(list(eval_cfg.tasks), tm)
    sched = _schedule_info(model)
    lm = TorExpLM(model, tokenizer, alignment=eval_cfg.alignment, batch_size=eval_cfg.batch_size)
    with offline_datasets(all_local), light_env_info(), _quiet_num_fewshot_notice(), \
            quiet_progress(eval_cfg.verbose):
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=specs, num_fewshot=eval_cfg.num_fewshot, limit=eval_cfg.limit,
            log_samples=eval_cfg.log_samples or keep_samples, task_manager=tm,
            bootstrap_iters=eval_cfg.bootstrap_iters,
            batch_size=eval_cfg.batch_size,
        )
    if raw is None:  # non-zero rank in a distributed run
        return {}
    stats = lm.stats_dict()
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
                   "batch_size": eval_cfg.batch_size, "alignment": lm.alignment},
    }
    out["aggregations"] = {task: {m["metric"]: m["aggregation"] for m in (raw["configs"].get(task) or {})
                                  .get("metric_list", []) if isinstance(m.get("aggregation"), str)}
                           for task in tasks}
    if eval_cfg.log_samples or keep_samples:
        out["samples"] = raw.get("samples", {})
    return out
