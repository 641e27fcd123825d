"""The console view of an evaluation: one comparison table (methods × the tasks' headline metrics).

``mean_accuracy`` is also the job's headline number (the paper's "Avg." column) that sweepers receive.
"""
from __future__ import annotations

import math
from typing import Any

from tor_exp.reporting.collect import COLUMN_METRICS, task_column


def task_columns(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task, metric, header) per table column: the paper's metric per task (acc_norm for HellaSwag and ARC-C,
    LAMBADA perplexity and acc), else the first of acc_norm/acc/perplexity a task reports."""
    columns = []
    for task in sorted(metrics):
        reported = {k.split(",", 1)[0] for k in metrics[task]}
        stem = task_column(task)
        if stem == "lambada":
            wanted = ["perplexity", "acc"]
        elif stem is not None:
            wanted = [next((m for m in COLUMN_METRICS[stem] if m in reported), COLUMN_METRICS[stem][0])]
        else:  # e.g. the reference model's held-out task: its perplexity first, then its accuracy
            wanted = [m for m in ("byte_perplexity", "perplexity", "acc_norm", "acc") if m in reported][:2]
        short = task.replace("_fixture", "").replace("_openai", "")
        columns += [(task, m, f"{short} {m.replace('byte_perplexity', 'ppl/byte').replace('perplexity', 'ppl')}")
                    for m in wanted if m in reported]
    return columns


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


def print_comparison(rows: list[tuple[str, dict[str, Any]]], results: dict[str, Any]) -> None:
    import shutil

    from rich.console import Console
    from rich.table import Table

    columns = task_columns(rows[-1][1]["metrics"])
    table = Table(title=f"{results['model']}: target FLOPs reduction {results.get('target_flops')}, "
                        f"keep ratio {results['keep_ratio']:.4f}, locations {results['locations']}")
    table.add_column("method")
    table.add_column("FLOPs ↓ (realised)", justify="right")
    for _, _, header in columns:
        table.add_column(header, justify="right")
    table.add_column("avg acc", justify="right")
    for name, out in rows:
        flops = [x for x in (out.get("flops") or {}).values() if isinstance(x, (int, float))]
        cells = [name, f"{100 * sum(flops) / len(flops):.1f}%" if flops else "0.0%"]
        for task, metric, _ in columns:
            value = out["metrics"].get(task, {}).get(metric)
            cells.append("–" if value is None else (f"{value:.4g}" if "perplexity" in metric else f"{value:.3f}"))
        avg = mean_accuracy(out["metrics"])
        cells.append("–" if avg is None else f"{avg:.3f}")
        table.add_row(*cells)
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)
