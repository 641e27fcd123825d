"""The console view of an evaluation: one comparison table (methods × the tasks' headline metrics).

``mean_accuracy`` is also the job's headline number (the paper's "Avg." column) that sweepers receive.
"""
from __future__ import annotations

import math
from typing import Any

from tor_exp.reporting.collect import task_column, task_columns


def mean_accuracy(metrics: dict[str, dict[str, Any]]) -> float | None:
    """The paper's "Avg.": mean over the paper's tasks of each one's metric (acc_norm for HellaSwag/ARC-C, else
    acc); tasks outside the paper's six count only when none of the six was run."""
    columns = task_columns(metrics)
    if any(task_column(task) for task, _, _ in columns):  # paper tasks present: average those only
        columns = [c for c in columns if task_column(c[0])]
    values = []
    for task, metric, _ in columns:
        value = metrics[task].get(metric)
        if metric in ("acc", "acc_norm") and isinstance(value, (int, float)) and not math.isnan(value):
            values.append(float(value))
    return sum(values) / len(values) if values else None


def _fmt(metric: str, value: Any, signed: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    text = f"{value:{'+' if signed else ''}.4g}" if "perplexity" in metric else f"{value:{'+' if signed else ''}.3f}"
    return text.replace("e+", "e")


def _diff(metric: str, d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    mark = " *" if d["low"] > 0 or d["high"] < 0 else ""
    sig = (lambda x: f"{x:+.3g}".replace("e+", "e")) if "perplexity" in metric else (lambda x: f"{x:+.3f}")
    return f"{sig(d['delta'])} [{sig(d['low'])}, {sig(d['high'])}]{mark}"


_METRIC_NAMES = {"byte_perplexity": "ppl/byte", "perplexity": "ppl", "bits_per_byte": "bits/byte"}


def comparison_table(rows: list[tuple[str, dict[str, Any]]], results: dict[str, Any]) -> Any:
    """A rich Table with one row per (task, headline metric) and one column per method, so it fits a terminal
    however many tasks there are; with ``results["differences"]`` a last column gives the last method's
    difference to the first and its paired 95 % interval (``*``: the interval excludes 0)."""
    from rich import box
    from rich.table import Table

    target = results.get("target_flops")
    amount = (f"FLOPs target −{100 * target:.0f}% (keep ratio {results['keep_ratio']:.4f})"
              if target is not None else f"keep ratio {results['keep_ratio']:.4f}")
    differences = results.get("differences") or {}
    where = ",".join(str(x) for x in results["locations"])
    table = Table(title=f"{results['model']} · {amount} · after layers {where}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    columns = task_columns(rows[-1][1]["metrics"])
    width = lambda texts: max(map(len, texts), default=0)  # noqa: E731
    table.add_column("task", no_wrap=True, min_width=width(t.replace("_fixture", "") for t, _, _ in columns))
    table.add_column("metric", no_wrap=True, min_width=width(_METRIC_NAMES.get(m, m) for _, m, _ in columns))
    for name, _ in rows:
        table.add_column(name, justify="right", no_wrap=True, min_width=6)
    if differences:  # the one column that may fold onto a second line in a narrow terminal
        table.add_column(f"Δ {rows[-1][0]}−{rows[0][0]} [95% CI]", justify="right", overflow="fold")
    for task, metric, _ in columns:
        cells = [task.replace("_fixture", ""), _METRIC_NAMES.get(metric, metric)]
        cells += [_fmt(metric, out["metrics"].get(task, {}).get(metric)) for _, out in rows]
        if differences:
            cells.append(_diff(metric, differences.get(task, {}).get(metric)))
        table.add_row(*cells)
    flops = []
    for _, out in rows:
        values = [x for x in (out.get("flops") or {}).values() if isinstance(x, (int, float))]
        flops.append(f"{100 * sum(values) / len(values):.1f}%" if values else "0.0%")
    table.add_row("FLOPs ↓", "realised", *flops, *([""] if differences else []), end_section=False)
    averages = [mean_accuracy(out["metrics"]) for _, out in rows]
    if any(a is not None for a in averages):
        table.add_row("average", "acc", *(_fmt("acc", a) for a in averages), *([""] if differences else []))
    return table


def print_comparison(rows: list[tuple[str, dict[str, Any]]], results: dict[str, Any]) -> None:
    """Print the table at the terminal's width (no colour codes when the output is not a terminal)."""
    from rich.console import Console

    Console().print(comparison_table(rows, results))
