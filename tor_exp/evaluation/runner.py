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
from typing import Any, Iterator, Optional

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


def _target(model, lm) -> Optional[float]:
    if lm.target_flops is not None:
        return lm.target_flops
    for holder in (model, getattr(model, "config", None)):
        value = getattr(holder, "tor_exp_target_flops", None)
        if value is not None:
            return float(value)
    return None


def run_once(model, tokenizer, eval_cfg: EvalConfig, *, reduction_label: str,
             target_flops: Optional[float] = None, reduced_forward=None) -> dict[str, Any]:
    """One lm-eval pass (no baseline comparison); see :func:`evaluate` for the returned layout."""
    import lm_eval

    from tor_exp.evaluation.lm import TorExpLM

    tm = task_manager(list(eval_cfg.include_paths), list(eval_cfg.tasks))
    specs, all_local = task_specs(list(eval_cfg.tasks), tm)
    lm = TorExpLM(model=model, tokenizer=tokenizer, alignment=eval_cfg.alignment,
                  batch_size=eval_cfg.batch_size, target_flops=target_flops, reduced_forward=reduced_forward)
    with offline_datasets(all_local):
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=specs, num_fewshot=eval_cfg.num_fewshot, limit=eval_cfg.limit,
            log_samples=eval_cfg.log_samples, task_manager=tm, bootstrap_iters=1000,
            batch_size=eval_cfg.batch_size,
        )
    if raw is None:  # non-zero rank in a distributed run
        return {}
    stats = lm.stats_dict()
    target = _target(model, lm)
    tasks = list(raw["results"].keys())
    flops = {}
    alignment = {"mode": eval_cfg.alignment}
    for task in tasks:
        s = stats.get(task, {})
        flops[task] = {
            "realised_reduction": s.get("realised_reduction", 0.0),
            "target": target,
            "input_tokens": s.get("input_tokens", 0),
            "rolling_requests": s.get("rolling_requests", 0),
        }
        if s.get("rolling_requests"):
            flops[task]["note"] = ("loglikelihood_rolling scores every position: nothing is reducible, "
                                   "these requests run unreduced")
        alignment[task] = {k: s.get(k, 0) for k in ("offset_short", "offset_empty", "offset_misaligned")}
    out: dict[str, Any] = {
        "reduction": reduction_label,
        "metrics": _metrics(raw["results"]),
        "flops": flops,
        "alignment": alignment,
        "num_requests": {task: stats.get(task, {}).get("requests", 0) for task in tasks},
        "n_samples": {t: v.get("effective", v.get("original")) if isinstance(v, dict) else v
                      for t, v in raw.get("n-samples", {}).items()},
        "config": {"tasks": list(eval_cfg.tasks), "limit": eval_cfg.limit, "num_fewshot": eval_cfg.num_fewshot,
                   "batch_size": eval_cfg.batch_size, "alignment": eval_cfg.alignment},
    }
    if eval_cfg.log_samples:
        out["samples"] = raw.get("samples", {})
    return out


def compare(reduced: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task and metric: reduced, baseline and their difference (reduced − baseline)."""
    table: dict[str, dict[str, Any]] = {}
    for task, metrics in reduced.get("metrics", {}).items():
        base = baseline.get("metrics", {}).get(task, {})
        table[task] = {}
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or metric not in base:
                continue
            b = base[metric]
            diff = None if value is None or b is None else value - b
            table[task][metric] = {"reduced": value, "baseline": b, "delta": diff}
    return table


def format_comparison(table: dict[str, dict[str, Any]], flops: dict[str, Any]) -> str:
    lines = [f"{'task':24s} {'metric':12s} {'reduced':>10s} {'baseline':>10s} {'delta':>9s} {'realised':>9s}"]
    for task, metrics in table.items():
        realised = flops.get(task, {}).get("realised_reduction", 0.0)
        for metric, row in metrics.items():
            fmt = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"{task:24s} {metric:12s} {fmt(row['reduced']):>10s} {fmt(row['baseline']):>10s} "
                         f"{fmt(row['delta']):>9s} {realised:9.3f}")
    return "\n".join(lines)


def evaluate(model, tokenizer, eval_cfg: EvalConfig, *, reduction_label: str,
             baseline_model=None, target_flops: Optional[float] = None) -> dict[str, Any]:
    """Score ``model`` on ``eval_cfg.tasks``.

    Returns ``{"metrics": {task: {metric: v, metric_stderr: s}}, "flops": {task: {"realised_reduction", "target",
    ...}}, "alignment": {"mode", task: {offset_short, offset_empty, offset_misaligned}}, "num_requests": {task: n},
    ...}``. With ``eval.compare_baseline`` and a reduction active, the unreduced model is scored too
    (``baseline_model`` if given, else the same model through an unpatched forward) and ``"baseline"`` /
    ``"comparison"`` are added and printed.
    """
    result = run_once(model, tokenizer, eval_cfg, reduction_label=reduction_label, target_flops=target_flops)
    if not eval_cfg.compare_baseline or reduction_label == "none":
        return result
    if baseline_model is not None:
        base = run_once(baseline_model, tokenizer, eval_cfg, reduction_label="none")
    else:
        with unreduced(model) as (plain_model, plain_forward):
            base = run_once(plain_model, tokenizer, eval_cfg, reduction_label="none",
                            reduced_forward=plain_forward)
    result["baseline"] = {k: base[k] for k in ("metrics", "flops", "num_requests") if k in base}
    result["comparison"] = compare(result, base)
    print(format_comparison(result["comparison"], result["flops"]))
    return result


@contextlib.contextmanager
def unreduced(model):
    """Yield (model, forward) that computes the same model without reduction.

    Uses the models package's ``unreduced`` context when it has one; otherwise the model as it is, through the
    plain HF forward (correct for unpatched models and for patches that only act inside ``reduced_forward``).
    """
    from tor_exp.evaluation.lm import _plain_reduced_forward

    try:
        from tor_exp.models import patch as patch_mod
    except ImportError:
        patch_mod = None
    ctx = getattr(patch_mod, "unreduced", None) if patch_mod is not None else None
    if ctx is not None:
        with ctx(model):
            yield model, None
    else:
        yield model, _plain_reduced_forward
