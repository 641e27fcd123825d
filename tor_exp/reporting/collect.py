"""Runs → table rows in the paper's layout (model × method × FLOPs; LAMBADA PPL/acc, five tasks, Avg.).

Sources: every ``results.json`` under a sweep dir, or the runs of a W&B group (rebuilt from their config and the
``metrics/<task>/<metric>`` summary keys that :func:`tor_exp.records.wandb_logger.flatten_metrics` writes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from tor_exp.reporting.paper import (
    ACC_COLUMNS,
    COLUMNS,
    find_paper_row,
    load_paper_results,
    paper_values,
    table_for_experiment,
)

RESULTS_FILE = "results.json"
#: paper column → task-name stem (after dropping ``_fixture``; every ``lambada*`` task counts as LAMBADA)
TASK_STEMS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
#: which lm-eval metric each column reports (the Mamba papers' convention), with the fallback when absent
COLUMN_METRICS = {
    "lambada_acc": ("acc", "acc_norm"),
    "hellaswag": ("acc_norm", "acc"),
    "piqa": ("acc", "acc_norm"),
    "arc_easy": ("acc", "acc_norm"),
    "arc_challenge": ("acc_norm", "acc"),
    "winogrande": ("acc", "acc_norm"),
}
#: method order inside one FLOPs level (the paper's: baselines first, ours last)
METHOD_ORDER = ("none", "pumer", "pumer_official", "evit", "evit_official", "ltmp", "utrc", "utrc_official")
#: reduction keys that tell runs of one (model, method, FLOPs) apart in ablations
DESIGN_KEYS = ("metric", "importance_source", "similarity_source", "hidden", "q", "hybrid_prune_by", "residual",
               "residual_q", "size_weighted", "fuse", "prune_share", "flops_scope")


def task_column(task: str) -> Optional[str]:
    """lm-eval task name → paper column stem: ``lambada_openai``/``lambada_fixture`` → ``lambada`` etc."""
    name = task.lower()
    if name.endswith("_fixture"):
        name = name[: -len("_fixture")]
    if name.startswith("lambada"):
        return "lambada"
    return name if name in TASK_STEMS else None


def task_columns(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task, metric, header) per table column: the paper's metric per task (acc_norm for HellaSwag and ARC-C,
    LAMBADA perplexity — per byte where the task reports it — and acc); any other task shows its perplexity (per
    byte first) if it has one, else its accuracy (acc, then acc_norm)."""
    columns = []
    for task in sorted(metrics):
        reported = {k.split(",", 1)[0] for k in metrics[task]}
        stem = task_column(task)
        if stem == "lambada":
            wanted = ["byte_perplexity" if "byte_perplexity" in reported else "perplexity", "acc"]
        elif stem is not None:
            wanted = [next((m for m in COLUMN_METRICS[stem] if m in reported), COLUMN_METRICS[stem][0])]
        else:  # the reference model's tasks: held-out perplexity per byte; the 4-choice task's accuracy
            wanted = [next((m for m in ("byte_perplexity", "perplexity", "acc", "acc_norm") if m in reported), "acc")]
        short = task.replace("_fixture", "").replace("_openai", "")
        columns += [(task, m, f"{short} {m.replace('byte_perplexity', 'ppl/byte').replace('perplexity', 'ppl')}")
                    for m in wanted if m in reported]
    return columns


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Drop lm-eval's ``,none`` filter suffix and non-numbers."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = key.split(",", 1)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
            out.setdefault(name, float(value))
    return out


def paper_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, Optional[float]]:
    """Per-task metrics → the table's columns: PPL as is, accuracies in %, Avg. over the accuracies present."""
    values: dict[str, Optional[float]] = {c: None for c in COLUMNS}
    for task, task_metrics in (metrics or {}).items():
        stem = task_column(task)
        if stem is None:
            continue
        m = _clean_metrics(task_metrics)
        if stem == "lambada" and "perplexity" in m:
            values["lambada_ppl"] = m["perplexity"]
        column = "lambada_acc" if stem == "lambada" else stem
        for name in COLUMN_METRICS[column]:
            if name in m:
                values[column] = 100.0 * m[name]
                break
    accs = [values[c] for c in ACC_COLUMNS if values[c] is not None]
    values["avg"] = sum(accs) / len(accs) if accs else None
    return values


@dataclass
class ReportRow:
    """One table row: our numbers, the paper's (when it has the setting), and where they came from."""

    model: str
    method: str
    target_flops: Optional[float]
    keep_ratio: Optional[float]
    realised_flops: Optional[float]
    variant: str
    ours: dict[str, Optional[float]]
    paper: dict[str, Optional[float]]
    paper_table: Optional[str]
    alignment: Optional[str]
    source: str
    design: dict[str, Any] = field(default_factory=dict)
    locations: list[int] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    #: config keys (dotted) that vary between rows the other columns show alike, with this row's value
    extra: dict[str, Any] = field(default_factory=dict)
    #: tasks outside the paper's columns (the offline reference tasks, ...): ``"<task> <metric>"`` → value as
    #: lm-eval reports it, so a sweep of such tasks is not a table of empty cells
    other: dict[str, Optional[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------- loading
def scan_sweep(path: str | Path, *, include_incomplete: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, unreadable): every usable ``results.json`` below ``path`` (sorted, each with ``_path`` = its
    folder) and one ``"<file>: <why>"`` line per file that could not be used (damaged, not a record)."""
    from tor_exp.records.results import read_results

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such sweep/run directory")
    found = [root / RESULTS_FILE] if (root / RESULTS_FILE).is_file() else []
    found += sorted(p for p in root.rglob(RESULTS_FILE) if p != root / RESULTS_FILE)
    results, unreadable = [], []
    for file in found:
        data, problem = read_results(file.parent)
        if data is None:
            unreadable.append(f"{file}: {problem}")
            continue
        if not include_incomplete and data.get("status") != "complete":
            continue
        data["_path"] = str(file.parent)
        results.append(data)
    return results, unreadable


def load_sweep(path: str | Path, *, include_incomplete: bool = False) -> list[dict[str, Any]]:
    """Every usable ``results.json`` below ``path``; damaged files are logged as warnings (see :func:`scan_sweep`)."""
    import logging

    results, unreadable = scan_sweep(path, include_incomplete=include_incomplete)
    for line in unreadable:
        logging.getLogger(__name__).warning("left out, unreadable: %s", line)
    return results


def _unflatten_summary(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    metrics: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        if key.startswith("metrics/") and isinstance(value, (int, float)) and not isinstance(value, bool):
            parts = key.split("/")
            if len(parts) == 3:
                metrics.setdefault(parts[1], {})[parts[2]] = float(value)
    return metrics


def _locations_from_config(reduction: dict[str, Any], model: dict[str, Any]) -> list[int]:
    """The schedule's locations from a resolved config (W&B keeps the config, not the schedule)."""
    import dataclasses

    try:
        from tor_exp.models.schedule import location_list
        from tor_exp.reduction.base import ReductionConfig

        shared = ReductionConfig(**{f.name: reduction[f.name] for f in dataclasses.fields(ReductionConfig)
                                    if f.name in reduction})
        return location_list(shared, int(model["n_layer"]), model.get("locations"))
    except Exception:  # an incomplete or older config: fall back to the explicit keys
        return list(reduction.get("locations") or model.get("locations") or [])


def results_from_wandb(config: dict[str, Any], summary: dict[str, Any], name: str = "",
                       url: str = "") -> dict[str, Any]:
    """A results.json-shaped dict from one W&B run's config (the resolved Hydra config) and summary."""
    model = (config.get("model") or {}).get("name")
    reduction = config.get("reduction") or {}
    bench = {k[len("bench/"):]: v for k, v in summary.items() if k.startswith("bench/")}

    def first(*values: Any) -> Any:
        return next((v for v in values if v is not None), None)

    return {
        "status": "complete",
        "task": config.get("task", "eval"),
        "run_name": name,
        "model": model,
        "method": reduction.get("method"),
        "target_flops": first(summary.get("target_flops"), reduction.get("target_flops")),
        "keep_ratio": first(summary.get("keep_ratio"), reduction.get("keep_ratio")),
        "locations": _locations_from_config(reduction, config.get("model") or {}),
        "realised_flops_reduction": summary.get("realised_flops_reduction"),
        "metrics": _unflatten_summary(summary),
        "bench_summary": bench,
        "config": config,
        "_path": url or name,
    }


def load_wandb_group(group: str, *, entity: Optional[str] = None, project: str = "tor_exp") -> list[dict[str, Any]]:
    """Runs of a W&B group (needs network and a login), as results.json-shaped dicts. Each run's summary is read
    through the public API's ``Run.summary_metrics`` (a plain dict; wandb 0.31.0)."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    out = []
    for run in api.runs(path, filters={"group": group}):
        if getattr(run, "state", "finished") != "finished":
            continue
        summary = dict(run.summary_metrics)
        out.append(results_from_wandb(dict(run.config), summary, name=run.name, url=getattr(run, "url", "")))
    return out


# ------------------------------------------------------------------------------------------------- rows
def other_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, Optional[float]]:
    """The headline metric(s) of each task that has no paper column, keyed ``"<task> <metric>"`` (the console
    table's choice: per-byte perplexity first, else perplexity, else acc / acc_norm)."""
    out: dict[str, Optional[float]] = {}
    for task, metric, _ in task_columns(metrics or {}):
        if task_column(task) is None:
            out[f"{task} {metric}"] = _clean_metrics(metrics[task]).get(metric)
    return out


def baseline_records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``none`` records rebuilt from the ``baseline`` block each eval record holds (``eval.compare_baseline``), for
    every model with no ``none`` job of its own; one per distinct baseline (a sweep's jobs share theirs). Each keeps
    the folder (``_path``) and the ``samples`` of the record it came from, so the per-document files are found."""
    from tor_exp.records.keys import result_config

    evals = [r for r in results if r.get("task", "eval") == "eval"]
    has_none = {r.get("model") for r in evals if r.get("method") == "none" and r.get("metrics")}
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, str]] = set()
    for r in evals:
        base = r.get("baseline") or {}
        if r.get("model") in has_none or not base.get("metrics"):
            continue
        config = dict(r.get("config") or {})
        config["reduction"] = {"method": "none"}
        key = (r.get("model"), json.dumps({"metrics": base["metrics"], "config": result_config(config)},
                                          sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        out.append({**r, "method": "none", "target_flops": None, "keep_ratio": 1.0, "metrics": base["metrics"],
                    "flops_per_task": {}, "realised_flops_reduction": 0.0, "differences": {}, "timings": {},
                    "config": config, "baseline": None, "alignment": {"mode": "exact"},
                    "baseline_of": r.get("method")})
    return out


def _alignment_of(r: dict[str, Any]) -> Optional[str]:
    """The alignment the run used: the resolved mode it recorded (``eval.alignment=auto`` is resolved per
    method), else the configured one (older records)."""
    mode = (r.get("alignment") or {}).get("mode")
    return mode or ((r.get("config") or {}).get("eval") or {}).get("alignment")


def _design_of(result: dict[str, Any]) -> dict[str, Any]:
    reduction = (result.get("config") or {}).get("reduction") or {}
    return {k: reduction[k] for k in DESIGN_KEYS if k in reduction}


def _stream_label(mode: Any, q: Any) -> str:
    return {"merge": "M-only", "prune": "P-only"}.get(str(mode), f"q={q:g}" if isinstance(q, (int, float)) else str(mode))


def _variant(design: dict[str, Any], keys: Iterable[str], locations: list[int], show_locations: bool) -> str:
    keys = set(keys)
    parts = []
    if keys & {"hidden", "q", "residual", "residual_q"}:
        parts.append(f"{_stream_label(design.get('hidden'), design.get('q'))} / "
                     f"{_stream_label(design.get('residual'), design.get('residual_q'))}")
    parts += [f"{k}={design[k]}" for k in DESIGN_KEYS
              if k in keys and k not in ("hidden", "q", "residual", "residual_q") and k in design]
    if show_locations:
        parts.append("locations=[" + ",".join(str(l) for l in locations) + "]")
    return ", ".join(parts)


def _experiment_of(result: dict[str, Any]) -> Optional[str]:
    return ((result.get("config") or {}).get("logger") or {}).get("group")


def _flops_of(result: dict[str, Any]) -> Optional[float]:
    if result.get("method") == "none":
        return 0.0
    return result.get("target_flops")


def _realised(result: dict[str, Any]) -> Optional[float]:
    per_task = result.get("flops_per_task") or {}
    values = []
    for v in per_task.values():
        if isinstance(v, dict):
            v = v.get("realised_reduction", v.get("realised"))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values.append(float(v))
    if values:
        return sum(values) / len(values)
    value = result.get("realised_flops_reduction")
    return float(value) if isinstance(value, (int, float)) else None


def collect_rows(results: list[dict[str, Any]], *, prefer_table: Optional[str] = None,
                 paper: Optional[dict[str, Any]] = None) -> list[ReportRow]:
    """Eval runs → rows, sorted model → FLOPs → method → variant; ``prefer_table`` picks between paper tables
    that print the same setting (default: the table of the sweep's experiment, from ``logger.group``)."""
    paper = paper or load_paper_results()
    evals = [r for r in results if r.get("task", "eval") == "eval" and r.get("metrics")]
    evals += baseline_records(evals)  # a sweep without a `none` job still gets its baseline row
    # design keys / locations that vary between runs of one (model, method) become the row's variant label
    varying: dict[tuple[str, str], set[str]] = {}
    locs_vary: dict[tuple[str, str], bool] = {}
    by_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in evals:
        by_group.setdefault((r.get("model"), r.get("method")), []).append(r)
    for key, group in by_group.items():
        designs = [_design_of(r) for r in group]
        varying[key] = {k for k in DESIGN_KEYS if len({json.dumps(d.get(k)) for d in designs}) > 1}
        locs_vary[key] = len({json.dumps(r.get("locations")) for r in group}) > 1
    rows = []
    for r in evals:
        key = (r.get("model"), r.get("method"))
        design = _design_of(r)
        locations = list(r.get("locations") or [])
        flops = _flops_of(r)
        prefer = prefer_table or table_for_experiment(_experiment_of(r))
        probe = {"model": r.get("model"), "method": r.get("method"), "target_flops": flops, "locations": locations,
                 **{k: design.get(k) for k in ("metric", "hidden", "q", "residual", "residual_q")}}
        table, paper_row = find_paper_row(probe, prefer, paper)
        rows.append(ReportRow(
            model=str(r.get("model")), method=str(r.get("method")), target_flops=flops,
            keep_ratio=r.get("keep_ratio"), realised_flops=_realised(r),
            variant=_variant(design, varying[key], locations, locs_vary[key]),
            ours=paper_columns(r.get("metrics") or {}), paper=paper_values(paper_row), paper_table=table,
            alignment=_alignment_of(r), source=str(r.get("_path", "")),
            design=design, locations=locations, tasks=sorted((r.get("metrics") or {}).keys()),
            other=other_columns(r.get("metrics") or {}),
        ))
    _tell_apart(rows, [(r.get("config") or {}) for r in evals])
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda x: (x.model, x.target_flops if x.target_flops is not None else -1.0,
                             order.get(x.method, len(order)), x.method, x.variant,
                             [json.dumps(v, sort_keys=True, default=str) for v in x.extra.values()]))
    return rows


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config as ``{"eval.limit": 4, "seed": 1, ...}`` (lists stay values)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _tell_apart(rows: list[ReportRow], configs: list[dict[str, Any]]) -> None:
    """Give every row, in ``extra``, its value of each result-changing config key (:mod:`tor_exp.records.keys`)
    that differs between rows the table would otherwise show alike (same model, method, FLOPs, variant and
    alignment; e.g. the jobs of a ``seed=0,1`` sweep)."""
    from tor_exp.records.keys import result_config

    flat = [_flatten(result_config(c)) for c in configs]
    alike: dict[tuple[Any, ...], list[int]] = {}
    for i, r in enumerate(rows):
        alike.setdefault((r.model, r.method, r.target_flops, r.variant, r.alignment), []).append(i)
    varying: set[str] = set()
    for members in alike.values():
        if len(members) > 1:
            keys = set().union(*(flat[i] for i in members))
            varying |= {k for k in keys
                        if len({json.dumps(flat[i].get(k), sort_keys=True, default=str) for i in members}) > 1}
    for i, r in enumerate(rows):
        r.extra = {k: flat[i].get(k) for k in sorted(varying)}


def bench_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flattened benchmark rows (``results["bench"]["rows"]``) of every bench run, tagged with the model."""
    out = []
    for r in results:
        if r.get("task") != "bench":
            continue
        bench = r.get("bench") or {}
        for row in bench.get("rows") or []:
            out.append({"model": r.get("model"), "device_name": bench.get("device_name"), **row})
    return out
